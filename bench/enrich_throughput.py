"""How fast parse + enrich run: lines/s, µs per hit for enrichment, CPU s per million, peak RSS.

    .venv/bin/python bench/enrich_throughput.py [FILE] [--lines N] [--seed S] [--batch B]
                                                [--trusted-proxy CIDR ...] [--plain-geo]

Without FILE it uses a simulated log of N (default 1,000,000) lines, made once with
`clickstream simulate --seed S --end 2026-11-21T12:00:00Z` and kept in the cache directory
(`$XDG_CACHE_HOME/clickstream/bench/`), so repeated runs compare the same bytes.

The file is streamed in batches of `--batch` lines (a Kinesis record's worth), parsed with
`parse_lines`, the hits enriched with `Enricher.enrich_batch`, and the results dropped, as the
consumer does; so peak RSS is the interpreter, the geo database mapping and the memo caches,
not the file. Parse and enrich are timed separately (CPU time per batch); reading the file and
freeing a batch's objects are not, and the "all CPU" line includes them. The whole processing
path (decode -> parse -> enrich -> state -> archive) must reach >= 150,000 lines/s on one core,
so enrichment should cost about 1-2 µs per hit.

The geo database is the embedded one behind `ReloadingGeoLocator` (as the service runs it)
unless `--plain-geo`; `--trusted-proxy` makes the X-Forwarded-For rule active (the simulator
logs no such header, so it then costs only the check that the client is not a proxy).
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from consumers.bots import BotDetector
from consumers.enrich import Enricher
from consumers.geo.locator import GeoLocator
from consumers.geo.reloading import ReloadingGeoLocator
from consumers.models import Hit
from consumers.pages import SiteRules
from consumers.parse import parse_lines

REPO = Path(__file__).resolve().parent.parent
END = "2026-11-21T12:00:00Z"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clickstream" / "bench"


def simulated_log(lines: int, seed: int) -> Path:
    """The simulated log for these arguments, generated on first use."""
    path = cache_dir() / f"simulated-{lines}-seed{seed}.log"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    print(f"generating {lines:,} lines with the simulator into {path} ...", file=sys.stderr)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "simulate",
            "--lines",
            str(lines),
            "--seed",
            str(seed),
            "--end",
            END,
            "--out",
            str(partial),
            "--no-progress",
        ],
        cwd=REPO,
        check=True,
    )
    os.replace(partial, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, help="an access log (default: simulated)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="simulated lines")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=500, help="lines per batch")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR")
    parser.add_argument("--plain-geo", action="store_true", help="GeoLocator, not reloading")
    args = parser.parse_args(argv)

    path = args.file if args.file is not None else simulated_log(args.lines, args.seed)
    geo = GeoLocator() if args.plain_geo else ReloadingGeoLocator()
    bots = BotDetector()
    enricher = Enricher(geo, bots, SiteRules(), args.trusted_proxy)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    lines = hits = page_views = bot_hits = 0
    parse_cpu = enrich_cpu = 0.0
    clock = time.process_time
    wall_started, cpu_started = time.perf_counter(), clock()
    with path.open("rb") as log:
        while batch := list(itertools.islice(log, args.batch)):
            started = clock()
            parsed = [r for r in parse_lines(batch) if type(r) is Hit]
            parsed_at = clock()
            enriched = enricher.enrich_batch(parsed)
            enrich_cpu += clock() - parsed_at
            parse_cpu += parsed_at - started
            lines += len(batch)
            hits += len(parsed)
            page_views += sum(1 for e in enriched if e.is_page_view)
            bot_hits += sum(1 for e in enriched if e.is_bot)
            del parsed, enriched  # freed here, outside the parse and enrich timings
    wall = time.perf_counter() - wall_started
    cpu_all = clock() - cpu_started
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = parse_cpu + enrich_cpu

    per_line, per_hit = 1e6 / lines, 1e6 / max(hits, 1)
    rows = [
        ("source", str(path)),
        ("lines", f"{lines:,} ({hits:,} hits, {page_views:,} page views, {bot_hits:,} bot hits)"),
        ("parse+enrich", f"{lines / cpu:,.0f} lines/s (CPU), {cpu * per_line:.2f} µs/line"),
        ("enrich alone", f"{enrich_cpu * per_hit:.2f} µs/hit, {hits / enrich_cpu:,.0f} hits/s"),
        ("parse alone", f"{parse_cpu * per_line:.2f} µs/line, {lines / parse_cpu:,.0f} lines/s"),
        (
            "CPU s per 1M lines",
            f"{cpu * per_line:.2f} (parse {parse_cpu * per_line:.2f}, "
            f"enrich {enrich_cpu * per_line:.2f})",
        ),
        (
            "all CPU, wall",
            f"{cpu_all:.2f} s, {wall:.2f} s (reading, counting and freeing included: "
            f"{lines / cpu_all:,.0f} lines/s)",
        ),
        ("peak RSS", f"{rss_peak / 1024:.0f} MiB ({rss_before / 1024:.0f} MiB before)"),
    ]
    geo_info = geo.cache_info()
    bot_info = bots.cache_info()
    rows.append(("geo cache", f"{geo_info.hits:,} hits, {geo_info.misses:,} misses"))
    rows.append(("user-agent cache", f"{bot_info.hits:,} hits, {bot_info.misses:,} misses"))
    for name, value in rows:
        print(f"{name:<20}{value}")


if __name__ == "__main__":
    main()
