"""The consumer's whole processing path without network, against GoAccess on the same file.

    .venv/bin/python bench/processing_path.py [FILE] [--lines N] [--seed S] [--flush F]
                                              [--chunk-mb M] [--no-goaccess] [--gc-freeze]
                                              [--gc-threshold G0,G1,G2] [--slice N]

As the service runs (service/process_tuning.py): `--gc-freeze --gc-threshold 50000,20,100`.

The issue's figure: decode -> parse -> enrich -> state -> archive encoding on a 1,000,000-line
simulated log must reach >= 150,000 lines/s on one core, and >= 4x GoAccess's lines/s on the
same file. Without FILE the log is made once with `clickstream simulate --lines N --seed S
--end 2026-11-21T12:00:00Z` and kept in `$XDG_CACHE_HOME/clickstream/bench/` (shared with
`bench/enrich_throughput.py`), so runs compare the same bytes.

What runs, single thread, in process, as the consumer will run it:

1. the agent's side, untimed and first: the file is read in chunks of `--chunk-mb` and packed
   by `agent.records.RecordBuilder` into KPL-aggregated records for two shards, routed by client
   IP as the agent routes them (records of up to 1 MiB, a few thousand lines each), and spooled
   to a temporary file; the builder is then dropped (in the service it is another process) and
   the records are read back one at a time, untimed;
2. per Kinesis record, alternating between the shards, the steps of
   `ShardProcessor.process_records`, which work on the record's lines as columns:
   `decode_record` (deaggregation and the envelope split), `parse_batch`,
   `Enricher.enrich_columns` (geo from the embedded database behind `ReloadingGeoLocator`, as
   the service runs it), `count_in_shard_order` (the state step: one state per shard, sequence
   numbers Kinesis-shaped 56-digit strings), and `EventColumns.extend_columns` (the archive
   sink's `add_columns`; every 8,192 rows it turns its lists into Arrow, so "archive add"
   includes most of the Arrow conversion);
3. per `--flush` events of a shard (a checkpoint's worth): `EventColumns.table`,
   `split_by_hour` and `parquet_bytes` (zstd) per hour, the bytes dropped.

Every stage is timed in CPU time (`time.process_time`) around the stage's call for a whole
record, so the figures hold on a loaded machine (another process's work is not ours); the
total includes what falls between stages (freeing a record's objects, the loop). Peak RSS is
the process's: the interpreter, the geo database mapping, both shards' state and the columns
of one flush, plus one record of input; the peak before the consumer's part starts (the
agent's side included) is printed beside it.

Session ids: the state step does not hand out session ids yet, so the archive's `session_id`
column is written null here; filling it is one more string per page view.

Then GoAccess 1.7 (`goaccess FILE --log-format=COMBINED -o report.json`) parses the same file;
its lines/s is from its own CPU time (user + system of the child) and the ratio is ours over
its. Without `goaccess` on PATH the ratio is skipped with a note (`apt-get install goaccess`).
`--gc-freeze` moves the startup objects out of the collector's reach first (`gc.freeze()`) and
`--gc-threshold` sets the collector's thresholds, for comparison with CPython's defaults (the
collector costs a few µs per line on this path; the service decides its settings).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.models import FileIdentity
from agent.records import OutRecord, RecordBuilder
from bench.agent_throughput import two_shards
from bench.enrich_throughput import simulated_log
from consumers.archive_format import EventColumns, IpPrivacy, parquet_bytes, split_by_hour
from consumers.bots import BotDetector
from consumers.counters import ShardState
from consumers.decode import decode_record
from consumers.enrich import Enricher
from consumers.geo.reloading import ReloadingGeoLocator
from consumers.models import UserRecord
from consumers.pages import SiteRules
from consumers.parse import parse_batch
from consumers.processor import count_in_shard_order

FILE = FileIdentity(device=1, inode=1, fingerprint="0123456789abcdef0123456789abcdef")
FIRST_SEQUENCE = 49_650_000_000_000_000_000_000_000_000_000_000_000_000_000_000
"""A Kinesis-shaped sequence number (56 digits): the state converts it to an int per line."""
STAGES = ("decode", "parse", "enrich", "state", "archive add", "archive flush")


def records(path: Path, chunk_bytes: int) -> Iterator[OutRecord]:
    """The file as the agent would ship it: aggregated records, the two shards interleaved in
    the order the builder fills them."""
    builder = RecordBuilder(two_shards())
    shard_ids = builder.shard_ids()
    offset = 0
    rest = b""
    with path.open("rb") as log:
        while True:
            data = log.read(chunk_bytes)
            at_end = not data
            data = rest + data
            cut = len(data) if at_end else data.rfind(b"\n") + 1
            chunk, rest = data[:cut], data[cut:]
            if chunk and not chunk.endswith(b"\n"):  # a last line without its newline
                chunk += b"\n"
            if chunk:
                builder.add_chunk(FILE, offset, chunk, now=0.0)
                offset += len(chunk)
            if at_end:
                builder.seal_all()
            while taken := [builder.take(shard_id) for shard_id in shard_ids]:
                if not any(taken):
                    break
                for out in taken:
                    yield from out
            if at_end:
                return


def spool(path: Path, chunk_bytes: int, out: BinaryIO) -> tuple[list[str], int]:
    """Write the file's records to `out` (shard index, length, data); the shard ids and count.

    Built before the consumer's part starts and kept on disk, so that the agent's objects (its
    route cache holds one tuple per client address) are gone before the measured part: in the
    service they live in another process and never burden the consumer's garbage collector.
    """
    shard_ids: list[str] = []
    count = 0
    for record in records(path, chunk_bytes):
        if record.shard_id not in shard_ids:
            shard_ids.append(record.shard_id)
        out.write(struct.pack("<BI", shard_ids.index(record.shard_id), len(record.data)))
        out.write(record.data)
        count += 1
    return shard_ids, count


def spooled(shard_ids: list[str], spool_file: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(shard id, record data) back from `spool`, one record in memory at a time."""
    spool_file.seek(0)
    while header := spool_file.read(5):
        index, size = struct.unpack("<BI", header)
        yield shard_ids[index], spool_file.read(size)


