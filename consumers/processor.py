"""One shard's processing, in the KCL's five calls: initialize, process records, lease lost,
shard ended, shutdown requested.

`process_records` reads as the flow (DESIGN.md §2): the reader has already decoded the Kinesis
records into `UserRecord`s (KPL deaggregation, the agent's envelope), so here it is
skip replays -> parse -> enrich -> state -> sinks -> remember the position, and commit when the
policy says so. The commit itself, and its order, is `consumers.checkpoint`.

Rules the five calls keep:

- `initialize` restores the snapshot the lease's checkpoint names (a fresh state when the
  checkpoint is an initial position) and says where reading starts;
- a record at or below the state's high-water mark is dropped before any sink sees it (a
  re-fetched iterator, or the AT_SEQUENCE_NUMBER record a restart reads again);
- after `lease_lost` nothing is committed, and the CloudWatch sink forgets this shard (the new
  owner publishes from its snapshot);
- `shard_ended` must commit (SHARD_END, with the children), after creating the children's lease
  rows, as the KCL does, so a child is known before its parent says it is done;
- `shutdown_requested` commits what was processed, publishing even the still-open minutes
  when asked (the last run of a batch job).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final

from consumers.checkpoint import (
    CommitPolicy,
    CommitResult,
    ShardCommitter,
    published_by_markers,
)
from consumers.counters import CityKey, ShardState
from consumers.enrich import Enricher
from consumers.leases import SHARD_END, Checkpoint, Lease, LeaseTable
from consumers.models import EnrichedHit, Hit, Rejection, UserRecord
from consumers.parse import parse_lines
from consumers.reader import ReadBatch, ShardEnded
from consumers.sessions import BotRule
from consumers.sinks.cloudwatch import CloudWatchSink
from consumers.sinks.s3_archive import S3ArchiveSink
from consumers.snapshots import SnapshotStore
from consumers.windows import Lateness

log = logging.getLogger(__name__)

_NO_SESSION: Final = None


@dataclass(slots=True)
class ProcessorStats:
    records: int = 0
    replays_dropped: int = 0
    hits: int = 0
    rejected: int = 0
    commits: int = 0
    last_commit_s: float = 0.0
    millis_behind_latest: int | None = None


class ShardProcessor:
    """Owns one leased shard's state and sinks between `initialize` and one of the three ends.

    Clients and shared pieces are injected; the constructor does no I/O.
    """

    def __init__(
        self,
        lease: Lease,
        leases: LeaseTable,
        archive: S3ArchiveSink,
        snapshots: SnapshotStore,
        enricher: Enricher,
        *,
        metrics: CloudWatchSink | None = None,
        cloudwatch: Any = None,
        top_cities: Callable[[], Collection[CityKey]] = frozenset,
        policy: CommitPolicy | None = None,
        lateness: Lateness | None = None,
        bot_rule: BotRule | None = None,
    ) -> None:
        self.shard_id = lease.lease_key
        self._snapshots = snapshots
        self._archive = archive
        self._enricher = enricher
        self._metrics = metrics
        self._cloudwatch = cloudwatch
        self._lateness = lateness
        self._bot_rule = bot_rule
        self.policy = policy or CommitPolicy()
        self.committer = ShardCommitter(lease, leases, archive, snapshots, metrics, top_cities)
        self.state = ShardState(self.shard_id)
        self.position: Checkpoint | None = None
        """The last record processed (handed to the state and the sinks), not yet committed
        if it differs from the lease's checkpoint."""
        self.lease_is_lost = False
        self.stats = ProcessorStats()

    @property
    def lease(self) -> Lease:
        return self.committer.lease

    # 1. ------------------------------------------------------------------ initialize

    async def initialize(self) -> Checkpoint:
        """Restore the state the checkpoint names; return where reading starts."""
        start = self.lease.checkpoint
        restored = await self._snapshots.load(
            self.shard_id, start, lateness=self._lateness, bot_rule=self._bot_rule
        )
        if restored is not None:
            self.state = restored
            await self._skip_published_minutes()
        else:
            self.state = ShardState(
                self.shard_id, self._lateness or Lateness(), self._bot_rule or BotRule()
            )
        return start

    async def _skip_published_minutes(self) -> None:
        """Minutes CloudWatch already has (their markers are there) although the snapshot's
        cursor predates them: a crash came between PutMetricData and the next snapshot. Not
        sending them again keeps the published sums exact (`consumers.checkpoint`)."""
        if self._metrics is None or self._cloudwatch is None:
            return
        try:
            through = await published_by_markers(
                self._cloudwatch, self._metrics.namespace, self.state
            )
        except Exception as error:  # CloudWatch down: publish again rather than not start
            log.warning("%s: cannot read publication markers (%s); unacknowledged minutes "
                        "will be published again", self.shard_id, error)  # fmt: skip
            return
        if through is not None:
            log.info("%s: minutes through %d were already published", self.shard_id, through)
            self.state.mark_published(through)

    # 2. ------------------------------------------------------------------ process records

    def process_records(self, batch: ReadBatch) -> None:
        """Count and archive one batch; `commit_due` says whether to commit now."""
        self.stats.millis_behind_latest = batch.millis_behind_latest
        records = self._unseen(batch.records)
        if records:
            parsed = parse_lines([record.line for record in records])
            hits: list[Hit] = [result for result in parsed if not isinstance(result, Rejection)]
            enriched = iter(self._enricher.enrich_batch(hits))
            state = self.state
            archive = self._archive
            hit_records: list[UserRecord] = []
            enriched_hits: list[EnrichedHit] = []
            # In shard order: the state's high-water mark follows every record, hit or not.
            for record, result in zip(records, parsed, strict=True):
                if isinstance(result, Rejection):
                    state.add_rejected(record.sequence_number, record.sub_sequence_number)
                    archive.add_rejected(record, result)
                else:
                    hit = next(enriched)
                    state.add(hit, record.sequence_number, record.sub_sequence_number)
                    hit_records.append(record)
                    enriched_hits.append(hit)
            archive.add_batch(hit_records, enriched_hits, [_NO_SESSION] * len(enriched_hits))
            self.stats.hits += len(enriched_hits)
            self.stats.rejected += len(records) - len(enriched_hits)
            self.stats.records += len(records)
        self.position = batch.position

    def _unseen(self, records: list[UserRecord]) -> list[UserRecord]:
        """Records above the state's high-water mark: the ones no sink has seen yet."""
        mark = self.state.high_water
        if mark is None:
            return records
        fresh = [r for r in records if (int(r.sequence_number), r.sub_sequence_number) > mark]
        self.stats.replays_dropped += len(records) - len(fresh)
        return fresh

    @property
    def uncommitted(self) -> bool:
        return self.position is not None and self.position != self.lease.checkpoint

    @property
    def commit_due(self) -> bool:
        return self.uncommitted and self.policy.due(self._archive.pending)

    async def commit(self, *, close_open_minutes: bool = False) -> CommitResult | None:
        """Commit through the last processed record (the `consumers.checkpoint` steps)."""
        if self.lease_is_lost:
            raise RuntimeError(f"{self.shard_id}: the lease was lost; no checkpoint may follow")
        if self.position is None:
            return None
        started = time.perf_counter()
        result = await self.committer.commit(
            self.state, self.position, close_open_minutes=close_open_minutes
        )
        self.stats.commits += 1
        self.stats.last_commit_s = time.perf_counter() - started
        return result

    # 3. ------------------------------------------------------------------ lease lost

    def lease_lost(self) -> None:
        """Another worker owns the shard now: drop what is not committed, commit nothing."""
        self.lease_is_lost = True
        if self._metrics is not None:
            self._metrics.forget(self.shard_id)
        log.warning("%s: lease lost; %s left uncommitted for the new owner", self.shard_id,
                    self.position)  # fmt: skip

    # 4. ------------------------------------------------------------------ shard ended

    async def shard_ended(self, ended: ShardEnded, leases: LeaseTable) -> CommitResult:
        """Children's lease rows first, then the final commit at SHARD_END."""
        for child in ended.children:
            await leases.create_lease(
                child.shard_id, child.parent_shard_ids, child.starting_hash_key,
                child.ending_hash_key,
            )  # fmt: skip
        self.position = Checkpoint(SHARD_END)
        return await self.committer.commit(
            self.state,
            self.position,
            close_open_minutes=True,
            child_shard_ids=ended.child_shard_ids,
        )

    # 5. ------------------------------------------------------------------ shutdown requested

    async def shutdown_requested(self, *, close_open_minutes: bool = False) -> CommitResult | None:
        """The worker stops: commit what was processed (and, again, the metrics cursor)."""
        if self.lease_is_lost:
            return None
        if self.position is None:
            self.position = None if self.lease.checkpoint.is_sentinel else self.lease.checkpoint
        return await self.commit(close_open_minutes=close_open_minutes)
