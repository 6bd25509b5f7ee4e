"""ShardReader against real endpoints: moto for reading and exact resume (DynamoDB leases too),
kinesalite for split and merge. Faults (expired iterators, throttling, 5xx) are injected on the
client's own botocore event hooks around real GetRecords calls.

The invariant every test checks: each line the agent put is handed out exactly once, in shard
order, and a visitor's lines come out in file order even across a reshard.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.envelope import event_id
from agent.models import FileIdentity
from agent.records import RecordBuilder
from agent.shipper import load_shard_map
from consumers.leases import SHARD_END, Checkpoint, Lease, LeaseTable
from consumers.reader import ReadBatch, ShardEnded, ShardReader
from consumers.shard_graph import readable_shards, shard_infos
from service.aws import aws_client
from service.resources import ensure_lease_table

pytestmark = pytest.mark.integration

FINGERPRINT = "0123456789abcdef0123456789abcdef"
FILE = FileIdentity(device=1, inode=1, fingerprint=FINGERPRINT)
FAST = {"poll_interval_s": 0.02, "max_calls_per_second": 50.0, "backoff_base_s": 0.005}


def make_lines(n: int, start: int = 0) -> list[bytes]:
    return [
        (
            f"10.0.{i % 7}.{i % 13} - - [22/Feb/2023:03:38:18 +0000] "
            f'"GET /cafe/menu.php?i={i} HTTP/1.1" 200 {i} "-" "Mozilla/5.0"'
        ).encode()
        for i in range(start, start + n)
    ]


@dataclass
class Producer:
    """Puts lines the way the agent does (aggregated per target shard, one call at a time) and
    remembers each line's event id."""

    kinesis: Any
    stream: str
    offset: int = 0
    expected: dict[str, bytes] = field(default_factory=dict)

    async def put(self, lines: list[bytes], aggregate: bool = True, max_bytes: int = 4096) -> None:
        shard_map = await load_shard_map(self.kinesis, self.stream)
        builder = RecordBuilder(shard_map, aggregate=aggregate, max_record_bytes=max_bytes)
        chunk = b"".join(line + b"\n" for line in lines)
        builder.add_chunk(FILE, self.offset, chunk, now=0.0)
        for line in lines:
            self.expected[event_id(FINGERPRINT, self.offset)] = line
            self.offset += len(line) + 1
        builder.seal_all()
        for shard_id in builder.shard_ids():
            while records := builder.take(shard_id, max_records=100):
                entries = []
                for r in records:
                    entry = {"Data": r.data, "PartitionKey": r.partition_key}
                    if r.explicit_hash_key is not None:
                        entry["ExplicitHashKey"] = r.explicit_hash_key
                    entries.append(entry)
                response = await self.kinesis.put_records(StreamName=self.stream, Records=entries)
                assert response["FailedRecordCount"] == 0


# ----------------------------------------------------------------------------- fault injection


@dataclass
class _Http:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""


def _error(status: int, code: str) -> tuple[_Http, dict[str, Any]]:
    return _Http(status), {
        "Error": {"Code": code, "Message": "injected"},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 0},
    }


FAULTS = {
    "expired": (400, "ExpiredIteratorException"),
    "throttle": (400, "ProvisionedThroughputExceededException"),
    "500": (500, "InternalFailure"),
}


@dataclass
class GetRecordsFaults:
    """Answers the next GetRecords calls from the script instead of the endpoint ("ok": let
    the call through)."""

    script: list[str] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    operation: str = "GetRecords"

    def install(self, client: Any) -> Callable[[], None]:
        event = f"before-call.kinesis.{self.operation}"
        client.meta.events.register(event, self._before_call)
        return lambda: client.meta.events.unregister(event, self._before_call)

    async def _before_call(self, **_: Any) -> Any:
        if not self.script:
            return None
        fault = self.script.pop(0)
        self.injected[fault] += 1
        return None if fault == "ok" else _error(*FAULTS[fault])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
