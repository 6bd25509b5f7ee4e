"""Shipper against the local stack with a real aiobotocore client; faults via botocore events.

Faults are injected on the client's own event hooks, around real calls to the endpoint:

- a partial failure removes some entries from the request before it is sent (so Kinesis really
  does not store them) and splices failed results back in at their indices in the response, as
  Kinesis reports them;
- throttling and 5xx answer the call from `before-call` with the error Kinesis would send;
- a connection error raises what aiobotocore raises when the endpoint cannot be reached.

Every test then reads the whole stream back (GetRecords, aws-kinesis-agg's deaggregator) and
checks that every line is there exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import EndpointConnectionError
from prometheus_client import generate_latest

from agent.backoff import backoff_delay
from agent.envelope import decode_payload
from agent.metrics import AgentMetrics
from agent.models import Ack, FileIdentity, Line
from agent.shardmap import hash_key
from agent.shipper import Shipper, classify
from agent.tailer import LineBatch
from tests.agent.support import deaggregate

pytestmark = pytest.mark.integration

FILE = FileIdentity(device=1, inode=7, fingerprint="0badc0ffee0ddf00")


def make_lines(n: int, file: FileIdentity = FILE, start: int = 0) -> list[Line]:
    lines, at = [], start
    for i in range(n):
        data = (
            f"10.{i % 3}.{i % 11}.{i % 17} - - [22/Feb/2023:03:38:18 +0000] "
            f'"GET /cafe/menu.php?i={i} HTTP/1.1" 200 {i} "-" "Mozilla/5.0"'
        ).encode()
        lines.append(Line(file, at, at + len(data) + 1, data))
        at += len(data) + 1
    return lines


def batches_of(lines: list[Line], size: int) -> list[list[Line]]:
    return [lines[i : i + size] for i in range(0, len(lines), size)]


@pytest.fixture
async def kinesis(aws: Any) -> AsyncIterator[Any]:
    """A Kinesis client with botocore's own retries off: the shipper decides what is retried."""
    config = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)
    region = os.environ.get("AWS_REGION", "us-east-1")
    async with get_session().create_client("kinesis", region_name=region, config=config) as client:
        yield client


