"""The commit of one shard: the only place that decides a position is done.

"Checkpoint only after the archive and the counter state for those records are durable"
(DESIGN.md §3) is `ShardCommitter.commit`, four numbered steps; a step that fails raises and the
steps after it do not run, so the lease row never names a position whose records are not in S3
(archive objects and state snapshot) both:

0. the fence: with a lease coordinator, the lease must still be ours and inside its fencing
   limit (`LeaseTable.may_write`), or `LeaseLostError` before anything is written: a worker
   that may have been judged expired writes neither archive objects nor snapshots for a shard
   another worker may be processing (the conditional checkpoint alone would come too late
   for the side effects of steps 1-3);
1. flush the shard's archive sink (its objects are durable when `flush()` returns);
2. fold the CloudWatch sink's acknowledged cursor into the state (`mark_published`), so the
   snapshot's publication cursor covers only minutes CloudWatch accepted;
3. write the state snapshot named by the position (`consumers.snapshots`);
4. checkpoint the lease row, conditional on still owning it (`LeaseLostError`: the caller stops
   processing the shard, and must not retry); then collect older snapshots;
5. hand the sink the closed minutes still unpublished. Never awaited: the sink publishes on its
   own loop and an outage only grows its queue (`consumers.sinks.cloudwatch`).

Handing minutes over only once the checkpoint that contains them is durable means that what
CloudWatch receives for a minute is what the snapshot holds for it: every record counted in a
published minute is at or below a durable checkpoint, so a restart never counts it again.

Each minute's data end with a marker datum (`PUBLISHED_MINUTES`, dimension `Shard`, value 1),
sent in the same ordered queue, so "the marker of minute M reached CloudWatch" implies "all of
minute M did". A restarted processor asks CloudWatch for the markers after its snapshot's
cursor (`published_by_markers`) and moves the cursor past the minutes already there: the
PutMetricData that succeeded just before a `kill -9` is not repeated. (CloudWatch makes new
data readable within seconds to a couple of minutes; a marker not yet visible only brings back
the one duplicate this closes, never a loss.)

Why a time-based flush is safe: the archive's key rule needs only that a batch is flushed *and
checkpointed* before the next batch is flushed. Each commit does both, in order, under the
shard's lock, and a commit that failed leaves the rows in the sink to be written again under the
same keys by the next commit; nothing else calls `flush()`. Where the cut falls (a record
count, a byte count, a timer) does not enter the argument, so `CommitPolicy` may use all three.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from consumers.counters import CityKey, MinuteIncrements, ShardState
from consumers.leases import Checkpoint, Lease, LeaseLostError, LeaseTable
from consumers.sinks.base import CheckpointedSink, FlushResult, Pending
from consumers.sinks.cloudwatch import (
    CloudWatchSink,
    MetricBatch,
    MetricDatum,
    bucket_metric_data,
)
from consumers.snapshots import SnapshotStore
from consumers.windows import minute_of, minute_start

log = logging.getLogger(__name__)

DEFAULT_COMMIT_RECORDS: Final = 50_000
DEFAULT_COMMIT_BYTES: Final = 32 * 1024 * 1024
DEFAULT_COMMIT_SECONDS: Final = 10.0
PUBLISHED_MINUTES: Final = "PublishedMinutes"
"""Marker series, one per shard (`SHARD_DIMENSION`): 1 at each minute this shard published.
(Belongs in `consumers.metric_names`; the dashboard does not show it.)"""
SHARD_DIMENSION: Final = "Shard"


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    """When a shard commits: whichever of records, raw bytes or age of the oldest uncommitted
    record comes first. Few large archive objects are cheap (DESIGN.md §8); the age bounds how
    much a crash re-reads and how stale the dashboard's data can be."""

    records: int = DEFAULT_COMMIT_RECORDS
    bytes: int = DEFAULT_COMMIT_BYTES
    seconds: float = DEFAULT_COMMIT_SECONDS

    def __post_init__(self) -> None:
        if self.records < 1 or self.bytes < 1 or self.seconds <= 0:
            raise ValueError("commit thresholds must be positive")

    def due(self, pending: Pending) -> bool:
        return (
            pending.records >= self.records
            or pending.bytes >= self.bytes
            or (pending.records > 0 and pending.age_s >= self.seconds)
        )


@dataclass(frozen=True, slots=True)
class CommitResult:
    position: Checkpoint
    archived: FlushResult
    metric_batches_taken: int
    snapshot_key: str
    seconds: float


def metric_batches(
    source: str, increments: Iterable[MinuteIncrements], top_cities: Collection[CityKey]
) -> list[MetricBatch]:
    """One batch per minute, cursor = the minute (what `ShardState.mark_published` takes), its
    data ending with the shard's publication marker (module docstring)."""
    marker = ((SHARD_DIMENSION, source),)
    return [
        MetricBatch(
            source,
            minute.minute,
            (
                *bucket_metric_data(
                    minute.timestamp,
                    minute.by_city_key(),
                    top_cities=top_cities,
                    rejected_lines=minute.rejected_lines,
                ),
                MetricDatum(PUBLISHED_MINUTES, marker, minute.timestamp, 1),
            ),
        )
        for minute in increments
    ]