async def kinesis(aws: str) -> AsyncIterator[Any]:
    """botocore's own retries off: the reader decides what is retried."""
    async with aws_client("kinesis", retries={"total_max_attempts": 1}) as client:
        yield client


async def create_stream(kinesis: Any, shards: int) -> str:
    name = f"reader-{uuid.uuid4().hex[:10]}"
    await kinesis.create_stream(StreamName=name, ShardCount=shards)
    await wait_active(kinesis, name)
    return name


async def wait_active(kinesis: Any, stream: str) -> None:
    for _ in range(300):
        summary = await kinesis.describe_stream_summary(StreamName=stream)
        if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{stream} did not become ACTIVE")


async def shard_ids(kinesis: Any, stream: str) -> list[str]:
    return [s["ShardId"] for s in (await kinesis.list_shards(StreamName=stream))["Shards"]]


async def read_until(
    readers: list[ShardReader], want: int, timeout_s: float = 60.0
) -> list[ReadBatch]:
    """Batches of all readers (each on its own task) until `want` user records arrived."""
    batches: list[ReadBatch] = []
    got = 0
    done = asyncio.Event()

    async def pull(reader: ShardReader) -> None:
        nonlocal got
        async for event in reader:
            if isinstance(event, ReadBatch):
                batches.append(event)
                got += len(event.records)
                if got >= want:
                    done.set()

    tasks = [asyncio.create_task(pull(r)) for r in readers]
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return batches


def check_exactly_once(batches: list[ReadBatch], expected: dict[str, bytes]) -> None:
    records = [r for b in batches for r in b.records]
    counts = Counter(r.event_id for r in records)
    assert set(counts) == set(expected), "lines lost or foreign lines read"
    assert [eid for eid, n in counts.items() if n > 1] == [], "a line was handed out twice"
    for r in records:
        assert r.line == expected[r.event_id]
    check_positions(batches)
    check_visitor_order(records)


def check_positions(batches: list[ReadBatch]) -> None:
    """Within a shard, positions only grow, and a batch's position is its last record's."""
    last: dict[str, tuple[int, int]] = {}
    for batch in batches:
        for r in batch.records:
            key = (int(r.sequence_number), r.sub_sequence_number)
            assert key > last.get(r.shard_id, (-1, -1))
            last[r.shard_id] = key
        end = batch.records[-1]
        assert batch.position == Checkpoint(end.sequence_number, end.sub_sequence_number)


def check_visitor_order(records: list[Any]) -> None:
    """A visitor's lines (same client IP) come out in file order."""
    by_ip: dict[bytes, list[int]] = {}
    for r in records:
        by_ip.setdefault(r.line.split(b" ", 1)[0], []).append(int(r.event_id.rsplit(":", 1)[1]))
    for offsets in by_ip.values():
        assert offsets == sorted(offsets)


# ----------------------------------------------------------------------------- moto


@pytest.mark.parametrize("aggregate", [True, False], ids=["aggregated", "plain"])
async def test_one_reader_per_shard_reads_every_line_once(kinesis: Any, aggregate: bool) -> None:
    stream = await create_stream(kinesis, 2)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(1500 if aggregate else 300), aggregate=aggregate)
    readers = [ShardReader(kinesis, stream, s, **FAST) for s in await shard_ids(kinesis, stream)]
    batches = await read_until(readers, len(producer.expected))
    check_exactly_once(batches, producer.expected)
    assert {b.shard_id for b in batches} == set(await shard_ids(kinesis, stream))
    assert all(r.stats.get_records_calls >= 1 for r in readers)
    assert all(b.millis_behind_latest is not None for b in batches)