class Shard:
    """One shard's consumer: its state, its next sequence number and its archive columns."""

    def __init__(self, shard_id: str) -> None:
        self.shard_id = shard_id
        self.state = ShardState(shard_id)
        self.sequence = FIRST_SEQUENCE
        self.columns = EventColumns()


def run_path(
    path: Path, flush_every: int, chunk_bytes: int, spool_file: BinaryIO, slice_lines: int = 0
) -> dict[str, float]:
    """Process the whole file (records spooled through `spool_file`); CPU seconds per stage,
    and the counts."""
    enricher = Enricher(ReloadingGeoLocator(), BotDetector(), SiteRules())
    privacy = IpPrivacy("full")
    shards: dict[str, Shard] = {}
    cpu = dict.fromkeys(STAGES, 0.0)
    lines = hits = rejected = kinesis_records = archived = objects = parquet_size = 0
    clock = time.process_time

    def flush(shard: Shard) -> None:
        nonlocal objects, parquet_size, archived
        started = clock()
        table = shard.columns.table(privacy)
        for piece in split_by_hour(table, "event_time"):
            parquet_size += len(parquet_bytes(piece.table))
            objects += 1
        archived += len(shard.columns)
        shard.columns = EventColumns()
        del table
        cpu["archive flush"] += clock() - started

    build_started = clock()
    shard_ids, _ = spool(path, chunk_bytes, spool_file)
    build_cpu = clock() - build_started
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    read_cpu = 0.0
    total_started = clock()
    source = spooled(shard_ids, spool_file)
    while True:
        read_started = clock()
        record = next(source, None)
        read_cpu += clock() - read_started
        if record is None:
            break
        shard_id, data = record
        shard = shards.get(shard_id)
        if shard is None:
            shard = shards[shard_id] = Shard(shard_id)
        shard.sequence += 1_000_000
        sequence = str(shard.sequence)
        kinesis_records += 1

        t0 = clock()
        users: list[UserRecord] = decode_record(shard_id, sequence, 0.0, data)
        t1 = clock()
        cpu["decode"] += t1 - t0
        lines += len(users)
        step = slice_lines or len(users) or 1
        for first in range(0, len(users), step):
            piece = users[first : first + step]
            t1 = clock()
            parsed = parse_batch([u.line for u in piece])
            t2 = clock()
            enriched = enricher.enrich_parsed(parsed)
            t3 = clock()
            count_in_shard_order(shard.state, piece, parsed, enriched)
            t4 = clock()
            accepted = [piece[i] for i in parsed.hit_rows] if parsed.rejections else piece
            shard.columns.extend_columns(
                accepted, parsed.columns, enriched.by_name(), [None] * len(parsed)
            )
            t5 = clock()
            cpu["parse"] += t2 - t1
            cpu["enrich"] += t3 - t2
            cpu["state"] += t4 - t3
            cpu["archive add"] += t5 - t4
            hits += len(parsed)
            rejected += len(parsed.rejections)
            del piece, parsed, enriched, accepted
        del users
        if len(shard.columns) >= flush_every:
            flush(shard)
    for shard in shards.values():
        if len(shard.columns):
            flush(shard)
    total = clock() - total_started - read_cpu
    return {
        **cpu,
        "total": total,
        "build": build_cpu,
        "lines": lines,
        "hits": hits,
        "rejected": rejected,
        "records": kinesis_records,
        "archived": archived,
        "objects": objects,
        "parquet_bytes": parquet_size,
        "rss_before_mib": rss_before,
    }


