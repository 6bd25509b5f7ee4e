"""Agent throughput: tail + aggregate + ship, lines/s, CPU seconds per million lines, peak RSS.

Scenarios (each in a fresh child process, so peak RSS is its own):

- ``pack``: RecordBuilder alone over the file's bytes (no tailer, no event loop): the ceiling.
- ``stub``: the real pipeline in process (GlobTailer -> Shipper -> PutRecords) with the network
  stubbed by a client whose PutRecords accepts everything at once. The issue's target: >= 300,000
  lines/s on one core (the agent is one thread, so CPU time is one core's time).
- ``moto``: the same pipeline against moto in server mode on loopback, until every line is
  acknowledged. Target: >= 50,000 lines/s with aggregation.

    .venv/bin/python bench/agent_throughput.py [--lines 1000000] [--file access_log]
        [--scenarios pack,stub,moto] [--moto-lines 300000] [--no-aggregate]

Without --file, a combined-format log that looks like the simulator's (20,000 visitors, café
pages, real user agents, IPv6 now and then) is generated in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.models import Ack, FileIdentity
from agent.records import MAX_PUT_BYTES, RecordBuilder
from agent.shardmap import MAX_HASH_KEY, Shard, ShardMap
from agent.shipper import Shipper
from agent.tailer import GlobTailer

PAGES = [
    "/cafe",
    "/cafe/index.php",
    "/cafe/menu.php",
    "/cafe/processOrder.php",
    "/cafe/orderHistory.php",
    "/cafe/css/styles.css",
    "/cafe/images/coffee.jpg",
    "/cafe/images/cake.png",
]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Safari/605.1.15",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]


def generate(path: Path, lines: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    visitors = []
    for i in range(20_000):
        if i % 25 == 0:
            ip = f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):x}"
        else:
            ip = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
        visitors.append((ip, rng.choice(AGENTS)))
    with path.open("wb") as out:
        for i in range(lines):
            ip, agent = visitors[rng.randrange(len(visitors))]
            page = rng.choice(PAGES)
            method = "POST" if page.endswith("processOrder.php") else "GET"
            status = rng.choice((200, 200, 200, 200, 304, 404, 500))
            second = i // 50
            out.write(
                f"{ip} - - [22/Feb/2023:{(second // 3600) % 24:02d}:{(second // 60) % 60:02d}:"
                f'{second % 60:02d} +0000] "{method} {page} HTTP/1.1" {status} '
                f'{rng.randrange(200, 40_000)} "https://cafe.example.com/cafe" "{agent}"\n'.encode()
            )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def two_shards() -> ShardMap:
    half = (MAX_HASH_KEY + 1) // 2
    return ShardMap(
        [
            Shard("shardId-000000000000", 0, half - 1),
            Shard("shardId-000000000001", half, MAX_HASH_KEY),
        ]
    )


class StubKinesis:
    """The network stubbed: ListShards answers two shards, PutRecords accepts every entry."""

    def __init__(self) -> None:
        self.map = two_shards()
        self.calls = 0

    async def list_shards(self, **_: Any) -> dict[str, Any]:
        return {
            "Shards": [
                {
                    "ShardId": s.shard_id,
                    "HashKeyRange": {
                        "StartingHashKey": str(s.starting_hash_key),
                        "EndingHashKey": str(s.ending_hash_key),
                    },
                    "SequenceNumberRange": {"StartingSequenceNumber": "0"},
                }
                for s in self.map.shards
            ]
        }

    async def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        results = []
        for entry in Records:
            ehk = entry.get("ExplicitHashKey")
            shard = (
                self.map.shards[self.map.index_of_key(int(ehk))]
                if ehk is not None
                else self.map.shard_for(entry["PartitionKey"])
            )
            results.append({"ShardId": shard.shard_id, "SequenceNumber": "1"})
        return {"FailedRecordCount": 0, "Records": results}


def run_pack(path: Path, lines: int, aggregate: bool) -> dict[str, Any]:
    builder = RecordBuilder(two_shards(), aggregate=aggregate)
    file = FileIdentity(0, 0, "0123456789abcdef0123456789abcdef")
    chunk_bytes = 256 * 1024
    records = 0
    wall, cpu = time.perf_counter(), time.process_time()
    with path.open("rb") as f:
        offset, rest = 0, b""
        while block := f.read(chunk_bytes):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            chunk, rest = block[:cut], block[cut:]
            if chunk:
                builder.add_chunk(file, offset, chunk, 0.0)
                offset += len(chunk)
            for shard_id in builder.shard_ids():
                count, size, _ = builder.waiting(shard_id)
                if size >= MAX_PUT_BYTES or count >= 500:
                    records += len(builder.take(shard_id))
    for shard_id in builder.shard_ids():
        while taken := builder.take(shard_id):
            records += len(taken)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"lines": builder.lines_added, "wall_s": wall, "cpu_s": cpu, "records": records}


async def run_pipeline(
    path: Path, size: int, lines: int, aggregate: bool, client: Any, stream: str
) -> dict[str, Any]:
    acked = 0
    done = asyncio.Event()

    def on_ack(ack: Ack) -> None:
        nonlocal acked
        acked = ack.end  # one file: the largest end seen is enough to know when all is in
        if acked >= size:
            done.set()

    shipper = Shipper(client, stream, on_ack, aggregate=aggregate)
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    config = AgentConfig(path=str(path), from_start=True, state_dir=state)
    wall, cpu = time.perf_counter(), time.process_time()
    await shipper.start()
    async with GlobTailer(config) as tailer:
        read = 0
        async for batch in tailer.batches():
            await shipper.submit_batch(batch)
            read += batch.line_count
            if read >= lines:
                break
    await shipper.drain(timeout_s=600)
    await asyncio.wait_for(done.wait(), 600)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sent = shipper.metrics.records_sent._value.get()
    await shipper.stop()
    return {"lines": read, "wall_s": wall, "cpu_s": cpu, "records": int(sent)}


@contextlib.contextmanager
def moto_process() -> Iterator[str]:
    """`clickstream local-aws` in its own process, so the figures are the agent's alone."""
    command = [sys.executable, "-m", "service.cli", "local-aws", "--port", "0"]
    env = {**os.environ, "CLICKSTREAM_STATE_DIR": tempfile.mkdtemp(prefix="bench-moto-")}
    moto = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert moto.stdout is not None
        yield moto.stdout.readline().strip().split("=", 1)[1]
    finally:
        moto.terminate()
        moto.wait(10)