async def test_resume_in_the_middle_of_an_aggregated_record(kinesis: Any, aws: str) -> None:
    """Checkpoint (through the lease table) at a sub-record inside an aggregated record; a new
    reader from that checkpoint hands out exactly the rest, from the next sub-record on."""
    stream = await create_stream(kinesis, 1)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(600), max_bytes=2048)
    [shard] = await shard_ids(kinesis, stream)
    everything = [
        r
        for b in await read_until([ShardReader(kinesis, stream, shard, **FAST)], 600)
        for r in b.records
    ]
    per_record = Counter(r.sequence_number for r in everything)
    assert max(per_record.values()) > 3, "the test needs aggregated records"
    async with aws_client("dynamodb") as dynamodb:
        await ensure_lease_table(dynamodb, "reader-leases")
        table = LeaseTable(dynamodb, "reader-leases", owner="worker-a")
        await table.create_lease(shard)
        lease = await table.get(shard)
        assert lease is not None
        lease = await table.take(lease)
        for cut in _interesting_cuts(everything):
            at = everything[cut]
            lease = await table.checkpoint(lease, at.sequence_number, at.sub_sequence_number)
            stored = await table.get(shard)
            assert stored is not None
            reader = ShardReader(kinesis, stream, shard, stored.checkpoint, **FAST)
            rest = everything[cut + 1 :]
            if not rest:
                continue
            got = [r for b in await read_until([reader], len(rest)) for r in b.records]
            assert got == rest, f"resume after record {cut} of {len(everything)}"


def _interesting_cuts(records: list[Any]) -> list[int]:
    """Indices to checkpoint at, ascending: first sub-record, a middle one, the last sub-record of
    a record, the first of the next, and the very last line."""
    middle = next(
        i
        for i in range(1, len(records) - 1)
        if records[i - 1].sequence_number
        == records[i].sequence_number
        == records[i + 1].sequence_number
    )
    last_of_record = next(
        i
        for i in range(middle, len(records) - 1)
        if records[i + 1].sequence_number != records[i].sequence_number
    )
    return [0, middle, last_of_record, last_of_record + 1, len(records) - 1]


async def test_resume_after_a_plain_record(kinesis: Any) -> None:
    stream = await create_stream(kinesis, 1)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(40), aggregate=False)
    [shard] = await shard_ids(kinesis, stream)
    everything = [
        r
        for b in await read_until([ShardReader(kinesis, stream, shard, **FAST)], 40)
        for r in b.records
    ]
    assert {r.sub_sequence_number for r in everything} == {0}
    at = everything[9]
    reader = ShardReader(kinesis, stream, shard, Checkpoint(at.sequence_number, 0), **FAST)
    got = [r for b in await read_until([reader], 30) for r in b.records]
    assert got == everything[10:]


async def test_expired_iterator_recovers_without_gap_or_duplicate(kinesis: Any) -> None:
    stream = await create_stream(kinesis, 1)
    [shard] = await shard_ids(kinesis, stream)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(500))
    faults = GetRecordsFaults()
    uninstall = faults.install(kinesis)
    reader = ShardReader(kinesis, stream, shard, limit=3, **FAST)
    batches: list[ReadBatch] = []
    try:
        async with reader:
            events = aiter(reader)
            while sum(len(b.records) for b in batches) < 500:
                batches.append(await asyncio.wait_for(anext(events), 30))  # type: ignore[arg-type]
                if len(batches) == 2:
                    faults.script = ["expired"]  # expires between two calls in mid-stream
            faults.script = ["expired"]  # and again while idle at the tip, then more data
            await asyncio.sleep(0.1)
            await producer.put(make_lines(300, start=500))
            while sum(len(b.records) for b in batches) < 800:
                batches.append(await asyncio.wait_for(anext(events), 30))  # type: ignore[arg-type]
    finally:
        uninstall()
    assert faults.injected["expired"] == 2
    assert reader.stats.expired_iterators == 2
    check_exactly_once(batches, producer.expected)


async def test_throttling_and_server_errors_back_off_and_lose_nothing(kinesis: Any) -> None:
    stream = await create_stream(kinesis, 1)
    [shard] = await shard_ids(kinesis, stream)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(800))
    # Faults between successful calls, so that recovery happens mid-stream, not at the start.
    script = ["ok", "throttle", "throttle", "ok", "500", "500", "500", "ok", "throttle"] * 3
    faults = GetRecordsFaults(script=script)
    uninstall = faults.install(kinesis)
    reader = ShardReader(kinesis, stream, shard, limit=2, backoff_cap_s=0.05, **FAST)
    try:
        batches = await read_until([reader], 800)
    finally:
        uninstall()
    assert reader.stats.throttled == faults.injected["throttle"] == 9
    assert reader.stats.server_errors == faults.injected["500"] == 9
    # Repeated 5xx fetch a fresh iterator (moto answers a bad iterator with 500): from the last
    # record handed out, so still nothing lost or repeated.
    assert reader.stats.iterators_requested > 1
    check_exactly_once(batches, producer.expected)


