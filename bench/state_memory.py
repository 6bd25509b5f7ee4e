"""Memory and speed of one shard's state with 1,000,000 distinct visitors in 24 h of event time.

The issue's target: <= 300 MB RSS with 1,000,000 distinct visitors in the 24-hour window. All
visitors go through one `ShardState` (the worst case: one shard holding the whole day). Each
visitor has one short session: a home page, its CSS, and, for some, the menu and an order, so
the funnel, the session flags and the distinct counts all do real work; a metrics sink publishes
every closed minute, as the worker will.

Prints RSS (process, before and after), µs per hit spent in `ShardState.add` (hit building is
not timed), the table's size, summary latency for the 5m, 1h and 24h windows, and (with
--snapshot) the snapshot's size and encode/decode times.

    .venv/bin/python bench/state_memory.py [--visitors 1000000] [--cities 3000] [--snapshot]
        [--uniform-cities]

By default cities are Pareto-distributed (a few big ones, a long tail; ~900 of 3,000 appear),
as real traffic is; --uniform-cities spreads visitors evenly, the worst case for the per-minute
buckets.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import statistics
import time

from consumers.counters import ShardState, summarize
from consumers.geo.locator import Location
from consumers.models import EnrichedHit, Hit, new_hit
from consumers.state_store import from_bytes, to_bytes

DAY = 86_400
START = 1_795_000_000 - 1_795_000_000 % DAY
AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/142.0.0.0"
CHUNK = 20_000
SPAN = DAY - 3600  # every visitor inside the 24-hour window that ends with the last one


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def places(count: int) -> list[Location]:
    countries = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "CA", "AU", "MX")
    return [
        Location(f"City {i}", f"Region {i % 200}", countries[i % len(countries)], "XX")
        for i in range(count)
    ]


def visitor_hits(index: int, rng: random.Random, locations: list[Location]) -> list[EnrichedHit]:
    """One visitor's session: spread evenly over the day, one to four page views + CSS."""
    ip = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    if index >= 1 << 24:
        ip = f"11.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    visitor = f"{ip}\t{AGENT}"
    if UNIFORM:
        location = locations[rng.randrange(len(locations))]
    else:
        location = locations[min(int(rng.paretovariate(1.2)) - 1, len(locations) - 1)]
    at = START + index * SPAN / VISITORS
    steps: list[tuple[float, str, str, str | None, str]] = [
        (at, "/cafe/", "home", "visit", "GET"),
        (at + 1, "/cafe/css/styles.css", "static", None, "GET"),
    ]
    if rng.random() < 0.6:
        steps.append((at + 40, "/cafe/menu.php", "menu", "menu", "GET"))
        if rng.random() < 0.25:
            steps.append((at + 100, "/cafe/processOrder.php", "order", "purchase", "POST"))
    hits = []
    for time_, path, page, stage, method in steps:
        raw: Hit = new_hit(
            ip, None, None, time_, 0, method, path, None, "HTTP/1.1", 200, 1000, None, AGENT,
            None, "combined", None,
        )  # fmt: skip
        counted = page != "static"
        hits.append(EnrichedHit(raw, ip, visitor, location, False, page, counted, stage))  # type: ignore[arg-type]
    return hits


VISITORS = 1_000_000
UNIFORM = False


def main() -> None:
    global UNIFORM, VISITORS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, default=VISITORS)
    parser.add_argument("--cities", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--uniform-cities",
        action="store_true",
        help="visitors spread evenly over all cities (worst case for the buckets' memory)",
    )
    parser.add_argument("--snapshot", action="store_true", help="also time snapshot encode/decode")
    args = parser.parse_args()
    VISITORS, UNIFORM = args.visitors, args.uniform_cities
    rng = random.Random(args.seed)
    locations = places(args.cities)
    baseline = rss_mb()
    state = ShardState("shardId-000000000000")
    position = 0
    hits_fed = 0
    add_seconds = 0.0
    published_minute = None
    visitor = 0
    while visitor < VISITORS:
        chunk: list[EnrichedHit] = []
        while visitor < VISITORS and len(chunk) < CHUNK:
            chunk.extend(visitor_hits(visitor, rng, locations))
            visitor += 1
        add = state.add
        started = time.perf_counter()
        for hit in chunk:
            position += 1
            add(hit, position)
        add_seconds += time.perf_counter() - started
        hits_fed += len(chunk)
        if state.newest_minute != published_minute:  # a metrics sink, once per chunk
            pending = state.pending_increments()
            if pending:
                state.mark_published(pending[-1].minute)
            published_minute = state.newest_minute
        del chunk
    gc.collect()
    after = rss_mb()
    summary = summarize([state], "24h")
    print(f"visitors fed           {VISITORS:>12,}")
    print(f"hits fed               {hits_fed:>12,}")
    print(f"visitors in table      {len(state.visitors):>12,}")
    print(f"24h distinct visitors  {summary['totals']['visitors']:>12,}")
    print(f"places                 {len(state.places):>12,}")
    print(f"RSS before state       {baseline:>12.1f} MB")
    print(f"RSS after (state held) {after:>12.1f} MB   (target <= 300 MB)")
    print(f"peak RSS               {peak_rss_mb():>12.1f} MB")
    print(f"ShardState.add         {add_seconds / hits_fed * 1e6:>12.2f} µs per hit")
    for window in ("5m", "1h", "24h"):
        timings = []
        for _ in range(7):
            started = time.perf_counter()
            summarize([state], window)
            timings.append(time.perf_counter() - started)
        median_ms = statistics.median(timings) * 1e3
        print(f"summary {window:<4}           {median_ms:>12.2f} ms (median of 7)")
    if args.snapshot:
        started = time.perf_counter()
        data = to_bytes(state)
        encoded = time.perf_counter() - started
        peak_encoding = peak_rss_mb()
        started = time.perf_counter()
        restored = from_bytes(data)
        decoded = time.perf_counter() - started
        assert summarize([restored], "24h") == summary
        print(f"snapshot               {len(data) / 2**20:>12.1f} MB")
        print(f"snapshot encode        {encoded:>12.2f} s")
        print(f"snapshot decode        {decoded:>12.2f} s")
        print(f"peak RSS, encoding     {peak_encoding:>12.1f} MB   (a checkpoint, state live)")
        print(f"peak RSS, decoding     {peak_rss_mb():>12.1f} MB   (two states: bench only)")


if __name__ == "__main__":
    main()
