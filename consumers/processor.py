"""One shard's processing, in the KCL's five calls: initialize, process records, lease lost,
shard ended, shutdown requested.

`process_records` reads as the flow (DESIGN.md §2): the reader has already decoded the Kinesis
records into `UserRecord`s (KPL deaggregation, the agent's envelope), so here it is
skip replays -> parse -> enrich -> state -> sinks -> remember the position, and commit when the
policy says so. The commit itself, and its order, is `consumers.checkpoint`.

Rules the five calls keep:

- `initialize` restores the snapshot the lease's checkpoint names (at an initial position: a
  fresh state, or for a child of a reshard its parents' visitors of its hash-key range,
  `consumers.lineage`) and says where reading starts;
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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

from consumers.checkpoint import (
    CommitPolicy,
    CommitResult,
    ShardCommitter,
    published_by_markers,
)
from consumers.counters import CityKey, ShardState
from consumers.enrich import EnrichedColumns, Enricher
from consumers.leases import SHARD_END, Checkpoint, Lease, LeaseTable
from consumers.lineage import inherit, parse_hash_range
from consumers.models import UserRecord
from consumers.parse import ParsedBatch, parse_batch
from consumers.reader import ReadBatch, ShardEnded
from consumers.sessions import BotRule
from consumers.sinks.cloudwatch import CloudWatchSink
from consumers.sinks.s3_archive import S3ArchiveSink
from consumers.snapshots import SnapshotMissingError, SnapshotStore
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


_line_of: Final = attrgetter("line")
_sequence_of: Final = attrgetter("sequence_number")
_sub_sequence_of: Final = attrgetter("sub_sequence_number")


def count_in_shard_order(
    state: ShardState,
    records: Sequence[UserRecord],
    parsed: ParsedBatch,
    enriched: EnrichedColumns,
) -> None:
    """The state step for one batch, in shard order: the state's high-water mark follows every
    record, hit or not (`parsed.rejections` are the others, by index in `records`).

    Each run of hits between two rejected lines goes to `ShardState.add_columns` as slices of
    the columns, so no `Hit` or `EnrichedHit` is built per line only for the state to read seven
    fields back; and a Kinesis record's sequence number (56 digits, shared by all its lines) is
    turned into an int once rather than by the state once per line."""
    numbers = {text: int(text) for text in dict.fromkeys(map(_sequence_of, records))}
    sequences = list(map(numbers.__getitem__, map(_sequence_of, records)))
    subs = list(map(_sub_sequence_of, records))
    columns = (
        parsed.column("time"),
        parsed.column("client_ip"),
        enriched.visitor,
        enriched.location,
        enriched.is_bot,
        enriched.page,
        enriched.is_page_view,
        enriched.stage,
    )
    add = state.add_columns
    row = hit = 0
    for rejected, _ in parsed.rejections:
        run = rejected - row
        if run:
            add(sequences[row:rejected], subs[row:rejected], *[c[hit : hit + run] for c in columns])
        state.add_rejected(sequences[rejected], subs[rejected])
        hit += run
        row = rejected + 1
    if row < len(records):
        add(sequences[row:], subs[row:], *(columns if not hit else [c[hit:] for c in columns]))


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
        self.initialized = False
        """`state` is the shard's (restored or inherited), not the placeholder."""
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
            self.state = await self._inherited_state()
        self.initialized = True
        return start

    async def _inherited_state(self) -> ShardState:
        """A shard that has never committed starts from its parents' visitors of its hash-key
        range (`consumers.lineage`), so a visitor active across a reshard counts once. The
        parents are at SHARD_END (children are read only then), and their snapshots are kept
        as long as their checkpoints name them."""
        fresh = ShardState(self.shard_id, self._lateness or Lateness(), self._bot_rule or BotRule())
        lease = self.lease
        hash_range = parse_hash_range(lease.starting_hash_key, lease.ending_hash_key)
        if not lease.parent_shard_ids:
            return fresh
        if hash_range is None:
            log.warning("%s: no hash-key range in its lease; its parents' visitors are not "
                        "handed over", self.shard_id)  # fmt: skip
            return fresh
        parents = []
        for parent_id in sorted(lease.parent_shard_ids):
            try:
                parent = await self._snapshots.load(
                    parent_id, Checkpoint(SHARD_END), lateness=self._lateness,
                    bot_rule=self._bot_rule,
                )  # fmt: skip
            except SnapshotMissingError:
                parent = None
            if parent is None:
                log.warning("%s: parent %s left no state; its visitors start afresh here",
                            self.shard_id, parent_id)  # fmt: skip
                continue
            parents.append(parent)
        state = inherit(
            self.shard_id, hash_range, parents, lateness=self._lateness, bot_rule=self._bot_rule
        )
        log.info("%s: took over %d visitors from %s", self.shard_id, len(state.visitors),
                 ", ".join(p.shard_id for p in parents) or "no parent")  # fmt: skip
        return state

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
        """Count and archive one batch; `commit_due` says whether to commit now.

        The batch flows in columns (`consumers.parse.ParsedBatch`,
        `consumers.enrich.EnrichedColumns`): the state counts them (`count_in_shard_order`)
        and the archive appends them as they are; no object is built per line."""
        self.stats.millis_behind_latest = batch.millis_behind_latest
        records = self._unseen(batch.records)
        if records:
            parsed = parse_batch(list(map(_line_of, records)))
            enriched = self._enricher.enrich_parsed(parsed)
            count_in_shard_order(self.state, records, parsed, enriched)
            archive = self._archive
            for row, rejection in parsed.rejections:
                archive.add_rejected(records[row], rejection)
            hit_records = [records[i] for i in parsed.hit_rows] if parsed.rejections else records
            archive.add_columns(
                hit_records, parsed.columns, enriched.by_name(), [_NO_SESSION] * len(parsed)
            )
            self.stats.hits += len(parsed)
            self.stats.rejected += len(parsed.rejections)
            self.stats.records += len(records)
        self.position = batch.position

    def _unseen(self, records: list[UserRecord]) -> list[UserRecord]:
        """Records above the state's high-water mark: the ones no sink has seen yet.

        A batch is in shard order, so when its first record is above the mark (every batch
        but one that follows a re-fetched iterator) all of them are, and no record's 56-digit
        sequence number needs converting."""
        mark = self.state.high_water
        if mark is None or not records:
            return records
        first = records[0]
        if (int(first.sequence_number), first.sub_sequence_number) > mark:
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