async def test_control_plane_calls_are_retried_too(kinesis: Any) -> None:
    """GetShardIterator (at the start and after an expiry) throttled or failing: retried."""
    stream = await create_stream(kinesis, 1)
    [shard] = await shard_ids(kinesis, stream)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(300))
    iterator_faults = GetRecordsFaults(
        ["throttle", "500", "ok", "throttle"], operation="GetShardIterator"
    )
    record_faults = GetRecordsFaults(["ok", "expired"])
    uninstall = [iterator_faults.install(kinesis), record_faults.install(kinesis)]
    reader = ShardReader(kinesis, stream, shard, limit=3, backoff_cap_s=0.05, **FAST)
    try:
        batches = await read_until([reader], 300)
    finally:
        for undo in uninstall:
            undo()
    assert iterator_faults.injected == {"throttle": 2, "500": 1, "ok": 1}
    assert reader.stats.expired_iterators == 1
    check_exactly_once(batches, producer.expected)


async def test_backoff_grows_under_sustained_throttling(kinesis: Any) -> None:
    stream = await create_stream(kinesis, 1)
    [shard] = await shard_ids(kinesis, stream)
    faults = GetRecordsFaults(script=["throttle"] * 6)
    uninstall = faults.install(kinesis)
    reader = ShardReader(
        kinesis, stream, shard, backoff_base_s=0.02, backoff_cap_s=1.0, rng=lambda: 1.0
    )
    started = time.monotonic()
    try:
        async with reader:
            while reader.stats.throttled < 6:
                await asyncio.sleep(0.01)
                assert time.monotonic() - started < 10
            elapsed = time.monotonic() - started
    finally:
        uninstall()
    # 0.02 * (1 + 2 + 4 + 8 + 16) for the first five backoffs: never a hot retry loop.
    assert elapsed >= 0.6


async def test_a_slow_consumer_pauses_reading_and_nothing_is_skipped(kinesis: Any) -> None:
    stream = await create_stream(kinesis, 1)
    [shard] = await shard_ids(kinesis, stream)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(400))
    reader = ShardReader(kinesis, stream, shard, limit=2, queue_batches=1, **FAST)
    # A stall longer than an iterator's five minutes: the first call after it finds it expired.
    faults = GetRecordsFaults()
    uninstall = faults.install(kinesis)
    batches: list[ReadBatch] = []
    try:
        async with reader:
            events = aiter(reader)
            batches.append(await asyncio.wait_for(anext(events), 30))  # type: ignore[arg-type]
            await asyncio.sleep(0.3)  # the sink stalls: the reader fills its queue and waits
            calls = reader.stats.get_records_calls
            faults.script = ["expired"]
            await asyncio.sleep(0.5)
            assert reader.stats.get_records_calls == calls, "reading went on during the stall"
            assert calls <= 3
            while sum(len(b.records) for b in batches) < 400:
                batches.append(await asyncio.wait_for(anext(events), 30))  # type: ignore[arg-type]
                await asyncio.sleep(0.001)  # still slow, but pulling
    finally:
        uninstall()
    assert reader.stats.expired_iterators == 1
    check_exactly_once(batches, producer.expected)


async def test_polling_respects_the_call_rate(kinesis: Any) -> None:
    stream = await create_stream(kinesis, 1)
    [shard] = await shard_ids(kinesis, stream)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(2000), max_bytes=1024)  # many records: never idle
    reader = ShardReader(kinesis, stream, shard, limit=1, poll_interval_s=0.0)
    async with reader:
        await asyncio.sleep(1.0)
    # 5 calls/s: at most 6 in one second (one at t=0), whatever the backlog.
    assert 3 <= reader.stats.get_records_calls + reader.stats.iterators_requested <= 6


