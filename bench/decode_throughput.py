"""Decode throughput: Kinesis records -> UserRecords, records/s and lines/s on one core.

The records are built the way the agent builds them (`agent.records.RecordBuilder`, KPL-aggregated
up to 1 MiB, two shards) from a combined-format log like the simulator's. Two decoders run over
the same records:

- ``ours``: `consumers.decode.decode_record` (the library's generated protobuf class, the
  envelope split inlined). The consumer's target is >= 150,000 lines/s end to end, so decode
  should take a small share of that budget.
- ``library``: aws-kinesis-agg's `iter_deaggregate_records` (boto3 shape), then the envelope
  split, for comparison: the reason `decode.py` does not call it on the hot path.

    .venv/bin/python bench/decode_throughput.py [--lines 300000] [--repeat 3] [--plain]

``--plain`` also measures one record per line (aggregation off).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_kinesis_agg.deaggregator import iter_deaggregate_records

from agent.envelope import decode_payload
from agent.models import FileIdentity
from agent.records import OutRecord, RecordBuilder
from bench.agent_throughput import generate, two_shards
from consumers.decode import decode_record

FILE = FileIdentity(device=1, inode=1, fingerprint="0123456789abcdef0123456789abcdef")


def build(lines: int, aggregate: bool, workdir: Path) -> list[OutRecord]:
    path = workdir / "access_log"
    generate(path, lines)
    data = path.read_bytes()
    builder = RecordBuilder(two_shards(), aggregate=aggregate)
    builder.add_chunk(FILE, 0, data, now=0.0)
    builder.seal_all()
    out: list[OutRecord] = []
    for shard_id in builder.shard_ids():
        while taken := builder.take(shard_id):
            out.extend(taken)
    return out


def run_ours(records: list[OutRecord]) -> int:
    n = 0
    for i, r in enumerate(records):
        n += len(decode_record(r.shard_id, str(i), 0.0, r.data))
    return n


def run_library(records: list[OutRecord]) -> int:
    shaped = [
        {
            "Data": r.data,
            "PartitionKey": r.partition_key,
            "SequenceNumber": str(i),
            "ApproximateArrivalTimestamp": 0.0,
        }
        for i, r in enumerate(records)
    ]
    n = 0
    for user in iter_deaggregate_records(shaped, data_format="Boto3"):
        kinesis = user["kinesis"]
        data = kinesis["data"]
        if kinesis.get("aggregated"):
            data = base64.b64decode(data)
        decode_payload(data)
        n += 1
    return n


def measure(
    name: str, fn: Callable[[list[OutRecord]], int], records: list[OutRecord], repeat: int
) -> dict[str, Any]:
    best = float("inf")
    lines = 0
    for _ in range(repeat):
        started = time.process_time()
        lines = fn(records)
        best = min(best, time.process_time() - started)
    return {
        "decoder": name,
        "records": len(records),
        "lines": lines,
        "cpu_s": round(best, 4),
        "records_per_s": round(len(records) / best),
        "lines_per_s": round(lines / best),
        "us_per_line": round(best / lines * 1e6, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="also one record per line")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        modes = [True, False] if args.plain else [True]
        for aggregate in modes:
            records = build(args.lines, aggregate, Path(tmp))
            for name, fn in (("ours", run_ours), ("library", run_library)):
                result = measure(name, fn, records, args.repeat)
                result["aggregated"] = aggregate
                print(json.dumps(result))


if __name__ == "__main__":
    main()
