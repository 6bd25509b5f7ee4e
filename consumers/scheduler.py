"""The consumer worker: every shard's lease, one processing task per readable shard, the metrics
publish loop, and a graceful stop. The one place that wires leases, readers and processors.

This is the single-worker scheduler: it takes every lease (whoever held it last: after a crash
that is this worker's former self) and reads every shard whose parents are done
(`consumers.shard_graph`). Fair sharing between workers, renewals and expiry belong to the lease
coordinator that is meant to sit on the same `LeaseTable` verbs.

A shard task is `initialize` -> (`process_records`, commit when due)* -> one end: `shard_ended`
(its children become readable in the next round), `lease_lost`, or the worker's stop. A task
that fails (S3 refused a commit after its retries, the reader gave up) is dropped with its
uncommitted state, and the next round takes the shard again from its checkpoint and snapshot:
the archive's key rule and the state's high-water mark make the replay harmless.

Stopping (SIGTERM, DESIGN.md §4): stop fetching, let each task finish the batch in hand, commit
every shard (publishing the still-open minutes when asked: a batch run's end), give CloudWatch
what it was handed, commit again so the snapshots carry the acknowledged cursor, and evict our
leases, all within `stop_timeout_s` (ECS's 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final

from consumers.archive_format import IpPrivacy
from consumers.checkpoint import CommitPolicy, MinuteAtomicSink
from consumers.counters import CityKey, ShardState, summarize, top_cities
from consumers.enrich import Enricher
from consumers.leases import SHARD_END, Checkpoint, Lease, LeaseError, LeaseLostError, LeaseTable
from consumers.lineage import parse_hash_range, release
from consumers.processor import ShardProcessor
from consumers.reader import ReadBatch, ShardEnded, ShardReader
from consumers.shard_graph import ShardInfo, readable_shards, shard_infos
from consumers.sinks.s3_archive import S3ArchiveSink
from consumers.snapshots import SnapshotStore

log = logging.getLogger(__name__)

_SHARD_END: Final = Checkpoint(SHARD_END)

DEFAULT_STOP_TIMEOUT_S: Final = 25.0
"""Below ECS's 30 s stopTimeout, leaving the process time to close its clients."""


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
    discovery_interval_s: float = 5.0
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S


@dataclass(slots=True)
class WorkerStats:
    records: int = 0
    commits: int = 0
    shard_failures: int = 0
    last_record_at: float = field(default_factory=time.monotonic)
    """Monotonic time of the last batch handed to a processor (start time before any)."""