# ----------------------------------------------------------------------------- kinesalite


@pytest.fixture
async def kinesalite_kinesis(aws: str, kinesalite: str) -> AsyncIterator[Any]:
    """Kinesis on kinesalite (it ends closed shards), DynamoDB on moto."""
    async with aws_client("kinesis", retries={"total_max_attempts": 1}) as client:
        yield client


@dataclass
class SingleWorker:
    """The single-worker rules, as the consumer's scheduler applies them: a lease per shard,
    one reader task per readable shard, checkpoint per batch, SHARD_END then the children."""

    kinesis: Any
    table: LeaseTable
    stream: str
    batches: list[ReadBatch] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)

    async def run_until(self, want: int, timeout_s: float = 60.0) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while sum(len(b.records) for b in self.batches) < want:
                assert time.monotonic() < deadline, "not every line was read in time"
                for failed in [t for t in tasks.values() if t.done() and t.exception()]:
                    raise failed.exception()  # type: ignore[misc]
                shards = shard_infos(
                    (await self.kinesis.list_shards(StreamName=self.stream))["Shards"]
                )
                for info in shards.values():
                    await self.table.create_lease(
                        info.shard_id,
                        info.parent_shard_ids,
                        info.starting_hash_key,
                        info.ending_hash_key,
                    )
                leases = {lease.lease_key: lease for lease in await self.table.list_leases()}
                at_end = {k for k, lease in leases.items() if lease.checkpoint.is_shard_end}
                for shard_id in readable_shards(shards, at_end):
                    if shard_id not in tasks:
                        lease = await self.table.take(leases[shard_id])
                        tasks[shard_id] = asyncio.create_task(self._process(lease))
                await asyncio.sleep(0.05)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _process(self, lease: Lease) -> None:
        shard_id = lease.lease_key
        self.started[shard_id] = time.monotonic()
        async with ShardReader(
            self.kinesis, self.stream, shard_id, lease.checkpoint, **FAST
        ) as reader:
            async for event in reader:
                if isinstance(event, ReadBatch):
                    self.batches.append(event)  # "durable" here: then checkpoint
                    position = event.position
                    lease = await self.table.checkpoint(
                        lease, position.sequence_number, position.sub_sequence_number
                    )
                else:
                    assert isinstance(event, ShardEnded)
                    self.ended[shard_id] = time.monotonic()
                    for child in event.children:  # the children's rows first, as the KCL does
                        await self.table.create_lease(
                            child.shard_id,
                            child.parent_shard_ids,
                            child.starting_hash_key,
                            child.ending_hash_key,
                        )
                    lease = await self.table.mark_shard_end(lease, event.child_shard_ids)


async def test_split_and_merge_children_after_parents_every_line_once(
    kinesalite_kinesis: Any,
) -> None:
    kinesis = kinesalite_kinesis
    stream = await create_stream(kinesis, 1)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(400))
    [parent] = (await kinesis.list_shards(StreamName=stream))["Shards"]
    middle = str((int(parent["HashKeyRange"]["EndingHashKey"]) + 1) // 2)
    await kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=middle
    )
    await wait_active(kinesis, stream)
    await producer.put(make_lines(400, start=400))  # lands on the two children
    children = [
        s
        for s in (await kinesis.list_shards(StreamName=stream))["Shards"]
        if s.get("ParentShardId")
    ]
    low, high = sorted(children, key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))
    await kinesis.merge_shards(
        StreamName=stream, ShardToMerge=low["ShardId"], AdjacentShardToMerge=high["ShardId"]
    )
    await wait_active(kinesis, stream)
    await producer.put(make_lines(400, start=800))  # lands on the merged child
    async with aws_client("dynamodb") as dynamodb:
        await ensure_lease_table(dynamodb, "reshard-leases")
        worker = SingleWorker(kinesis, LeaseTable(dynamodb, "reshard-leases", "worker-a"), stream)
        await worker.run_until(len(producer.expected))
        leases = {lease.lease_key: lease for lease in await worker.table.list_leases()}
    check_exactly_once(worker.batches, producer.expected)
    shards = shard_infos((await kinesis.list_shards(StreamName=stream))["Shards"])
    assert len(shards) == 4
    merged = next(s for s in shards.values() if len(s.parent_shard_ids) == 2)
    # Parents reached SHARD_END (with their children recorded) before any child was started.
    assert leases[parent["ShardId"]].checkpoint.sequence_number == SHARD_END
    assert leases[parent["ShardId"]].child_shard_ids == {low["ShardId"], high["ShardId"]}
    for child in (low["ShardId"], high["ShardId"]):
        assert worker.started[child] > worker.ended[parent["ShardId"]]
        assert leases[child].child_shard_ids == {merged.shard_id}
    for p in merged.parent_shard_ids:
        assert worker.started[merged.shard_id] > worker.ended[p]
    assert merged.shard_id not in worker.ended  # open: read, never ended