@pytest.fixture
async def stream(kinesis: Any) -> AsyncIterator[str]:
    name = f"agent-test-{uuid.uuid4().hex[:10]}"
    await kinesis.create_stream(StreamName=name, ShardCount=2)
    for _ in range(100):
        described = await kinesis.describe_stream_summary(StreamName=name)
        if described["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            break
        await asyncio.sleep(0.05)
    yield name
    await kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


async def read_stream(client: Any, stream: str) -> dict[str, list[tuple[str, bytes, str]]]:
    """Per shard, (event id, line, partition key) of every user record, in stored order."""
    out: dict[str, list[tuple[str, bytes, str]]] = {}
    shards = (await client.list_shards(StreamName=stream))["Shards"]
    for shard in shards:
        iterator = (
            await client.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]
        got = out.setdefault(shard["ShardId"], [])
        while iterator:
            response = await client.get_records(ShardIterator=iterator, Limit=10_000)
            for pk, payload in deaggregate(response["Records"]):
                eid, line = decode_payload(payload)
                got.append((eid, line, pk))
            if not response["Records"]:  # caught up (the local stacks return all at once)
                break
            iterator = response.get("NextShardIterator")
    return out


def check_exactly_once(
    stored: dict[str, list[tuple[str, bytes, str]]], lines: list[Line], ordered: bool = True
) -> None:
    """Every line stored once, intact, under its client IP; in file order per visitor unless
    entries failed (a failed entry is resent after later entries of its call were stored)."""
    counts = Counter(eid for records in stored.values() for eid, _, _ in records)
    expected = {f"{line.file.fingerprint}:{line.offset}": line.data for line in lines}
    assert set(counts) == set(expected), "lines lost or foreign lines stored"
    assert [eid for eid, n in counts.items() if n != 1] == [], "a line was stored twice"
    for records in stored.values():
        for eid, data, pk in records:
            assert data == expected[eid]
            assert pk == data.split(b" ", 1)[0].decode()
        if not ordered:
            continue
        by_visitor: dict[str, list[int]] = {}
        for eid, _, pk in records:
            by_visitor.setdefault(pk, []).append(int(eid.rsplit(":", 1)[1]))
        for offsets in by_visitor.values():
            assert offsets == sorted(offsets)


def check_acks(acks: list[Ack], lines: list[Line]) -> None:
    covered = sorted((a.offset, a.end) for a in acks)
    assert covered[0][0] == lines[0].offset and covered[-1][1] == lines[-1].end
    for (_, end), (start, _) in itertools.pairwise(covered):
        assert end == start  # contiguous, no overlap: every line acknowledged exactly once


@dataclass
class Faults:
    """A script of what happens to each PutRecords call; 'ok' once the script is used up."""

    script: list[str | tuple[str, list[int]]] = field(default_factory=list)
    calls: int = 0
    entries_sent: int = 0
    entries_failed: int = 0
    gate: asyncio.Event | None = None

    def install(self, client: Any) -> Callable[[], None]:
        events = client.meta.events
        handlers = [
            ("provide-client-params.kinesis.PutRecords", self._params),
            ("before-call.kinesis.PutRecords", self._before_call),
            ("after-call.kinesis.PutRecords", self._after_call),
        ]
        for name, handler in handlers:
            events.register(name, handler)

        def uninstall() -> None:
            for name, handler in handlers:
                events.unregister(name, handler)

        return uninstall

    def _params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
        self.calls += 1
        action = self.script.pop(0) if self.script else "ok"
        context["fault"] = action
        records = params["Records"]
        if isinstance(action, tuple):
            drop = sorted({i for i in action[1] if i < len(records)})
            if len(drop) == len(records):
                drop = drop[1:]
            context["fault_dropped"] = drop
            kept = [r for i, r in enumerate(records) if i not in drop]
            self.entries_failed += len(drop)
            self.entries_sent += len(kept)
            return {**params, "Records": kept}
        if action == "ok":
            self.entries_sent += len(records)
        return None

    async def _before_call(self, context: dict[str, Any], **_: Any) -> Any:
        if self.gate is not None:
            await self.gate.wait()
        action = context.get("fault")
        if action == "throttle":
            return _error(400, "ProvisionedThroughputExceededException", "Rate exceeded")
        if action == "500":
            return _error(500, "InternalFailure", "We encountered an internal error")
        if action == "connection":
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/")
        return None

    def _after_call(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        drop = context.get("fault_dropped")
        if not drop or "Records" not in parsed:
            return
        results = list(parsed["Records"])
        for i in drop:
            results.insert(
                i,
                {
                    "ErrorCode": "ProvisionedThroughputExceededException",
                    "ErrorMessage": "Rate exceeded for shard",
                },
            )
        parsed["Records"] = results
        parsed["FailedRecordCount"] = parsed.get("FailedRecordCount", 0) + len(drop)


@dataclass
class _Http:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""


def _error(status: int, code: str, message: str) -> tuple[_Http, dict[str, Any]]:
    return _Http(status), {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 0},
    }


def scrape(shipper: Shipper) -> str:
    return generate_latest(shipper.metrics.registry).decode()


def shipper_for(client: Any, stream: str, acks: list[Ack], **kwargs: Any) -> Shipper:
    options: dict[str, Any] = {
        "linger_s": 0.02,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
        "metrics": AgentMetrics(),
    }
    options.update(kwargs)
    return Shipper(client, stream, acks.append, **options)


@pytest.mark.parametrize("aggregate", [True, False], ids=["aggregated", "one-record-per-line"])
async def test_every_line_arrives_exactly_once(kinesis: Any, stream: str, aggregate: bool) -> None:
    lines = make_lines(3000 if aggregate else 800)
    acks: list[Ack] = []
    async with shipper_for(kinesis, stream, acks, aggregate=aggregate) as shipper:
        for batch in batches_of(lines, 250):
            await shipper.submit(batch)
        assert await shipper.drain(timeout_s=60)
        assert shipper.pending_lines == 0 and shipper.in_flight_bytes == 0
    check_exactly_once(await read_stream(kinesis, stream), lines)
    check_acks(acks, lines)
    metrics = shipper.metrics
    assert metrics.lines_read._value.get() == len(lines)
    assert metrics.lines_sent._value.get() == len(lines)


async def test_linger_sends_a_lone_line_without_drain(kinesis: Any, stream: str) -> None:
    lines = make_lines(1)
    acks: list[Ack] = []
    async with shipper_for(kinesis, stream, acks, linger_s=0.05) as shipper:
        await shipper.submit(lines)
        for _ in range(200):
            if acks:
                break
            await asyncio.sleep(0.01)
    assert acks == [Ack(FILE, lines[0].offset, lines[0].end)]


async def test_partial_failures_resend_only_the_failed_entries(kinesis: Any, stream: str) -> None:
    lines = make_lines(1200)
    faults = Faults(
        script=[("partial", [0, 2, 3]), ("partial", [1]), "ok", ("partial", [0, 1, 5, 7, 9])] * 3
    )
    uninstall = faults.install(kinesis)
    acks: list[Ack] = []
    try:
        # Small records, so that each call carries several entries to fail selectively.
        async with shipper_for(kinesis, stream, acks, max_record_bytes=2048) as shipper:
            for batch in batches_of(lines, 100):
                await shipper.submit(batch)
            assert await shipper.drain(timeout_s=60)
    finally:
        uninstall()
    assert faults.entries_failed > 0
    retried = shipper.metrics.retries.labels("throttled")._value.get()
    assert retried == faults.entries_failed
    assert shipper.metrics.records_sent._value.get() == faults.entries_sent
    check_exactly_once(await read_stream(kinesis, stream), lines, ordered=False)
    check_acks(acks, lines)


async def test_throttling_5xx_and_connection_errors_lose_nothing(kinesis: Any, stream: str) -> None:
    lines = make_lines(2000)
    faults = Faults(script=["throttle", "throttle", "500", "connection", "ok", "throttle"] * 4)
    uninstall = faults.install(kinesis)
    acks: list[Ack] = []
    try:
        async with shipper_for(kinesis, stream, acks) as shipper:
            for batch in batches_of(lines, 200):
                await shipper.submit(batch)
            assert await shipper.drain(timeout_s=60)
    finally:
        uninstall()
    retries = shipper.metrics.retries
    assert retries.labels("throttled")._value.get() > 0
    assert retries.labels("server_error")._value.get() > 0
    assert retries.labels("connection")._value.get() > 0
    check_exactly_once(await read_stream(kinesis, stream), lines)
    check_acks(acks, lines)


async def test_back_pressure_holds_while_in_flight_is_full(kinesis: Any, stream: str) -> None:
    lines = make_lines(600)
    batches = batches_of(lines, 100)
    per_batch = sum(len(line.data) + 1 for line in batches[0])
    faults = Faults(gate=asyncio.Event())
    uninstall = faults.install(kinesis)
    acks: list[Ack] = []
    try:
        async with shipper_for(
            kinesis, stream, acks, max_in_flight_bytes=2 * per_batch, stall_seconds=0.2
        ) as shipper:
            await shipper.submit(batches[0])
            await shipper.submit(batches[1])
            blocked = asyncio.create_task(shipper.submit(batches[2]))
            await asyncio.sleep(0.3)
            assert not blocked.done(), "submit went past a full in-flight budget"
            assert shipper.in_flight_bytes >= shipper.max_in_flight_bytes
            assert not shipper.healthy(), "lines wait and nothing is acknowledged"
            assert "clickstream_agent_healthy 0.0" in scrape(shipper)
            faults.gate.set()
            await asyncio.wait_for(blocked, 30)
            for batch in batches[3:]:
                await shipper.submit(batch)
            assert await shipper.drain(timeout_s=60)
            assert shipper.healthy()
            assert "clickstream_agent_healthy 1.0" in scrape(shipper)
    finally:
        uninstall()
    check_exactly_once(await read_stream(kinesis, stream), lines)
    check_acks(acks, lines)


async def test_drain_times_out_while_kinesis_refuses(kinesis: Any, stream: str) -> None:
    faults = Faults(script=["throttle"] * 1000)
    uninstall = faults.install(kinesis)
    acks: list[Ack] = []
    try:
        async with shipper_for(kinesis, stream, acks) as shipper:
            await shipper.submit(make_lines(10))
            assert not await shipper.drain(timeout_s=0.3)
            assert acks == [] and shipper.pending_lines == 10  # kept, not dropped
    finally:
        uninstall()


def test_classify_and_backoff() -> None:
    assert classify("ProvisionedThroughputExceededException") == "throttled"
    assert classify("InternalFailure") == "server_error"
    assert classify("Whatever", 503) == "server_error"
    assert classify("ResourceNotFoundException", 400) == "rejected"
    assert backoff_delay(0, 0.1, 10, lambda: 1.0) == 0.1
    assert backoff_delay(10, 0.1, 10, lambda: 1.0) == 10
    assert backoff_delay(1000, 0.1, 10, lambda: 0.5) == 5


@pytest.fixture
async def kinesalite_client(kinesalite: str) -> AsyncIterator[Any]:
    config = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)
    async with get_session().create_client(
        "kinesis", region_name=os.environ.get("AWS_REGION", "us-east-1"), config=config
    ) as client:
        yield client


