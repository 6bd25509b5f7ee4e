"""The numbered commit against moto: each step's failure stops the rest; a commit leaves the
snapshot the checkpoint names and nothing older; the CloudWatch cursor reaches the snapshot only
once CloudWatch accepted the minutes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from consumers.checkpoint import (
    CommitPolicy,
    MinuteAtomicSink,
    ShardCommitter,
    published_by_markers,
)
from consumers.counters import ShardState
from consumers.leases import TRIM_HORIZON, Checkpoint, LeaseLostError, LeaseTable
from consumers.models import Rejection, UserRecord
from consumers.sinks.base import ArchiveWriteError, Pending
from consumers.sinks.cloudwatch import CloudWatchSink, MetricBatch, MetricDatum
from consumers.sinks.s3_archive import S3ArchiveSink
from consumers.snapshots import SnapshotStore, snapshot_key
from consumers.state_store import to_bytes
from service.aws import aws_client
from service.resources import ensure_bucket, ensure_lease_table
from tests.consumers.state_support import T0, Feeder, hit

BUCKET = "checkpoint-tests"
TABLE = "checkpoint-leases"
SHARD = "shardId-000000000000"


@dataclass
class Stack:
    s3: Any
    dynamodb: Any
    cloudwatch: Any
    leases: LeaseTable
    snapshots: SnapshotStore


@pytest.fixture
async def stack(aws: str) -> AsyncIterator[Stack]:
    async with (
        aws_client("s3") as s3,
        aws_client("dynamodb") as dynamodb,
        aws_client("cloudwatch") as cloudwatch,
    ):
        await ensure_bucket(s3, BUCKET, "us-east-1")
        await ensure_lease_table(dynamodb, TABLE)
        leases = LeaseTable(dynamodb, TABLE, "worker-a")
        yield Stack(s3, dynamodb, cloudwatch, leases, SnapshotStore(s3, BUCKET))


async def keys(s3: Any, prefix: str) -> list[str]:
    response = await s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in response.get("Contents", []))


def record(sequence: int, sub: int = 0) -> UserRecord:
    return UserRecord(SHARD, str(sequence), sub, float(T0), f"e{sequence}-{sub}", b"junk")


async def committer(stack: Stack, archive: Any, metrics: Any = None) -> ShardCommitter:
    await stack.leases.create_lease(SHARD)
    lease = await stack.leases.take((await stack.leases.list_leases())[0])
    return ShardCommitter(lease, stack.leases, archive, stack.snapshots, metrics)


def fed_state(through: int) -> ShardState:
    state = ShardState(SHARD)
    feed = Feeder()
    for i in range(through):
        feed(state, hit(T0 + 60 * i, ip=f"198.51.100.{i % 50}"))
    return state


async def test_a_commit_leaves_archive_snapshot_and_checkpoint_in_that_order(stack: Stack) -> None:
    archive = S3ArchiveSink(stack.s3, BUCKET, SHARD, encode_in_thread=False)
    archive.add_rejected(record(5), Rejection("empty", "nothing"))
    commit = await committer(stack, archive)
    state = fed_state(5)
    result = await commit.commit(state, Checkpoint("5"))
    assert result.archived.records == 1
    assert commit.lease.checkpoint == Checkpoint("5")
    assert await keys(stack.s3, "state/") == [snapshot_key(SHARD, Checkpoint("5"))]
    restored = await stack.snapshots.load(SHARD, (await stack.leases.get(SHARD)).checkpoint)
    assert restored is not None and to_bytes(restored) == to_bytes(state)
    # A newer checkpoint collects the older snapshot: the checkpoint names exactly one.
    more = fed_state(7)
    await commit.commit(more, Checkpoint("7"))
    assert await keys(stack.s3, "state/") == [snapshot_key(SHARD, Checkpoint("7"))]


async def test_a_failed_archive_flush_writes_neither_snapshot_nor_checkpoint(stack: Stack) -> None:
    archive = S3ArchiveSink(
        stack.s3, "no-such-bucket-here", SHARD, max_attempts=1, encode_in_thread=False
    )
    archive.add_rejected(record(3), Rejection("empty", "nothing"))
    commit = await committer(stack, archive)
    with pytest.raises(ArchiveWriteError):
        await commit.commit(fed_state(3), Checkpoint("3"))
    assert await keys(stack.s3, "state/") == []
    assert (await stack.leases.get(SHARD)).checkpoint == Checkpoint(TRIM_HORIZON)
    assert archive.pending.records == 1  # kept for the next flush, under the same key


async def test_a_lost_lease_stops_the_commit_at_step_four(stack: Stack) -> None:
    archive = S3ArchiveSink(stack.s3, BUCKET, SHARD, encode_in_thread=False)
    commit = await committer(stack, archive)
    other = LeaseTable(stack.dynamodb, TABLE, "worker-b")
    await other.take((await other.list_leases())[0])
    with pytest.raises(LeaseLostError):
        await commit.commit(fed_state(4), Checkpoint("4"))
    assert (await stack.leases.get(SHARD)).checkpoint == Checkpoint(TRIM_HORIZON)
    # The orphan snapshot names a position no checkpoint reached; the new owner's first commit
    # (any later position) collects it.
    assert await keys(stack.s3, "state/") == [snapshot_key(SHARD, Checkpoint("4"))]


async def test_the_cloudwatch_cursor_reaches_the_snapshot_only_after_acceptance(
    stack: Stack,
) -> None:
    archive = S3ArchiveSink(stack.s3, BUCKET, SHARD, encode_in_thread=False)
    metrics = CloudWatchSink(stack.cloudwatch, "CheckpointTests")
    commit = await committer(stack, archive, metrics)
    state = fed_state(10)  # ten minutes, the last ones still open
    closed = [m.minute for m in state.pending_increments()]
    assert closed
    taken = (await commit.commit(state, Checkpoint("10"))).metric_batches_taken
    assert taken == len(closed)
    assert state.published_through is None  # handed over, not yet accepted
    await metrics.flush()  # the publish loop's cycle
    await commit.commit(state, Checkpoint("10"))  # same position: the snapshot is rewritten
    assert state.published_through == closed[-1]
    restored = await stack.snapshots.load(SHARD, Checkpoint("10"))
    assert restored is not None and restored.published_through == closed[-1]
    # The last commit before stopping publishes the still-open minutes as well.
    open_minutes = state.pending_increments(close_all=True)
    assert open_minutes and open_minutes[0].minute > closed[-1]
    await commit.commit(state, Checkpoint("10"), close_open_minutes=True)
    await metrics.flush()
    await commit.commit(state, Checkpoint("10"))
    assert state.pending_increments(close_all=True) == []


def test_commit_policy_counts_records_bytes_and_age() -> None:
    policy = CommitPolicy(records=100, bytes=1000, seconds=5.0)
    assert not policy.due(Pending(records=0, bytes=0, age_s=99.0))  # nothing to commit
    assert policy.due(Pending(records=100, bytes=10, age_s=0.0))
    assert policy.due(Pending(records=1, bytes=1000, age_s=0.0))
    assert policy.due(Pending(records=1, bytes=10, age_s=5.0))
    assert not policy.due(Pending(records=99, bytes=999, age_s=4.9))
    with pytest.raises(ValueError):
        CommitPolicy(records=0)


async def test_a_restored_state_skips_the_minutes_whose_markers_cloudwatch_has(
    stack: Stack,
) -> None:
    """The crash between PutMetricData and the next snapshot: the snapshot's cursor is behind
    what CloudWatch has, and the markers say how far."""
    archive = S3ArchiveSink(stack.s3, BUCKET, SHARD, encode_in_thread=False)
    metrics = MinuteAtomicSink(stack.cloudwatch, "MarkerTests")
    commit = await committer(stack, archive, metrics)
    state = fed_state(10)
    await commit.commit(state, Checkpoint("10"))  # snapshot: nothing published yet
    before = await stack.snapshots.load(SHARD, Checkpoint("10"))
    assert before is not None and before.published_through is None
    await metrics.flush()  # published... then kill -9, before the next snapshot
    closed = [m.minute for m in state.pending_increments()]
    through = await published_by_markers(stack.cloudwatch, "MarkerTests", before)
    assert through == closed[-1]
    fresh = ShardState(SHARD)
    assert await published_by_markers(stack.cloudwatch, "MarkerTests", fresh) is None


def test_calls_end_at_a_minute_boundary_when_the_minute_fits() -> None:
    sink = MinuteAtomicSink(cloudwatch=None, namespace="Unused")
    datum = MetricDatum("PageViews", (), float(T0), 1.0)
    sink.add([MetricBatch(SHARD, minute, (datum,) * 300) for minute in range(5)])
    chunk = sink._next_chunk(1000)
    assert len(chunk) == 900  # three whole minutes, not 1,000 data cutting the fourth
    assert {entry.cursor for entry in chunk} == {0, 1, 2}
    big = MinuteAtomicSink(cloudwatch=None, namespace="Unused")
    big.add([MetricBatch(SHARD, 0, (datum,) * 1500)])
    assert len(big._next_chunk(1000)) == 1000  # larger than a call: split, unavoidably