def run_goaccess(path: Path) -> tuple[float, float] | None:
    """GoAccess's (CPU seconds, wall seconds) for the file, or None when it is not installed."""
    goaccess = shutil.which("goaccess")
    if goaccess is None:
        return None
    with tempfile.TemporaryDirectory(prefix="goaccess-") as directory:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall_started = time.perf_counter()
        subprocess.run(
            [goaccess, str(path), "--log-format=COMBINED", "-o", "report.json"],
            cwd=directory,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - wall_started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, help="an access log (default: simulated)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="simulated lines")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flush", type=int, default=100_000, help="events per archive flush")
    parser.add_argument("--chunk-mb", type=float, default=8.0, help="agent read size")
    parser.add_argument(
        "--slice",
        type=int,
        default=0,
        help="lines per parse/enrich/state/archive step (default 0: a whole Kinesis record)",
    )
    parser.add_argument("--no-goaccess", action="store_true", help="skip the GoAccess run")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after startup")
    parser.add_argument(
        "--gc-threshold",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        metavar="G0,G1,G2",
        help="gc.set_threshold(...) first (CPython's default: 700,10,10)",
    )
    args = parser.parse_args(argv)

    path = args.file if args.file is not None else simulated_log(args.lines, args.seed)
    if args.gc_threshold:
        gc.set_threshold(*args.gc_threshold)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    load_before = os.getloadavg()
    wall_started = time.perf_counter()
    with tempfile.TemporaryFile(prefix="records-") as spool_file:
        figures = run_path(path, args.flush, int(args.chunk_mb * 2**20), spool_file, args.slice)
    wall = time.perf_counter() - wall_started
    load_after = os.getloadavg()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    lines, cpu = int(figures["lines"]), figures["total"]
    rate = lines / cpu
    print(f"file              {path} ({path.stat().st_size / 1e6:.0f} MB)")
    print(
        f"lines             {lines:,} in {int(figures['records']):,} Kinesis records "
        f"({int(figures['hits']):,} hits, {int(figures['rejected']):,} rejected)"
    )
    print(f"lines/s (CPU)     {rate:,.0f}   (target >= 150,000)")
    print(f"CPU s per 1M      {cpu / lines * 1e6:.2f}   (wall {wall:.1f} s incl. the agent side)")
    print(
        f"peak RSS          {peak_rss:.0f} MiB ({figures['rss_before_mib']:.0f} MiB peak before "
        "the consumer's part: interpreter, libraries, building the records)"
    )
    print("per stage         µs/line   share")
    for stage in STAGES:
        print(f"  {stage:<15} {figures[stage] / lines * 1e6:7.2f}   {figures[stage] / cpu:5.1%}")
    between = cpu - sum(figures[s] for s in STAGES)
    print(f"  {'between stages':<15} {between / lines * 1e6:7.2f}   {between / cpu:5.1%}")
    print(f"  {'total':<15} {cpu / lines * 1e6:7.2f}")
    print(
        f"archive           {int(figures['archived']):,} events, {int(figures['objects'])} "
        f"objects, {figures['parquet_bytes'] / 1e6:.1f} MB Parquet"
    )
    print(f"agent side        {figures['build']:.1f} s CPU building records (not counted)")
    print(
        f"load average      {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} cores)"
    )
    if args.no_goaccess:
        return
    goaccess = run_goaccess(path)
    if goaccess is None:
        print("goaccess          not installed (apt-get install goaccess): ratio skipped")
        return
    g_cpu, g_wall = goaccess
    g_rate = lines / g_cpu
    print(f"goaccess          {g_rate:,.0f} lines/s (CPU {g_cpu:.1f} s, wall {g_wall:.1f} s)")
    print(f"ratio             {rate / g_rate:.2f}x GoAccess   (target >= 4x)")
    print(f"load average      {os.getloadavg()[0]:.2f} after goaccess")


if __name__ == "__main__":
    main()
