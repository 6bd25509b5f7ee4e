"""The consumer worker: the leases the coordinator gives it, one processing task per held
shard, the fleet's numbers for the summary, the metrics publish loop, and a graceful stop. The
one place that wires leases, readers and processors.

Leases are the coordinator's (`consumers.coordinator`): it takes this worker's fair share of
the KCL-format lease table, renews, steals, fences and discovers new shards on its own loop.
A single worker takes every lease, as before; a restart with the same worker id takes its
former life's leases back at once, a new id waits for them to expire (the failover time). This
module only follows `coordinator.held` on a short tick: a processor for each newly held shard,
`lease_lost` (and the task cancelled) for a running shard no longer held. Commits go through
`CoordinatedLeaseTable`, so each one is fenced (`held_valid`) before its side effects and its
checkpoint uses the coordinator's current lease.

A shard task is `initialize` -> (`process_records`, commit when due)* -> one end: `shard_ended`
(the coordinator is woken, so its children are taken at once, not a take interval later),
`lease_lost`, or the worker's stop. A task that fails (S3 refused a commit after its retries,
the reader gave up) is dropped with its uncommitted state, and the shard, still held, is
started again from its checkpoint and snapshot: the archive's key rule and the state's
high-water mark make the replay harmless.

The fleet's numbers: visitors stay on one shard (the partition key is the client address), so
per-shard states add up exactly. `summary()` merges this worker's shards, the states of ended
shards, and, for every shard another worker holds, the snapshot its lease checkpoint names
(re-read every `fleet_refresh_s` when the checkpoint moved). The summary's ``fleet`` field says
which shard came from where and how old each snapshot is: a remote shard counts as of its
owner's last commit.

Stopping (SIGTERM, DESIGN.md §4): take nothing more (renewals go on), stop fetching, let each
task finish the batch in hand, commit every shard (publishing the still-open minutes when
asked: a batch run's end), give CloudWatch what it was handed, commit again so the snapshots
carry the acknowledged cursor, and evict our leases so the other workers take them at once,
all within `stop_timeout_s` (ECS's 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from consumers.archive_format import IpPrivacy
from consumers.checkpoint import CommitPolicy, MinuteAtomicSink
from consumers.coordinator import (
    DEFAULT_FAILOVER_S,
    CoordinatedLeaseTable,
    CoordinatorConfig,
    CoordinatorStats,
    LeaseCoordinator,
)
from consumers.counters import CityKey, ShardState, summarize, top_cities
from consumers.enrich import Enricher
from consumers.leases import SHARD_END, Checkpoint, Lease, LeaseLostError, LeaseTable
from consumers.lineage import parse_hash_range, release
from consumers.processor import ShardProcessor
from consumers.reader import ReadBatch, ShardEnded, ShardReader
from consumers.shard_graph import ShardInfo, shard_infos
from consumers.sinks.s3_archive import S3ArchiveSink
from consumers.snapshots import SnapshotMissingError, SnapshotStore

log = logging.getLogger(__name__)

_SHARD_END: Final = Checkpoint(SHARD_END)

DEFAULT_STOP_TIMEOUT_S: Final = 25.0
"""Below ECS's 30 s stopTimeout, leaving the process time to close its clients."""
DEFAULT_FLEET_REFRESH_S: Final = 5.0
TICK_S: Final = 0.5
"""How often the worker compares the coordinator's leases with its running shards."""
RESTART_AFTER_S: Final = 2.0
"""A failed shard task is started again (from its checkpoint) no sooner than this."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    stream: str
    bucket: str
    worker_id: str = field(default_factory=default_worker_id)
    archive_prefix: str = ""
    poll_interval_s: float = 0.5
    policy: CommitPolicy = field(default_factory=CommitPolicy)
    metrics_interval_s: float = 60.0
    metrics_namespace: str = "Clickstream"
    top_cities: int = 20
    privacy: IpPrivacy = field(default_factory=IpPrivacy)
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    failover_s: float = DEFAULT_FAILOVER_S
    """Lease failover time (`consumers.coordinator`): a crashed worker's shards are taken
    within this plus one take interval (half of it)."""
    fleet_refresh_s: float = DEFAULT_FLEET_REFRESH_S
    """How often the other workers' shard snapshots are re-read for the fleet summary."""


