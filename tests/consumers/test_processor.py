"""The shard processor's five calls on a real local stack: Kinesis on kinesalite (it ends closed
shards), S3, DynamoDB and CloudWatch on moto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from consumers.counters import summarize
from consumers.enrich import Enricher
from consumers.geo.locator import GeoLocator
from consumers.leases import SHARD_END, TRIM_HORIZON, Checkpoint, LeaseTable
from consumers.processor import ShardProcessor
from consumers.reader import ReadBatch, ShardEnded, ShardReader
from consumers.sinks.cloudwatch import CloudWatchSink
from consumers.sinks.s3_archive import S3ArchiveSink
from consumers.snapshots import SnapshotStore, snapshot_key
from consumers.state_store import to_bytes
from service.aws import aws_client
from service.resources import ensure_bucket, ensure_lease_table
from tests.consumers.test_reader import FAST, Producer, create_stream, make_lines, wait_active

pytestmark = pytest.mark.integration

BUCKET = "processor-tests"
TABLE = "processor-leases"


@dataclass
class Stack:
    kinesis: Any
    s3: Any
    cloudwatch: Any
    leases: LeaseTable
    snapshots: SnapshotStore
    enricher: Enricher


@pytest.fixture(scope="module")
def enricher() -> Enricher:
    return Enricher(GeoLocator())


@pytest.fixture
async def stack(aws: str, kinesalite: str, enricher: Enricher) -> AsyncIterator[Stack]:
    async with (
        aws_client("kinesis", retries={"total_max_attempts": 1}) as kinesis,
        aws_client("s3") as s3,
        aws_client("dynamodb") as dynamodb,
        aws_client("cloudwatch") as cloudwatch,
    ):
        await ensure_bucket(s3, BUCKET, "us-east-1")
        await ensure_lease_table(dynamodb, TABLE)
        leases = LeaseTable(dynamodb, TABLE, "worker-a")
        yield Stack(kinesis, s3, cloudwatch, leases, SnapshotStore(s3, BUCKET), enricher)


def mixed_lines(n: int) -> list[bytes]:
    """Good lines with a malformed one every seventh: a batch interleaves hits and rejections."""
    lines = make_lines(n)
    for i in range(0, n, 7):
        lines[i] = b"this is not an access log line %d" % i
    return lines


async def new_processor(stack: Stack, shard_id: str, **kwargs: Any) -> ShardProcessor:
    await stack.leases.create_lease(shard_id)
    lease = await stack.leases.take(next(x for x in await stack.leases.list_leases()
                                         if x.lease_key == shard_id))  # fmt: skip
    archive = S3ArchiveSink(stack.s3, BUCKET, shard_id, encode_in_thread=False)
    return ShardProcessor(lease, stack.leases, archive, stack.snapshots, stack.enricher, **kwargs)


async def read_all(stack: Stack, stream: str, shard_id: str, start: Checkpoint) -> list[Any]:
    events: list[Any] = []
    async with ShardReader(stack.kinesis, stream, shard_id, start, **FAST) as reader:
        async for event in reader:
            events.append(event)
            if isinstance(event, ReadBatch) and event.millis_behind_latest == 0:
                break
    return events


async def test_initialize_restores_the_snapshot_the_checkpoint_names(stack: Stack) -> None:
    stream = await create_stream(stack.kinesis, 1)
    [shard] = (await stack.kinesis.list_shards(StreamName=stream))["Shards"]
    shard_id = shard["ShardId"]
    producer = Producer(stack.kinesis, stream)
    lines = mixed_lines(300)
    await producer.put(lines)

    first = await new_processor(stack, shard_id)
    assert await first.initialize() == Checkpoint(TRIM_HORIZON)
    batches = await read_all(stack, stream, shard_id, Checkpoint(TRIM_HORIZON))
    for batch in batches:
        first.process_records(batch)
    bad = len(range(0, 300, 7))
    assert (first.stats.hits, first.stats.rejected) == (300 - bad, bad)
    summary = summarize([first.state])
    assert summary["totals"]["rejected_lines"] == bad
    assert summary["totals"]["page_views"] == 300 - bad  # interleaving loses nothing
    await first.commit()
    assert first.lease.checkpoint == batches[-1].position

    # A restart: the snapshot comes back field for field, and a re-delivered batch is dropped
    # before any sink sees it.
    second = await new_processor(stack, shard_id)
    assert await second.initialize() == batches[-1].position
    assert to_bytes(second.state) == to_bytes(first.state)
    second.process_records(batches[-1])
    assert second.stats.replays_dropped == len(batches[-1].records)
    assert second._archive.pending.records == 0
    assert not second.commit_due


async def test_lease_lost_commits_nothing_and_forgets_the_metrics(stack: Stack) -> None:
    stream = await create_stream(stack.kinesis, 1)
    [shard] = (await stack.kinesis.list_shards(StreamName=stream))["Shards"]
    await Producer(stack.kinesis, stream).put(make_lines(20))
    metrics = CloudWatchSink(stack.cloudwatch, "ProcessorTests")
    processor = await new_processor(stack, shard["ShardId"], metrics=metrics)
    start = await processor.initialize()
    for batch in await read_all(stack, stream, shard["ShardId"], start):
        processor.process_records(batch)
    processor.lease_lost()
    with pytest.raises(RuntimeError, match="lease was lost"):
        await processor.commit()
    assert await processor.shutdown_requested() is None
    assert (await stack.leases.get(shard["ShardId"])).checkpoint == Checkpoint(TRIM_HORIZON)


async def test_shard_ended_creates_the_children_then_checkpoints_shard_end(stack: Stack) -> None:
    stream = await create_stream(stack.kinesis, 1)
    [parent] = (await stack.kinesis.list_shards(StreamName=stream))["Shards"]
    await Producer(stack.kinesis, stream).put(make_lines(50))
    middle = str((int(parent["HashKeyRange"]["EndingHashKey"]) + 1) // 2)
    await stack.kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=middle
    )
    await wait_active(stack.kinesis, stream)
    processor = await new_processor(stack, parent["ShardId"])
    start = await processor.initialize()
    async with ShardReader(stack.kinesis, stream, parent["ShardId"], start, **FAST) as reader:
        async for event in reader:
            if isinstance(event, ReadBatch):
                processor.process_records(event)
            else:
                assert isinstance(event, ShardEnded)
                await processor.shard_ended(event, stack.leases)
    leases = {lease.lease_key: lease for lease in await stack.leases.list_leases()}
    assert leases[parent["ShardId"]].checkpoint == Checkpoint(SHARD_END)
    children = leases[parent["ShardId"]].child_shard_ids
    assert len(children) == 2 and children <= leases.keys()
    for child in children:
        assert leases[child].parent_shard_ids == {parent["ShardId"]}
    # The ended shard's state stays reachable: its visitors still count in the windows.
    ended = await stack.snapshots.load(parent["ShardId"], Checkpoint(SHARD_END))
    assert ended is not None and ended.stats.hits == 50
    response = await stack.s3.list_objects_v2(Bucket=BUCKET, Prefix="state/")
    assert [item["Key"] for item in response["Contents"]] == [
        snapshot_key(parent["ShardId"], Checkpoint(SHARD_END))
    ]
