"""The café traffic simulator behind `clickstream simulate`.

One module per job:

- `site`: what the café's server serves (pages, files, sizes, what bots probe);
- `catalog`: the cities and their networks, shipped with the geo database;
- `useragents`: real browser and bot user agents, and where bots connect from;
- `rhythm`: activity by local time of day, and the city of each new visitor;
- `visitors`: who visits (new, returning, sharing an address, IPv6, bots);
- `sessions`: what each visitor requests, and when;
- `pacing`, `engine`: how many sessions start when, merged into Apache's write order;
- `logformat`, `malformed`: the text of the lines, good and bad;
- `truth`: the counting rules, applied to what was simulated;
- `bulk`, `realtime`: the two ways of writing the file.
"""
