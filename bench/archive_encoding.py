"""How fast the archive encodes: accepted events -> Arrow columns -> Parquet (zstd) bytes.

    .venv/bin/python bench/archive_encoding.py [--events N] [--batch B] [--ip-mode MODE]
                                               [--log FILE]

Builds N (default 1,000,000) simulated enriched events in memory (a few thousand returning
visitors from a few dozen cities, realistic paths, user agents and referers, 8% IPv6), then
encodes them as the S3 archive sink does: `EventColumns.extend` per 500 events (a Kinesis
record's worth: the sink's `add_batch`), then per flush of B events (default 100,000, a
checkpoint's worth) `EventColumns.table`, `split_by_hour` and `parquet_bytes` per hour.
With `--log FILE` (e.g. `clickstream simulate --lines 1000000 --out FILE`) the events are that
file's first N lines, parsed and enriched by the consumer's own code (500 lines at a time, as
off a Kinesis record), so strings and places are shared the way the real pipeline shares them;
parse + enrich CPU is reported beside the encoding's for the share of the whole path.
Reports events/s and MB/s of raw log lines encoded, CPU seconds per million events, the
compressed size per event and the split between building columns and writing Parquet.

The whole processing path must reach >= 150,000 lines/s on one core; encoding is one step of it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from consumers.archive_format import EventColumns, IpPrivacy, parquet_bytes, split_by_hour
from consumers.geo.locator import Location
from consumers.models import EnrichedHit, Hit, UserRecord

SHARD = "shardId-000000000000"
CHUNK = 500  # lines per Kinesis record (KPL-aggregated), the unit the processor hands over
CITIES = [
    Location(city, region, country, continent, lat, lon)
    for city, region, country, continent, lat, lon in (
        ("Seattle", "Washington", "US", "NA", 47.6, -122.3),
        ("Portland", "Oregon", "US", "NA", 45.5, -122.7),
        ("Portland", "Maine", "US", "NA", 43.7, -70.3),
        ("London", "England", "GB", "EU", 51.5, -0.1),
        ("Paris", "Île-de-France", "FR", "EU", 48.9, 2.4),
        ("Berlin", "Berlin", "DE", "EU", 52.5, 13.4),
        ("Tokyo", "Tokyo", "JP", "AS", 35.7, 139.7),
        ("São Paulo", "São Paulo", "BR", "SA", -23.5, -46.6),
        ("Sydney", "New South Wales", "AU", "OC", -33.9, 151.2),
        ("Lagos", "Lagos", "NG", "AF", 6.5, 3.4),
        ("Unknown", "Unknown", "Unknown", "Unknown", None, None),
    )
]
PAGES = (
    ("GET", "/cafe", None, "home", "visit"),
    ("GET", "/cafe/index.php", None, "home", "visit"),
    ("GET", "/cafe/menu.php", None, "menu", "menu"),
    ("GET", "/cafe/menu.php", "category=drinks", "menu", "menu"),
    ("POST", "/cafe/processOrder.php", None, "order", "purchase"),
    ("GET", "/cafe/orderHistory.php", None, "other", "visit"),
    ("GET", "/cafe/css/styles.css", None, "static", None),
    ("GET", "/cafe/images/Coffee-and-Pastries.jpg", None, "static", None),
)
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
)
REFERERS = (None, "https://www.google.com/", "https://cafe.example.com/cafe", "-")


def simulated_events(
    n: int, seed: int = 1, start_index: int = 0, start: float = 1_795_000_000.0
) -> tuple[list[UserRecord], list[EnrichedHit], list[str | None]]:
    """N events over about six hours, shard-ordered, with returning visitors."""
    rng = random.Random(seed)
    visitors = []
    for i in range(5_000):
        if rng.random() < 0.08:
            ip = f"2001:db8:{i % 97:x}:{i:x}::{rng.randrange(1, 0xFFFF):x}"
        else:
            ip = f"{rng.randrange(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{i % 250 + 1}"
        visitors.append((ip, rng.choice(AGENTS), rng.choice(CITIES)))
    records: list[UserRecord] = []
    hits: list[EnrichedHit] = []
    sessions: list[str | None] = []
    sequence = 49_650_000_000_000_000_000_000_000_000_000_000_000_000_000_000
    for i in range(start_index, start_index + n):
        ip, agent, place = visitors[rng.randrange(len(visitors))]
        method, path, query, page, stage = PAGES[rng.randrange(len(PAGES))]
        when = start + i * 0.0216  # a million events over six hours
        status = 200 if rng.random() > 0.03 else rng.choice((404, 500, 302))
        referer = rng.choice(REFERERS)
        is_bot = "bot" in agent
        is_page_view = not is_bot and page != "static" and status < 400
        target = path if query is None else f"{path}?{query}"
        line = (
            f'{ip} - - [22/Nov/2026:07:00:00 +0000] "{method} {target} HTTP/1.1" {status} '
            f'{rng.randrange(200, 40_000)} "{referer or "-"}" "{agent}"'
        ).encode()
        hit = Hit(
            ip, None, None, when, 0, method, path, query, "HTTP/1.1", status,
            rng.randrange(200, 40_000), referer, agent, None, "combined",
        )  # fmt: skip
        hits.append(
            EnrichedHit(
                hit, ip, f"{ip}\t{agent}", place, is_bot, page, is_page_view,
                stage if is_page_view else None,
            )
        )  # fmt: skip
        records.append(
            UserRecord(
                SHARD, str(sequence + i // 300 * 1_000_000), i % 300, when + 0.5,
                f"f{seed:08x}:{i * 180}", line,
            )
        )  # fmt: skip
        sessions.append(None if is_bot else f"{hash(ip) & 0xFFFFFFFF:08x}-{int(when) // 1800}")
    return records, hits, sessions


@dataclass
class Flush:
    """One flush's rows, already in columns, and what it cost to get them there."""

    columns: EventColumns = field(default_factory=EventColumns)
    line_bytes: int = 0
    add_cpu: float = 0.0
    upstream_cpu: float = 0.0