class ConsumerWorker:
    """Reads every shard of one stream; `summary()` merges what every shard counted.

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
        self.leases = LeaseTable(dynamodb, lease_table, config.worker_id)
        self.snapshots = SnapshotStore(s3, config.bucket, _state_prefix(config.archive_prefix))
        self.metrics = (
            None if cloudwatch is None else MinuteAtomicSink(cloudwatch, config.metrics_namespace)
        )
        self._enricher = enricher
        self.processors: dict[str, ShardProcessor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.ended: dict[str, ShardState] = {}
        """Shards read to their end: their state still counts in the windows."""
        self._handed_over: set[tuple[str, str]] = set()
        """(parent, child) pairs whose visitors left the parent's state in `ended`."""
        self._ended_missing: set[str] = set()
        self._stopping = asyncio.Event()
        self._shard_ended = asyncio.Event()
        self._coordinator: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._top: tuple[float, list[CityKey]] = (float("-inf"), [])
        self.stats = WorkerStats()

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the leases and start reading; returns once the first round has run."""
        if self._coordinator is not None:
            return
        await self._discover()
        self._coordinator = asyncio.create_task(self._coordinate(), name="consumer:leases")
        if self.metrics is not None:
            self._publisher = asyncio.create_task(
                self.metrics.run(self.config.metrics_interval_s), name="consumer:metrics"
            )

    async def stop(self, *, close_open_minutes: bool = False) -> None:
        """Graceful stop (module docstring); bounded by `stop_timeout_s`."""
        deadline = time.monotonic() + self.config.stop_timeout_s
        self._stopping.set()
        for task in (self._coordinator, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._coordinator = self._publisher = None
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
        for processor in list(self.processors.values()):
            if not processor.lease_is_lost:
                with contextlib.suppress(LeaseError, Exception):
                    await self._within(deadline, self.leases.evict(processor.lease))
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
            try:
                result = await processor.shutdown_requested(close_open_minutes=close_open_minutes)
            except LeaseLostError:
                processor.lease_lost()
                continue
            if result is not None:
                self.stats.commits += 1

    # ---- what the service shows ---------------------------------------------------------------

    def states(self) -> list[ShardState]:
        return [p.state for p in self.processors.values()] + list(self.ended.values())

    def summary(self, window: str = "24h", limit: int | None = None) -> dict[str, Any]:
        """Every shard's state merged (the `GET /api/summary` body)."""
        return summarize(self.states(), window, limit)

    @property
    def millis_behind_latest(self) -> int:
        return max((p.stats.millis_behind_latest or 0 for p in self.processors.values()), default=0)

    @property
    def is_running(self) -> bool:
        """Started and its lease/discovery task still alive: the service's liveness answer."""
        return self._coordinator is not None and not self._coordinator.done()

    def _top_cities(self) -> Collection[CityKey]:
        """The cities with their own CloudWatch series: the last 24 h's top N, refreshed at
        most every few seconds (a summary of every shard costs milliseconds, a commit is more
        frequent than the set changes)."""
        computed_at, cities = self._top
        if time.monotonic() - computed_at > 5.0:
            n = self.config.top_cities
            cities = top_cities(self.summary("24h", limit=n), n)
            self._top = (time.monotonic(), cities)
        return frozenset(cities)

    # ---- leases and tasks ---------------------------------------------------------------------

    async def _coordinate(self) -> None:
        while not self._stopping.is_set():
            # A shard that ended wakes the loop: its children are readable now, not a round later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._shard_ended.wait(), self.config.discovery_interval_s)
            self._shard_ended.clear()
            try:
                await self._discover()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shard discovery failed; trying again")

    async def _discover(self) -> None:
        """Lease rows for every shard, then a task for every readable shard not running."""
        for shard_id in [s for s, t in self._tasks.items() if t.done()]:
            task = self._tasks.pop(shard_id)
            if not task.cancelled() and task.exception() is not None:
                self.stats.shard_failures += 1
                log.error("%s failed; taking it again from its checkpoint: %r", shard_id,
                          task.exception())  # fmt: skip
                processor = self.processors.pop(shard_id, None)
                if processor is not None and self.metrics is not None:
                    self.metrics.forget(shard_id)
        shards = await self._list_shards()
        for info in shards.values():
            await self.leases.create_lease(
                info.shard_id, info.parent_shard_ids, info.starting_hash_key, info.ending_hash_key
            )
        leases = {lease.lease_key: lease for lease in await self.leases.list_leases()}
        at_end = {key for key, lease in leases.items() if lease.checkpoint.is_shard_end}
        for shard_id in sorted(at_end - self.ended.keys() - self._ended_missing):
            await self._restore_ended(shard_id)
        for shard_id in [*self.ended, *(s for s, p in self.processors.items() if p.initialized)]:
            if shard_id in leases:
                self._hand_over(leases[shard_id])
        for shard_id in readable_shards(shards, at_end):
            if shard_id in self._tasks or self._stopping.is_set() or shard_id not in leases:
                continue
            try:
                lease = await self.leases.take(leases[shard_id])
            except LeaseLostError:
                continue  # changed under us; the next round sees the new row
            processor = self._processor(lease)
            self.processors[shard_id] = processor
            self._tasks[shard_id] = asyncio.create_task(
                self._run_shard(processor), name=f"consume:{shard_id}"
            )

    def _hand_over(self, child: Lease) -> None:
        """The child's state (inherited or restored) holds its parents' visitors of its range,
        so the parents' states in `ended` let go of them (`consumers.lineage`): each visitor
        counts in exactly one state of the summary."""
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

    async def _restore_ended(self, shard_id: str) -> None:
        try:
            state = await self.snapshots.load(shard_id, _SHARD_END)
        except Exception as error:
            log.warning("%s ended, but its state cannot be restored: %s", shard_id, error)
            self._ended_missing.add(shard_id)
            return
        if state is not None:
            self.ended[shard_id] = state
            self._handed_over = {pair for pair in self._handed_over if pair[0] != shard_id}

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
                while not self._stopping.is_set():
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
                        elif isinstance(event, ShardEnded):
                            await processor.shard_ended(event, self.leases)
                            self.stats.commits += 1
                            self.ended[processor.shard_id] = processor.state
                            self.processors.pop(processor.shard_id, None)
                            self._shard_ended.set()
                            log.info("%s read to its end; children: %s", processor.shard_id,
                                     ", ".join(event.child_shard_ids) or "none")  # fmt: skip
                            return
                    if processor.commit_due:
                        await self._commit(processor)
                if fetching is not None:
                    fetching.cancel()
                    with contextlib.suppress(BaseException):
                        await fetching
        except LeaseLostError:
            processor.lease_lost()
            self.processors.pop(processor.shard_id, None)
        finally:
            stopping.cancel()


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