async def run_moto(path: Path, size: int, lines: int, aggregate: bool) -> dict[str, Any]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(retries={"total_max_attempts": 1}, read_timeout=120)
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", config=config
    ) as client:
        await client.create_stream(StreamName="bench", ShardCount=2)
        return await run_pipeline(path, size, lines, aggregate, client, "bench")


def child(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if args.scenario == "pack":
        result = run_pack(path, args.lines, args.aggregate)
    elif args.scenario == "stub":
        size = path.stat().st_size
        result = asyncio.run(
            run_pipeline(path, size, args.lines, args.aggregate, StubKinesis(), "stub")
        )
    else:
        with moto_process() as endpoint:
            os.environ.update(
                {
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing",
                }
            )
            size = path.stat().st_size
            result = asyncio.run(run_moto(path, size, args.lines, args.aggregate))
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--moto-lines", type=int, default=300_000)
    parser.add_argument("--file", help="an access_log to read (default: generate one)")
    parser.add_argument("--scenarios", default="pack,stub,moto")
    parser.add_argument("--no-aggregate", dest="aggregate", action="store_false")
    parser.add_argument("--child", dest="scenario", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        scenarios = args.scenarios.split(",")
        files: dict[int, Path] = {}
        for scenario in scenarios:
            lines = args.moto_lines if scenario == "moto" else args.lines
            if args.file:
                path = Path(args.file)
            elif lines not in files:
                files[lines] = Path(tmp) / f"access_log.{lines}"
                generate(files[lines], lines)
                path = files[lines]
            else:
                path = files[lines]
            command = [sys.executable, __file__, "--child", scenario, "--file", str(path)]
            command += ["--lines", str(lines)]
            if not args.aggregate:
                command.append("--no-aggregate")
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            r = json.loads(output.strip().splitlines()[-1])
            print(
                f"{scenario:5s} aggregate={args.aggregate!s:5s} lines={r['lines']:>9,} "
                f"records={r['records']:>7,}  {r['lines'] / r['wall_s']:>10,.0f} lines/s  "
                f"{r['cpu_s'] / r['lines'] * 1e6:6.2f} CPU s/M lines  "
                f"peak RSS {r['peak_rss_mib']:6.1f} MiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