@dataclass(slots=True)
class WorkerStats:
    records: int = 0
    commits: int = 0
    shard_failures: int = 0
    last_record_at: float = field(default_factory=time.monotonic)
    """Monotonic time of the last batch handed to a processor (start time before any)."""


@dataclass(frozen=True, slots=True)
class RemoteShard:
    """Another worker's shard as its last durable snapshot says."""

    owner: str | None
    checkpoint: Checkpoint
    state: ShardState
    loaded_at: float
    """Monotonic time the snapshot was read."""


@dataclass(frozen=True, slots=True)
class LeaseReport:
    """What /metrics and /readyz show about this worker's leases (`ConsumerWorker.lease_report`).

    `stats` are the coordinator's counters since start (`held` a gauge, the rest monotonic);
    `millis_behind_latest` is each running shard's lag at its last GetRecords (None before
    the first)."""

    worker_id: str
    healthy: bool
    held: tuple[str, ...]
    pending: tuple[str, ...]
    """Stolen leases renewed but not processed yet (the victim's fence has not passed)."""
    stats: CoordinatorStats
    millis_behind_latest: dict[str, int | None]


class ConsumerWorker:
    """Reads the shards whose leases it holds; `summary()` merges the whole fleet's shards.

    Clients are injected (aiobotocore, owned by the caller) and the constructor does no I/O:
    ``await worker.start()`` ... ``await worker.stop()``, or ``async with worker``.
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        kinesis: Any,
        dynamodb: Any,
        s3: Any,
        cloudwatch: Any | None,
        lease_table: str,
        enricher: Enricher,
    ) -> None:
        self.config = config
        self._kinesis = kinesis
        self._s3 = s3
        self._cloudwatch = cloudwatch
        self.coordinator = LeaseCoordinator(
            LeaseTable(dynamodb, lease_table, config.worker_id),
            CoordinatorConfig(failover_s=config.failover_s),
        )
        self.leases = CoordinatedLeaseTable(self.coordinator)
        """What processors checkpoint through (fenced, with the coordinator's lease)."""
        self.snapshots = SnapshotStore(s3, config.bucket, _state_prefix(config.archive_prefix))
        self.metrics = (
            None if cloudwatch is None else MinuteAtomicSink(cloudwatch, config.metrics_namespace)
        )
        self._enricher = enricher
        self.processors: dict[str, ShardProcessor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ending: set[str] = set()
        """Shards whose task is committing SHARD_END: no longer held, not lost either."""
        self._failed_at: dict[str, float] = {}
        self.ended: dict[str, ShardState] = {}
        """Shards read to their end (by any worker): their state still counts in the windows."""
        self.remote: dict[str, RemoteShard] = {}
        """Shards other workers hold, as of their latest snapshot."""
        self._handed_over: set[tuple[str, str]] = set()
        """(parent, child) pairs whose visitors left the parent's state in `ended`."""
        self._ended_missing: set[str] = set()
        self._stopping = asyncio.Event()
        self._shard_ended = asyncio.Event()
        self._leasing: asyncio.Task[None] | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._top: tuple[float, list[CityKey]] = (float("-inf"), [])
        self.stats = WorkerStats()

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Take this worker's leases and start reading; returns once the first take round and
        fleet refresh have run (so a failure to reach AWS raises here)."""
        if self._scheduler is not None:
            return
        await self.coordinator.take_round(await self._list_shards())
        await self._refresh_fleet()
        self._reconcile()
        self._leasing = asyncio.create_task(
            self.coordinator.run(self._list_shards), name="consumer:leases"
        )
        self._scheduler = asyncio.create_task(self._schedule(), name="consumer:shards")
        if self.metrics is not None:
            self._publisher = asyncio.create_task(
                self.metrics.run(self.config.metrics_interval_s), name="consumer:metrics"
            )

    async def stop(self, *, close_open_minutes: bool = False) -> None:
        """Graceful stop (module docstring); bounded by `stop_timeout_s`."""
        deadline = time.monotonic() + self.config.stop_timeout_s
        self._stopping.set()
        self.coordinator.stop_taking()
        for task in (self._scheduler, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._scheduler = self._publisher = None
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._within(deadline, self._final_commits(close_open_minutes))
        if self.metrics is not None and self.metrics.queued:
            await self._within(deadline, self.metrics.flush())
            await self._within(deadline, self._final_commits(False))  # snapshot the ack cursor
        # Renewals ran through the final commits; now the leases go, so others take them at once.
        log.info("stopped processing %s; evicting", ", ".join(sorted(self.processors)) or "nothing",
                 extra=_when())  # fmt: skip
        await self._within(deadline, self.coordinator.evict_all())
        if self._leasing is not None:
            self._leasing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._leasing
            self._leasing = None
        log.info("consumer stopped: %d records, %d commits", self.stats.records, self.stats.commits)

    async def __aenter__(self) -> ConsumerWorker:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @staticmethod
    async def _within(deadline: float, work: Any) -> None:
        try:
            await asyncio.wait_for(work, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.error("shutdown ran out of time; the rest is left to the next start")
        except Exception:
            log.exception("shutdown step failed; the next start resumes from the checkpoint")

    async def _final_commits(self, close_open_minutes: bool) -> None:
        for processor in list(self.processors.values()):
            if not processor.initialized:
                continue  # its state is a placeholder: committing it would overwrite the real one
            try:
                result = await processor.shutdown_requested(close_open_minutes=close_open_minutes)
            except LeaseLostError:
                processor.lease_lost()
                continue
            if result is not None:
                self.stats.commits += 1

    # ---- what the service shows ---------------------------------------------------------------

    def states(self) -> list[ShardState]:
        """Every shard's state once: ours (while one of ours initializes, its previous
        owner's snapshot stands in), the other workers' latest snapshots, the ended shards."""
        states: list[ShardState] = []
        for shard_id, processor in self.processors.items():
            if processor.initialized:
                states.append(processor.state)
            elif shard_id in self.remote:
                states.append(self.remote[shard_id].state)
        states += [
            remote.state
            for shard_id, remote in self.remote.items()
            if shard_id not in self.processors and shard_id not in self.ended
        ]
        return states + list(self.ended.values())

    def summary(self, window: str = "24h", limit: int | None = None) -> dict[str, Any]:
        """Every shard's state merged (the `GET /api/summary` body), with `fleet` saying
        where each shard's numbers came from (`fleet_sources`)."""
        body = summarize(self.states(), window, limit)
        body["fleet"] = self.fleet_sources()
        return body

    def fleet_sources(self) -> dict[str, Any]:
        """Which shards this summary counts and from where: ``local`` (processed here, up to
        the last record read), ``snapshots`` (held by another worker: its owner, the checkpoint
        whose snapshot was read, seconds since it was read), ``ended`` (read to their end, by
        anyone), ``missing`` (work another worker holds that has not committed yet: its
        records are not in these numbers)."""
        now = time.monotonic()
        local = sorted(s for s, p in self.processors.items() if p.initialized)
        snapshots = {
            shard_id: {
                "owner": remote.owner,
                "checkpoint": remote.checkpoint.sequence_number,
                "age_s": round(now - remote.loaded_at, 1),
            }
            for shard_id, remote in sorted(self.remote.items())
            if shard_id not in local and shard_id not in self.ended
        }
        counted = {*local, *snapshots, *self.ended}
        missing = sorted(
            shard_id
            for shard_id, lease in self.coordinator.table_view.items()
            if shard_id not in counted and not lease.checkpoint.is_shard_end
            and lease.lease_owner not in (None, self.config.worker_id)
        )  # fmt: skip
        return {
            "scope": "fleet",
            "worker_id": self.config.worker_id,
            "local": local,
            "snapshots": snapshots,
            "ended": sorted(self.ended),
            "missing": missing,
        }

    @property
    def millis_behind_latest(self) -> int:
        return max((p.stats.millis_behind_latest or 0 for p in self.processors.values()), default=0)

    @property
    def leases_healthy(self) -> bool:
        """Readiness: the lease table answered within the failover time and every lease we
        hold is inside its fence (`LeaseCoordinator.healthy`). False before the first round."""
        return self.is_running and self.coordinator.healthy

    @property
    def lease_report(self) -> LeaseReport:
        """Leases and lag for /metrics (read-only; safe to read from another thread, every
        field is a fresh copy). Suggested Prometheus names: ``clickstream_leases_held``
        (gauge, `stats.held`), ``clickstream_leases_taken_total``, ``..._stolen_total``,
        ``..._lost_total``, ``..._evicted_total`` (counters), ``clickstream_leases_healthy``
        (gauge 0/1), ``clickstream_consumer_millis_behind_latest{shard}`` (gauge)."""
        coordinator = self.coordinator
        stats = coordinator.stats
        return LeaseReport(
            worker_id=self.config.worker_id,
            healthy=self.leases_healthy,
            held=tuple(sorted(coordinator.held)),
            pending=tuple(sorted(coordinator.pending)),
            stats=CoordinatorStats(**{n: getattr(stats, n) for n in stats.__dataclass_fields__}),
            millis_behind_latest={
                shard_id: processor.stats.millis_behind_latest
                for shard_id, processor in sorted(self.processors.items())
            },
        )

    @property
    def is_running(self) -> bool:
        """Started, and its lease and shard tasks still alive: the service's liveness answer."""
        return all(
            task is not None and not task.done() for task in (self._scheduler, self._leasing)
        )

    def _top_cities(self) -> Collection[CityKey]:
        """The cities with their own CloudWatch series: the last 24 h's top N, refreshed at
        most every few seconds (a summary of every shard costs milliseconds, a commit is more
        frequent than the set changes)."""
        computed_at, cities = self._top
        n = self.config.top_cities
        if time.monotonic() - computed_at > 5.0:
            cities = top_cities(summarize(self.states(), "24h", limit=n), n)
            self._top = (time.monotonic(), cities)
        if len(cities) < n:
            # Fewer cities than places in the top N: any city, even one first seen since (a
            # shard just taken over from another worker brings some), is in the top N.
            return _EveryCity(cities)
        return frozenset(cities)

    # ---- leases and tasks ---------------------------------------------------------------------

    async def _schedule(self) -> None:
        """Follow the coordinator's leases every tick; refresh the fleet's snapshots on their
        interval, and at once when a shard ended (its children's states change hands)."""
        refresh_at = time.monotonic() + self.config.fleet_refresh_s
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shard_ended.wait(), TICK_S)
            ended = self._shard_ended.is_set()
            if ended:
                self._shard_ended.clear()
                self.coordinator.wake()  # children are work now: take them without waiting
            self._reconcile()
            if ended or time.monotonic() >= refresh_at:
                refresh_at = time.monotonic() + self.config.fleet_refresh_s
                try:
                    await self._refresh_fleet()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("reading the fleet's snapshots failed; trying again")

    def _reconcile(self) -> None:
        """Running shards = held shards: reap finished tasks, let go of shards no longer held
        (`lease_lost`, task cancelled: it may not commit), start a processor for each newly
        held shard. No I/O, so no lease changes under it."""
        now = time.monotonic()
        for shard_id in [s for s, t in self._tasks.items() if t.done()]:
            task = self._tasks.pop(shard_id)
            self._ending.discard(shard_id)
            if not task.cancelled() and task.exception() is not None:
                self.stats.shard_failures += 1
                self._failed_at[shard_id] = now
                log.error("%s failed; starting it again from its checkpoint: %r", shard_id,
                          task.exception())  # fmt: skip
                processor = self.processors.pop(shard_id, None)
                if processor is not None and self.metrics is not None:
                    self.metrics.forget(shard_id)
                _log_stopped(shard_id, "failed")
        held = self.coordinator.held
        for shard_id in [s for s in self.processors if s not in held and s not in self._ending]:
            processor = self.processors.pop(shard_id)
            if not processor.lease_is_lost:
                processor.lease_lost()
            task = self._tasks.pop(shard_id, None)
            if task is not None:
                task.cancel()
            _log_stopped(shard_id, "no longer held")
        self.coordinator.lost.clear()
        if self._stopping.is_set():
            return
        for shard_id in sorted(held - self._tasks.keys()):
            if now - self._failed_at.get(shard_id, float("-inf")) < RESTART_AFTER_S:
                continue
            processor = self._processor(self.coordinator.lease(shard_id))
            self.processors[shard_id] = processor
            log.info("%s: processing from %s", shard_id, processor.lease.checkpoint.sequence_number,
                     extra=_when())  # fmt: skip
            self._tasks[shard_id] = asyncio.create_task(
                self._run_shard(processor), name=f"consume:{shard_id}"
            )

    async def _refresh_fleet(self) -> None:
        """Ended shards' final states and the other workers' latest snapshots (named by their
        lease checkpoints in the coordinator's last scan), then hand-overs. Everything is read
        first and applied without an await in between, so no summary sees a child's visitors
        and its parents' copy of them at once."""
        view = dict(self.coordinator.table_view)
        ended: dict[str, ShardState] = {}
        remote: dict[str, RemoteShard] = {}
        for shard_id, lease in sorted(view.items()):
            if lease.checkpoint.is_shard_end:
                if shard_id not in self.ended and shard_id not in self._ended_missing:
                    state = await self._load_ended(shard_id)
                    if state is not None:
                        ended[shard_id] = state
                continue
            if lease.checkpoint.is_sentinel or shard_id in self.processors:
                continue
            known = self.remote.get(shard_id)
            if known is not None and known.checkpoint == lease.checkpoint:
                if known.owner != lease.lease_owner:
                    remote[shard_id] = RemoteShard(
                        lease.lease_owner, known.checkpoint, known.state, known.loaded_at
                    )
                continue
            try:
                state = await self.snapshots.load(shard_id, lease.checkpoint)
            except SnapshotMissingError:
                continue  # its owner committed again meanwhile; the next scan names the new one
            if state is not None:
                remote[shard_id] = RemoteShard(
                    lease.lease_owner, lease.checkpoint, state, time.monotonic()
                )
        # -- applied at once from here: no await below --
        for shard_id, state in ended.items():
            self.ended.setdefault(shard_id, state)
            self._handed_over = {pair for pair in self._handed_over if pair[0] != shard_id}
        self.remote.update(remote)
        for shard_id in [s for s in self.remote if s in self.ended or s not in view]:
            del self.remote[shard_id]
        for shard_id, lease in view.items():
            if self._has_state(shard_id):
                self._hand_over(lease)

    def _has_state(self, shard_id: str) -> bool:
        processor = self.processors.get(shard_id)
        return (
            shard_id in self.ended
            or shard_id in self.remote
            or (processor is not None and processor.initialized)
        )

    def _hand_over(self, child: Lease) -> None:
        """The child's state (inherited, restored, or another worker's snapshot) holds its
        parents' visitors of its range, so the parents' states in `ended` let go of them
        (`consumers.lineage`): each visitor counts in exactly one state of the summary."""
        hash_range = parse_hash_range(child.starting_hash_key, child.ending_hash_key)
        if hash_range is None:
            return
        for parent_id in sorted(child.parent_shard_ids):
            parent = self.ended.get(parent_id)
            if parent is None or (parent_id, child.lease_key) in self._handed_over:
                continue
            moved = release(parent, hash_range)
            self._handed_over.add((parent_id, child.lease_key))
            log.info("%s handed %d visitors over to %s", parent_id, moved, child.lease_key)

    async def _load_ended(self, shard_id: str) -> ShardState | None:
        try:
            return await self.snapshots.load(shard_id, _SHARD_END)
        except Exception as error:
            log.warning("%s ended, but its state cannot be restored: %s", shard_id, error)
            self._ended_missing.add(shard_id)
            return None

    async def _list_shards(self) -> dict[str, ShardInfo]:
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamName": self.config.stream}
        while True:
            response = await self._kinesis.list_shards(**kwargs)
            shards += response["Shards"]
            token = response.get("NextToken")
            if not token:
                return shard_infos(shards)
            kwargs = {"NextToken": token}

    def _processor(self, lease: Lease) -> ShardProcessor:
        archive = S3ArchiveSink(
            self._s3,
            self.config.bucket,
            lease.lease_key,
            self.config.privacy,
            prefix=self.config.archive_prefix,
        )
        return ShardProcessor(
            lease,
            self.leases,
            archive,
            self.snapshots,
            self._enricher,
            metrics=self.metrics,
            cloudwatch=self._cloudwatch,
            top_cities=self._top_cities,
            policy=self.config.policy,
        )

    async def _commit(self, processor: ShardProcessor) -> None:
        result = await processor.commit()
        self.stats.commits += 1
        if result is not None:
            log.info(
                "committed %s at %s-%d: %d records in %d objects, %.2f s",
                processor.shard_id,
                result.position.sequence_number,
                result.position.sub_sequence_number,
                result.archived.records,
                result.archived.objects,
                result.seconds,
            )

    async def _run_shard(self, processor: ShardProcessor) -> None:
        start = await processor.initialize()
        self._hand_over(processor.lease)
        reader = ShardReader(
            self._kinesis,
            self.config.stream,
            processor.shard_id,
            start,
            poll_interval_s=self.config.poll_interval_s,
        )
        tick = min(1.0, processor.policy.seconds)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            async with reader:
                events = aiter(reader)
                fetching: asyncio.Future[Any] | None = None
                while not self._stopping.is_set() and not processor.lease_is_lost:
                    if fetching is None:
                        fetching = asyncio.ensure_future(anext(events))
                    done, _ = await asyncio.wait(
                        {fetching, stopping}, timeout=tick, return_when=asyncio.FIRST_COMPLETED
                    )
                    if fetching in done:
                        try:
                            event = fetching.result()
                        except StopAsyncIteration:
                            return
                        fetching = None
                        if isinstance(event, ReadBatch):
                            for part in _slices(event, processor.policy.records):
                                processor.process_records(part)
                                self.stats.records += len(part.records)
                                self.stats.last_record_at = time.monotonic()
                                if processor.commit_due:
                                    await self._commit(processor)
                                else:  # let renewals and the other shards run between slices
                                    await asyncio.sleep(0)
                                if processor.lease_is_lost:
                                    return
                        elif isinstance(event, ShardEnded):
                            self._ending.add(processor.shard_id)
                            await processor.shard_ended(event, self.leases)
                            self.stats.commits += 1
                            self.ended[processor.shard_id] = processor.state
                            self.processors.pop(processor.shard_id, None)
                            self._shard_ended.set()
                            log.info("%s read to its end; children: %s", processor.shard_id,
                                     ", ".join(event.child_shard_ids) or "none",
                                     extra=_when())  # fmt: skip
                            return
                    if processor.commit_due and not processor.lease_is_lost:
                        await self._commit(processor)
                if fetching is not None:
                    fetching.cancel()
                    with contextlib.suppress(BaseException):
                        await fetching
        except LeaseLostError:
            processor.lease_lost()
            if self.processors.get(processor.shard_id) is processor:
                del self.processors[processor.shard_id]
                _log_stopped(processor.shard_id, "lease lost")
        finally:
            stopping.cancel()


class _EveryCity(Collection[CityKey]):
    """The top-N set while fewer than N cities are known: it contains every city."""

    def __init__(self, known: list[CityKey]) -> None:
        self._known = known

    def __contains__(self, city: object) -> bool:
        return True

    def __iter__(self) -> Iterator[CityKey]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


def _when() -> dict[str, Any]:
    """A log field that orders one shard's events across workers on one host: the wall time
    (the JSON log's own time has whole seconds; the scale-out tests compare these)."""
    return {"at": time.time()}


def _log_stopped(shard_id: str, why: str) -> None:
    log.info("%s: stopped processing: %s", shard_id, why, extra=_when())


def _slices(batch: ReadBatch, size: int) -> list[ReadBatch]:
    """A GetRecords batch (up to 10,000 Kinesis records of hundreds of lines each) cut into
    pieces of at most `size` lines, each with its own last position: the commit policy's record
    count then bounds an archive object and the work a crash repeats, and a checkpoint inside a
    KPL record is what the reader's resume rule expects."""
    records = batch.records
    if len(records) <= size:
        return [batch]
    parts = []
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        last = chunk[-1]
        position = Checkpoint(last.sequence_number, last.sub_sequence_number)
        parts.append(ReadBatch(batch.shard_id, chunk, position, batch.millis_behind_latest))
    return parts


def _state_prefix(archive_prefix: str) -> str:
    stripped = archive_prefix.strip("/")
    return f"{stripped}/" if stripped else ""