async def test_children_come_from_child_shards_when_the_endpoint_sends_them(
    kinesalite_kinesis: Any,
) -> None:
    """Real Kinesis names the children in the last GetRecords response of a closed shard
    (ChildShards); kinesalite does not, so the hook adds what Kinesis would send."""
    kinesis = kinesalite_kinesis
    stream = await create_stream(kinesis, 1)
    producer = Producer(kinesis, stream)
    await producer.put(make_lines(50))
    [parent] = (await kinesis.list_shards(StreamName=stream))["Shards"]
    middle = str((int(parent["HashKeyRange"]["EndingHashKey"]) + 1) // 2)
    await kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=middle
    )
    await wait_active(kinesis, stream)
    said = [
        {
            "ShardId": "shardId-000000000777",
            "ParentShards": [parent["ShardId"]],
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "5"},
        }
    ]

    def add_child_shards(parsed: dict[str, Any], **_: Any) -> None:
        if "Records" in parsed and parsed.get("NextShardIterator") is None:
            parsed["ChildShards"] = said

    kinesis.meta.events.register("after-call.kinesis.GetRecords", add_child_shards)
    try:
        events = [e async for e in ShardReader(kinesis, stream, parent["ShardId"], **FAST)]
    finally:
        kinesis.meta.events.unregister("after-call.kinesis.GetRecords", add_child_shards)
    ended = events[-1]
    assert isinstance(ended, ShardEnded)
    assert ended.child_shard_ids == ("shardId-000000000777",)
    [child] = ended.children
    assert child.parent_shard_ids == (parent["ShardId"],)
    assert (child.starting_hash_key, child.ending_hash_key) == ("0", "5")
    check_exactly_once([e for e in events if isinstance(e, ReadBatch)], producer.expected)


async def test_children_of_a_split_found_with_list_shards(kinesalite_kinesis: Any) -> None:
    kinesis = kinesalite_kinesis
    stream = await create_stream(kinesis, 1)
    [parent] = (await kinesis.list_shards(StreamName=stream))["Shards"]
    middle = str((int(parent["HashKeyRange"]["EndingHashKey"]) + 1) // 2)
    await kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=middle
    )
    await wait_active(kinesis, stream)
    events = [e async for e in ShardReader(kinesis, stream, parent["ShardId"], **FAST)]
    assert len(events) == 1 and isinstance(events[0], ShardEnded)  # an empty parent ends at once
    children = events[0].children
    assert [c.parent_shard_ids for c in children] == [(parent["ShardId"],)] * 2
    assert [c.starting_hash_key for c in children] == ["0", middle]


def test_reader_refuses_a_shard_at_its_end_and_bad_settings() -> None:
    with pytest.raises(ValueError, match="SHARD_END"):
        ShardReader(None, "s", "shardId-0", Checkpoint(SHARD_END))
    with pytest.raises(ValueError):
        ShardReader(None, "s", "shardId-0", limit=0)
    with pytest.raises(ValueError):
        ShardReader(None, "s", "shardId-0", max_calls_per_second=0)