async def wait_active(client: Any, stream: str) -> None:
    for _ in range(200):
        summary = await client.describe_stream_summary(StreamName=stream)
        if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{stream} did not become ACTIVE")


async def test_split_reloads_the_shard_map_and_loses_nothing(kinesalite_client: Any) -> None:
    """kinesalite routes by hash key after a split (moto does not): a put that lands on a child
    reveals the split, the map is reloaded, and later records are packed per child."""
    client = kinesalite_client
    stream = "agent-reshard"
    await client.create_stream(StreamName=stream, ShardCount=1)
    await wait_active(client, stream)
    lines = make_lines(900)
    before, during, after = lines[:300], lines[300:600], lines[600:]
    acks: list[Ack] = []
    async with shipper_for(client, stream, acks) as shipper:
        await shipper.submit(before)
        assert await shipper.drain(timeout_s=30)
        parent = (await client.list_shards(StreamName=stream))["Shards"][0]
        middle = str((int(parent["HashKeyRange"]["EndingHashKey"]) + 1) // 2)
        await client.split_shard(
            StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=middle
        )
        await wait_active(client, stream)
        await shipper.submit(during)  # lands on a child: the shipper notices the split
        assert await shipper.drain(timeout_s=30)
        for _ in range(100):
            if len(shipper._require_builder().shard_map) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(shipper._require_builder().shard_map) == 2
        await shipper.submit(after)
        assert await shipper.drain(timeout_s=30)
    stored = await read_stream(client, stream)
    check_exactly_once(stored, lines)
    check_acks(acks, lines)
    # Once the map is reloaded, every user record sits on the shard its key hashes to (the KCL
    # drops sub-records that do not).
    shards = {
        s["ShardId"]: (
            int(s["HashKeyRange"]["StartingHashKey"]),
            int(s["HashKeyRange"]["EndingHashKey"]),
        )
        for s in (await client.list_shards(StreamName=stream))["Shards"]
    }
    after_ids = {f"{line.file.fingerprint}:{line.offset}" for line in after}
    for shard_id, records in stored.items():
        low, high = shards[shard_id]
        for eid, _, pk in records:
            if eid in after_ids:
                assert low <= hash_key(pk) <= high


async def test_tailer_batches_ship_whole_or_by_line(kinesis: Any, stream: str) -> None:
    """A LineBatch's bytes go whole (the fast path); one with rejected lines goes by line, and
    the rejected range is never acknowledged by the shipper (the checkpoint skips it itself)."""
    lines = make_lines(40)
    chunk = b"".join(line.data + b"\n" for line in lines[:20])
    whole = LineBatch(FILE, "/var/log/access_log", lines[0].offset, lines[19].end, data=chunk)
    gap = (lines[25].offset, lines[25].end)  # a rejected over-long line
    kept = lines[20:25] + lines[26:]
    by_line = LineBatch(FILE, "/var/log/access_log", lines[20].offset, lines[-1].end, kept, [gap])
    acks: list[Ack] = []
    async with shipper_for(kinesis, stream, acks) as shipper:
        await shipper.submit_batch(whole)
        await shipper.submit_batch(by_line)
        assert await shipper.drain(timeout_s=30)
    check_exactly_once(await read_stream(kinesis, stream), lines[:25] + lines[26:])
    assert sorted((a.offset, a.end) for a in acks) == [
        (lines[0].offset, lines[19].end),
        (lines[20].offset, lines[24].end),
        (lines[26].offset, lines[-1].end),
    ]