async def published_by_markers(
    cloudwatch: Any, namespace: str, state: ShardState, now: float | None = None
) -> int | None:
    """The newest unpublished minute of `state` whose marker, and every earlier unpublished
    minute's, is in CloudWatch: what a restored state may `mark_published`. None if none."""
    minutes = [m.minute for m in state.pending_increments(close_all=True)]
    if not minutes:
        return None
    now = time.time() if now is None else now
    query = {
        "Id": "published",
        "MetricStat": {
            "Metric": {
                "Namespace": namespace,
                "MetricName": PUBLISHED_MINUTES,
                "Dimensions": [{"Name": SHARD_DIMENSION, "Value": state.shard_id}],
            },
            "Period": 60,
            "Stat": "Sum",
        },
    }
    seen: set[int] = set()
    kwargs: dict[str, Any] = {
        "MetricDataQueries": [query],
        "StartTime": datetime.fromtimestamp(minute_start(minutes[0]), UTC),
        "EndTime": datetime.fromtimestamp(max(now, minute_start(minutes[-1])) + 60, UTC),
    }
    while True:
        response = await cloudwatch.get_metric_data(**kwargs)
        for result in response.get("MetricDataResults", []):
            for stamp, value in zip(result["Timestamps"], result["Values"], strict=True):
                if value > 0:
                    seen.add(minute_of(stamp.timestamp()))
        token = response.get("NextToken")
        if not token:
            break
        kwargs["NextToken"] = token
    through = None
    for minute in minutes:
        if minute not in seen:
            break
        through = minute
    return through


class MinuteAtomicSink(CloudWatchSink):
    """A `CloudWatchSink` whose PutMetricData calls end at a batch (minute) boundary whenever
    the batch fits in one call, so a minute reaches CloudWatch all at once or not at all, and
    its marker (sent last) vouches for the whole minute. A call that stopped mid-minute before a
    `kill -9` would otherwise leave part of the minute there, to be sent again after restart.
    (Belongs in `CloudWatchSink._next_chunk` itself.)"""

    def _next_chunk(self, limit: int) -> list[Any]:
        chunk = super()._next_chunk(limit)
        queue = self._queue
        if not chunk or len(chunk) >= len(queue):
            return chunk
        following = queue[len(chunk)]
        batch = (following.source, following.cursor)
        cut = len(chunk)
        while cut > 0 and (chunk[cut - 1].source, chunk[cut - 1].cursor) == batch:
            cut -= 1
        return chunk[:cut] if cut else chunk  # a batch larger than a call: split, unavoidably


class ShardCommitter:
    """Commits one shard for the processor that owns it; holds the current `Lease` (the fencing
    token), which each successful checkpoint replaces."""

    def __init__(
        self,
        lease: Lease,
        leases: LeaseTable,
        archive: CheckpointedSink,
        snapshots: SnapshotStore,
        metrics: CloudWatchSink | None = None,
        top_cities: Callable[[], Collection[CityKey]] = frozenset,
    ) -> None:
        self.lease = lease
        self.shard_id = lease.lease_key
        self._leases = leases
        self._archive = archive
        self._snapshots = snapshots
        self._metrics = metrics
        self._top_cities = top_cities
        self._lock = asyncio.Lock()
        self.commits = 0

    async def commit(
        self,
        state: ShardState,
        position: Checkpoint,
        *,
        close_open_minutes: bool = False,
        child_shard_ids: Collection[str] | None = None,
    ) -> CommitResult:
        """Make everything up to `position` durable, then record it (module docstring).

        `position` is SHARD_END (with `child_shard_ids`) for a shard read to its end. Raises
        whatever stopped it (`SinkError`, `LeaseLostError`, an S3 error): nothing after the
        failed step ran, and the caller must not process past `position` as if committed.
        """
        async with self._lock:
            started = time.perf_counter()
            # 0. Still ours, inside the fence: nothing is written for a shard we may have lost.
            if not self._leases.may_write(self.shard_id):
                raise LeaseLostError(f"{self.shard_id}: not held or fenced; nothing committed")
            # 1. The archive objects for these records.
            archived = await self._archive.flush()
            # 2. What CloudWatch accepted goes into the state, so the snapshot's cursor covers
            #    only published minutes.
            if self._metrics is not None:
                acknowledged = self._metrics.acknowledged(self.shard_id)
                if acknowledged is not None:
                    state.mark_published(acknowledged)
            # 3. The state as of `position`, under the key the checkpoint will name.
            key = await self._snapshots.save(state, position)
            # 4. The lease row; LeaseLostError ends this shard here.
            if position.is_shard_end:
                self.lease = await self._leases.mark_shard_end(self.lease, child_shard_ids or ())
            elif position.order_key() >= self.lease.checkpoint.order_key():
                self.lease = await self._leases.checkpoint(
                    self.lease, position.sequence_number, position.sub_sequence_number
                )
            self.commits += 1
            await self._snapshots.collect(self.shard_id, self.lease.checkpoint)
            # 5. Minutes whose every record is now behind a durable checkpoint: to CloudWatch.
            taken = 0
            if self._metrics is not None:
                increments = (
                    state.pending_increments(close_all=True)
                    if close_open_minutes
                    else state.pending_increments()
                )
                if increments:
                    top = self._top_cities()
                    taken = self._metrics.add(metric_batches(self.shard_id, increments, top))
                state.mark_handed(self._metrics.held_through(self.shard_id))
            return CommitResult(position, archived, taken, key, time.perf_counter() - started)