def add_in_chunks(
    flush: Flush, records: list[UserRecord], hits: list[EnrichedHit], sessions: list[str | None]
) -> None:
    """What the sink's `add_batch` does per Kinesis record's lines, timed."""
    started = time.process_time()
    flush.columns.extend(records, hits, sessions)
    flush.add_cpu += time.process_time() - started
    flush.line_bytes += sum(len(r.line) for r in records)


def logged_flushes(path: Path, limit: int, batch: int) -> Iterator[Flush]:
    """The file's lines parsed and enriched by the consumer's code, a record's worth at a time,
    handed to the archive columns right away (the objects are then dropped, as in the
    consumer)."""
    from consumers.bots import BotDetector
    from consumers.enrich import Enricher
    from consumers.geo.locator import GeoLocator
    from consumers.pages import SiteRules
    from consumers.parse import parse_lines

    enricher = Enricher(GeoLocator(), BotDetector(), SiteRules())
    flush = Flush()
    offset = read = 0
    with path.open("rb") as log:
        while read < limit and (lines := list(itertools.islice(log, min(CHUNK, limit - read)))):
            started = time.process_time()
            parsed = parse_lines(lines)
            kept = [(line, h) for line, h in zip(lines, parsed, strict=True) if type(h) is Hit]
            enriched = enricher.enrich_batch([h for _, h in kept])
            flush.upstream_cpu += time.process_time() - started
            sequence = str(49_650_000_000_000_000_000_000 + read)
            records = []
            for sub, ((line, _), hit) in enumerate(zip(kept, enriched, strict=True)):
                records.append(UserRecord(SHARD, sequence, sub, hit.hit.time, f"f1:{offset}", line))
                offset += len(line)
            add_in_chunks(flush, records, enriched, [None] * len(records))
            read += len(lines)
            if len(flush.columns) >= batch:
                yield flush
                flush = Flush()
    if len(flush.columns):
        yield flush


def simulated_flushes(args: argparse.Namespace) -> Iterator[Flush]:
    for batch, start in enumerate(range(0, args.events, args.batch)):
        size = min(args.batch, args.events - start)
        records, hits, sessions = simulated_events(size, args.seed + batch, start_index=start)
        flush = Flush()
        for first in range(0, size, CHUNK):
            chunk = slice(first, first + CHUNK)
            add_in_chunks(flush, records[chunk], hits[chunk], sessions[chunk])
        del records, hits, sessions
        yield flush


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--ip-mode", choices=("full", "truncated", "hashed"), default="full")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", type=Path, help="encode this access log's lines instead")
    args = parser.parse_args()

    privacy = IpPrivacy(args.ip_mode, b"k" * 32 if args.ip_mode == "hashed" else b"")
    cpu = {"add": 0.0, "columns": 0.0, "parquet": 0.0}
    wall = {"columns": 0.0, "parquet": 0.0}
    raw_bytes = out_bytes = objects = n = 0
    upstream_cpu = 0.0
    flushes = (
        logged_flushes(args.log, args.events, args.batch)
        if args.log is not None
        else simulated_flushes(args)
    )
    for flush in flushes:
        n += len(flush.columns)
        raw_bytes += flush.line_bytes
        cpu["add"] += flush.add_cpu
        upstream_cpu += flush.upstream_cpu
        c0, t0 = time.process_time(), time.perf_counter()
        table = flush.columns.table(privacy)
        pieces = split_by_hour(table, "event_time")
        c1, t1 = time.process_time(), time.perf_counter()
        for piece in pieces:
            out_bytes += len(parquet_bytes(piece.table))
            objects += 1
        c2, t2 = time.process_time(), time.perf_counter()
        cpu["columns"] += c1 - c0
        cpu["parquet"] += c2 - c1
        wall["columns"] += t1 - t0
        wall["parquet"] += t2 - t1
        del flush, table, pieces
    total_cpu = sum(cpu.values())
    mb = raw_bytes / 1e6
    source = args.log or "simulated events"
    print(
        f"encoded {n:,} events from {source} ({mb:.0f} MB of log lines, ip mode {args.ip_mode}, "
        f"flushes of {args.batch:,}) into {objects} objects, {out_bytes / 1e6:.1f} MB "
        f"({out_bytes / n:.1f} bytes per event, {raw_bytes / out_bytes:.1f}x smaller)"
    )
    print(f"  one core (CPU time): {n / total_cpu:,.0f} events/s, {mb / total_cpu:.1f} MB/s")
    print(f"  add (fields -> column lists, per {CHUNK} lines): {cpu['add'] / n * 1e6:.2f} µs/event")
    for phase in ("columns", "parquet"):
        print(
            f"  {phase} at flush: {cpu[phase] / n * 1e6:.2f} µs/event CPU "
            f"({wall[phase]:.2f} s wall)"
        )
    if upstream_cpu:
        print(
            f"  parse+enrich {upstream_cpu / n * 1e6:.2f} µs/event CPU: with archiving "
            f"{n / (upstream_cpu + total_cpu):,.0f} events/s on one core"
        )
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
