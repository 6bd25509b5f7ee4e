"""The lease coordinator: which shards this worker may process, shared fairly with the other
workers on the same KCL-format lease table (DESIGN.md §4). The KCL's LeaseTaker and LeaseRenewer
in one asyncio object; the decisions themselves are pure functions in `consumers.lease_decisions`.

Two rounds, each a few DynamoDB calls, both run by `run()` (or called one by one in tests):

- **renew** (every `renew_interval_s`): bump the counter of every lease we hold, conditional on
  owner = us and the counter we hold. A failed condition means another worker took it: lost.
- **take** (every `take_interval_s`): create rows for shards ListShards lists that have none
  (discovery, conditional puts, parents first), scan the table, judge expiry on our own clock,
  then take available leases up to our fair share, or steal one (`lease_decisions`).

Self-fencing. A worker must stop using a lease *before* anyone else could take it. Observers
date a counter change no earlier than when the write was sent, and judge a lease expired only
``failover_s`` after that; we date our renewals by the clock *before* the write is sent, and
stop (`held_valid` is False) ``fencing_margin_s`` before that renewal is ``failover_s`` old. So,
with clocks that tick at the same rate, the previous owner has fenced itself before a taker
acts, without any clocks being compared. The margin covers what runs after a fencing check: the
processor checks `held_valid` before a commit's side effects, and the commit itself goes through
`checkpoint` here, which checks again and is conditional on the counter.

A stolen lease is not expired, so its victim has not fenced: it learns of the steal only at its
next renew. The stealer therefore holds a stolen lease as *pending*: it renews it, but reports
it in `held` (and lets it be checkpointed) only ``failover_s`` after the steal landed, when the
victim's last successful renewal is certainly older than the victim's own fencing limit. No two
workers ever report the same shard in `held` at once; a rebalanced shard idles for the failover
time, the price of that guarantee.

Every write to a held lease (renew, checkpoint, shard end, evict) goes through this object
under the shard's lock, using the one current `Lease` (the fencing token): a checkpoint bumps
the counter just as a renewal does, so two writers with their own copies would fence each other.

The scheduler's side (wiring):

1. ``coordinator = LeaseCoordinator(lease_table)``; ``task = create_task(coordinator.run(
   list_shards))`` where `list_shards` returns ListShards as `ShardInfo`s (discovery, and what
   tells a trimmed parent from an undiscovered one);
2. each tick, compare `coordinator.held` with the running shard tasks: start a processor for a
   new shard with ``coordinator.lease(shard_id)``; call ``processor.lease_lost()`` for a running
   shard no longer in `held` (`lost` tells which were taken from us);
3. before a commit's side effects, ``coordinator.held_valid(shard_id)``; checkpoints through
   ``coordinator.checkpoint`` / ``coordinator.mark_shard_end`` (or `CoordinatedLeaseTable`,
   which a `ShardCommitter` accepts in place of the `LeaseTable`);
4. on SIGTERM: ``coordinator.stop_taking()`` (no new leases; renewals go on, so the final
   checkpoints are not fenced however long the drain takes), make the final checkpoints,
   ``await coordinator.evict_all()`` so the other workers take the shards at once instead of
   after the failover time, and only then cancel `task`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from consumers.lease_decisions import ExpiryTracker, TakePlan, discovery_order, plan_takes
from consumers.leases import Lease, LeaseLostError, LeaseTable
from consumers.shard_graph import ShardInfo

log = logging.getLogger(__name__)

DEFAULT_FAILOVER_S: Final = 10.0
"""The KCL's default failoverTimeMillis."""


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """Timings, all on the worker's own monotonic clock.

    Defaults follow the KCL's proportions: renew three times per failover time; fence a third
    of the failover time early, so one failed renewal is survived and two are not; take twice
    per failover time, so a crashed worker's shards are taken within failover + one interval.
    """

    failover_s: float = DEFAULT_FAILOVER_S
    renew_interval_s: float | None = None
    take_interval_s: float | None = None
    fencing_margin_s: float | None = None

    @property
    def renew_every_s(self) -> float:
        return self.renew_interval_s if self.renew_interval_s is not None else self.failover_s / 3

    @property
    def take_every_s(self) -> float:
        return self.take_interval_s if self.take_interval_s is not None else self.failover_s / 2

    @property
    def margin_s(self) -> float:
        return self.fencing_margin_s if self.fencing_margin_s is not None else self.failover_s / 3

    def __post_init__(self) -> None:
        if self.failover_s <= 0:
            raise ValueError("failover_s must be positive")
        if not 0 < self.margin_s < self.failover_s:
            raise ValueError("the fencing margin must be above 0 and below the failover time")
        if self.renew_every_s >= self.failover_s - self.margin_s:
            raise ValueError("renew more often than the fencing limit, or every lease is fenced")


@dataclass(slots=True)
class CoordinatorStats:
    """Counters for /metrics (`held` is a gauge, refreshed after every round and write)."""

    held: int = 0
    taken: int = 0
    """Unowned or expired leases taken."""
    stolen: int = 0
    """Leases stolen from other workers (fair-share rebalancing)."""
    lost: int = 0
    """Leases we stopped holding without giving them up: another worker took them, or we
    fenced ourselves because renewals failed."""
    evicted: int = 0
    ended: int = 0
    renewals: int = 0
    renew_errors: int = 0
    """Renewals that failed for another reason than a lost condition (the table unreachable)."""
    take_failures: int = 0
    """Takes and steals that lost the race (another worker's write came first)."""
    created: int = 0
    """Lease rows this worker created for newly discovered shards."""


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one take round did."""

    plan: TakePlan
    created: tuple[str, ...] = ()
    taken: tuple[str, ...] = ()
    stolen: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()


@dataclass(slots=True)
class _Held:
    lease: Lease
    renewed_at: float
    """Our clock just before the last successful write to the row was sent."""
    valid_from: float
    """When processing may start: at once for a taken lease, after the failover time for a
    stolen one (module docstring)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LeaseCoordinator:
    """Takes, renews, steals and evicts this worker's leases (module docstring).

    The table and the clock are injected (a fake clock in tests); the constructor does no I/O.
    """

    def __init__(
        self,
        table: LeaseTable,
        config: CoordinatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.config = config or CoordinatorConfig()
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._expiry = ExpiryTracker(self.config.failover_s)
        self._listed: frozenset[str] | None = None
        self.lost: set[str] = set()
        """Shards taken from us (or fenced) since the scheduler last cleared this set."""
        self.last_scan_at: float | None = None
        self.table_view: dict[str, Lease] = {}
        """Every row as of the last take round's scan (the fleet view: who holds what, and
        the checkpoint that names each shard's latest snapshot)."""
        self._former_life: set[str] | None = None
        """Rows naming us at our first scan: a previous process with our worker id left
        them (crashed), so nobody else can be working on them and they are ours at once."""
        self._wake = asyncio.Event()
        self.taking = True
        """False after `stop_taking`: rounds still scan and notice losses, but take nothing."""
        self.stats = CoordinatorStats()

    @property
    def worker_id(self) -> str:
        return self.table.owner

    # ---- what the scheduler reads -------------------------------------------------------------

    def held_valid(self, shard_id: str) -> bool:
        """May we process (and commit) `shard_id` right now? Held, past its steal wait, and its
        last renewal recent enough that nobody can have judged it expired (self-fencing)."""
        held = self._held.get(shard_id)
        if held is None:
            return False
        now = self._clock()
        return now >= held.valid_from and self._within_fence(held, now)

    @property
    def held(self) -> frozenset[str]:
        """The shards this worker may process now."""
        return frozenset(shard for shard in self._held if self.held_valid(shard))

    @property
    def pending(self) -> frozenset[str]:
        """Stolen leases we renew but may not process yet."""
        now = self._clock()
        return frozenset(shard for shard, held in self._held.items() if now < held.valid_from)

    @property
    def owned(self) -> frozenset[str]:
        """Every lease we hold a current copy of, processable or not."""
        return frozenset(self._held)

    def lease(self, shard_id: str) -> Lease:
        """The current row (the fencing token) of a lease we hold; KeyError if we do not."""
        return self._held[shard_id].lease

    @property
    def healthy(self) -> bool:
        """Readiness: the table answered a scan within the failover time, and every lease we
        hold is within its fencing limit (a worker that cannot renew is not ready)."""
        now = self._clock()
        if self.last_scan_at is None or now - self.last_scan_at > self.config.failover_s:
            return False
        return all(self._within_fence(held, now) for held in self._held.values())

    # ---- the renew round ----------------------------------------------------------------------

    async def renew_leases(self) -> list[str]:
        """Renew every lease we hold; returns the shards lost in this round."""
        shards = list(self._held)
        results = await asyncio.gather(*(self._renew(shard) for shard in shards))
        self._refresh_gauge()
        return [shard for shard, kept in zip(shards, results, strict=True) if not kept]

    async def _renew(self, shard_id: str) -> bool:
        held = self._held.get(shard_id)
        if held is None:
            return True
        async with held.lock:
            if self._held.get(shard_id) is not held:
                return True  # evicted or ended while we waited for the lock
            sent_at = self._clock()
            if not self._within_fence(held, sent_at):
                self._drop_lost(shard_id, "renewals failed for too long: fenced")
                return False
            try:
                held.lease = await self.table.renew(held.lease)
            except LeaseLostError:
                self._drop_lost(shard_id, "taken by another worker")
                return False
            except Exception as error:  # the table unreachable: the fence decides, later
                self.stats.renew_errors += 1
                log.warning("%s: renewal failed (%s); fenced if this lasts", shard_id, error)
                return True
            held.renewed_at = sent_at
            self.stats.renewals += 1
            return True

    # ---- the take round -----------------------------------------------------------------------

    async def take_round(self, shards: Mapping[str, ShardInfo] | None = None) -> RoundResult:
        """Discovery (when given ListShards' shards), one scan, then take or steal.

        Without `shards`, the listing from the last call decides whether a parent whose row is
        gone was trimmed (finished) or not discovered yet.
        """
        leases = await self._scan()
        created: list[str] = []
        if shards is not None:
            self._listed = frozenset(shards)
            created = await self._create_missing(shards, leases)
            if created:
                leases = await self._scan()
        now = self._clock()
        self._expiry.observe(leases.values(), now)
        lost = self._notice_lost(leases, now)
        plan = plan_takes(leases, self._available(leases, now), self.worker_id, self._listed)
        if not self.taking:
            plan = TakePlan(plan.target, plan.workers)
        taken = [shard for shard in plan.take if await self._take(leases[shard])]
        stolen = (
            [plan.steal] if plan.steal is not None and await self._steal(leases[plan.steal]) else []
        )
        if len(taken) < len(plan.take) or (plan.steal is not None and not stolen):
            # Another worker's write came first (survivors of a crash all go for the oldest
            # expired lease): plan again from a fresh scan now, not a take interval later.
            self._wake.set()
        self._refresh_gauge()
        return RoundResult(plan, tuple(created), tuple(taken), tuple(stolen), tuple(lost))

    async def _scan(self) -> dict[str, Lease]:
        leases = {lease.lease_key: lease for lease in await self.table.list_leases()}
        self.last_scan_at = self._clock()
        self.table_view = leases
        return leases

    def _available(self, leases: Mapping[str, Lease], now: float) -> frozenset[str]:
        """Expired leases, plus rows our former life left (`_former_life`): a restart with
        the same worker id resumes at once instead of after the failover time. Only the
        first scan decides what the former life left; a lease we lose later is ours again
        only once expired, like anyone's."""
        if self._former_life is None:
            self._former_life = {
                key for key, lease in leases.items() if lease.lease_owner == self.worker_id
            } - self._held.keys()
        me = self.worker_id
        self._former_life = {
            key
            for key in self._former_life - self._held.keys()
            if (row := leases.get(key)) is not None and row.lease_owner == me
        }
        return self._expiry.expired(now) | self._former_life

    async def _create_missing(
        self, shards: Mapping[str, ShardInfo], leases: Mapping[str, Lease]
    ) -> list[str]:
        """Rows for listed shards without one, parents first; a conditional put, so a row
        another worker created (or checkpointed) meanwhile is never overwritten."""
        missing = [shard for shard in shards if shard not in leases]
        parents = {shard: info.parent_shard_ids for shard, info in shards.items()}
        created = []
        for shard_id in discovery_order(missing, parents):
            info = shards[shard_id]
            if await self.table.create_lease(
                shard_id, info.parent_shard_ids, info.starting_hash_key, info.ending_hash_key
            ):
                created.append(shard_id)
        self.stats.created += len(created)
        return created

    def _notice_lost(self, leases: Mapping[str, Lease], now: float) -> list[str]:
        """Held leases the table says are someone else's (or gone), or past their fence: lost,
        without waiting for the next renewal. Dropping fenced ones before planning also means
        we never "take" a lease we still hold (an expired one of ours is always fenced: we saw
        its counter no earlier than we sent the write that set it). Leases with a write of ours
        in flight are left to that write."""
        lost = []
        for shard_id, held in list(self._held.items()):
            if held.lock.locked():
                continue
            row = leases.get(shard_id)
            if row is None or row.lease_owner != self.worker_id:
                self._drop_lost(shard_id, "the table names another owner")
            elif not self._within_fence(held, now):
                self._drop_lost(shard_id, "renewals failed for too long: fenced")
            else:
                continue
            lost.append(shard_id)
        return lost

    async def _take(self, lease: Lease) -> bool:
        sent_at = self._clock()
        try:
            taken = await self.table.take(lease)
        except LeaseLostError:
            self.stats.take_failures += 1
            return False
        self._held[lease.lease_key] = _Held(taken, renewed_at=sent_at, valid_from=sent_at)
        self.lost.discard(lease.lease_key)
        self.stats.taken += 1
        log.info("took %s (from %s)", lease.lease_key, lease.lease_owner or "nobody")
        return True

    async def _steal(self, lease: Lease) -> bool:
        sent_at = self._clock()
        try:
            stolen = await self.table.steal(lease)
        except LeaseLostError:
            self.stats.take_failures += 1
            return False
        landed_at = self._clock()
        self._held[lease.lease_key] = _Held(
            stolen, renewed_at=sent_at, valid_from=landed_at + self.config.failover_s
        )
        self.lost.discard(lease.lease_key)
        self.stats.stolen += 1
        log.info("stole %s from %s for a fair share", lease.lease_key, lease.lease_owner)
        return True

    # ---- writes for the processor -------------------------------------------------------------

    async def checkpoint(
        self, shard_id: str, sequence_number: str, sub_sequence_number: int
    ) -> Lease:
        """`LeaseTable.checkpoint` with the current lease, if we may still write it."""
        return await self._write(
            shard_id,
            lambda lease: self.table.checkpoint(lease, sequence_number, sub_sequence_number),
        )

    async def mark_shard_end(self, shard_id: str, child_shard_ids: Iterable[str]) -> Lease:
        """`LeaseTable.mark_shard_end`; the lease is finished then, so we stop holding it."""
        lease = await self._write(
            shard_id, lambda lease: self.table.mark_shard_end(lease, child_shard_ids)
        )
        self._held.pop(shard_id, None)
        self.stats.ended += 1
        self._refresh_gauge()
        return lease

    async def _write(self, shard_id: str, write: Callable[[Lease], Awaitable[Lease]]) -> Lease:
        held = self._held.get(shard_id)
        if held is None:
            raise LeaseLostError(f"{self.worker_id!r} does not hold {shard_id}")
        async with held.lock:
            if self._held.get(shard_id) is not held:
                raise LeaseLostError(f"{shard_id}: lost while the write waited")
            sent_at = self._clock()
            if not self._within_fence(held, sent_at):
                self._drop_lost(shard_id, "renewals failed for too long: fenced")
                raise LeaseLostError(f"{shard_id}: fenced; another worker may take it now")
            if sent_at < held.valid_from:
                raise LeaseLostError(f"{shard_id}: stolen, not ours to write until its wait ends")
            try:
                held.lease = await write(held.lease)
            except LeaseLostError:
                self._drop_lost(shard_id, "a write found the row changed")
                raise
            held.renewed_at = sent_at
            return held.lease

    # ---- giving leases up ---------------------------------------------------------------------

    def stop_taking(self) -> None:
        """The worker is stopping: take and steal nothing more (renewals go on until the task
        running `run` is cancelled, so the leases stay ours through the final checkpoints)."""
        self.taking = False

    async def evict(self, shard_id: str) -> bool:
        """Give `shard_id` up (graceful stop, after its final checkpoint): it leaves `held`
        first, then the row is made unowned, so another worker takes it at once. False if the
        row had already changed (nothing to give up).

        A stolen lease still pending is only dropped, not made unowned: its victim may not
        have noticed the steal yet, and an unowned row would be taken at once by a third
        worker while the victim still processes it. Left alone, it expires after the failover
        time, by when the victim has fenced itself."""
        held = self._held.get(shard_id)
        if held is None:
            return False
        async with held.lock:
            if self._held.pop(shard_id, None) is not held:
                return False
            self._refresh_gauge()
            if self._clock() < held.valid_from:
                log.info("%s: dropped while its steal was pending; it expires", shard_id)
                return False
            try:
                await self.table.evict(held.lease)
            except LeaseLostError:
                return False
            self.stats.evicted += 1
            return True

    async def evict_all(self) -> int:
        """Evict every lease we hold; returns how many rows were given up."""
        results = await asyncio.gather(
            *(self.evict(shard) for shard in list(self._held)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("eviction failed; that lease expires after the failover time: %s",
                            result)  # fmt: skip
        return sum(1 for result in results if result is True)

    # ---- running ------------------------------------------------------------------------------

    async def run(
        self, list_shards: Callable[[], Awaitable[Mapping[str, ShardInfo]]] | None = None
    ) -> None:
        """Both rounds on their intervals until cancelled. A failed round is logged and tried
        again; the fence keeps a worker that cannot reach the table from processing."""
        await asyncio.gather(self._renew_loop(), self._take_loop(list_shards))

    async def _renew_loop(self) -> None:
        """Rounds start every `renew_every_s` on the clock, not that long after the previous
        round ended: with a slow table (a loaded endpoint answering in a second) sleeping
        after each round would stretch the period by the round's latency and fence every
        lease although every renewal succeeded."""
        due = self._clock() + self.config.renew_every_s
        while True:
            await asyncio.sleep(max(0.0, due - self._clock()))
            due = max(due + self.config.renew_every_s, self._clock())
            try:
                await self.renew_leases()
            except Exception:
                log.exception("lease renewal round failed")

    def wake(self) -> None:
        """Run the next take round (with discovery) now rather than at its interval: a shard
        ended, so its children may have become work."""
        self._wake.set()

    async def _take_loop(
        self, list_shards: Callable[[], Awaitable[Mapping[str, ShardInfo]]] | None
    ) -> None:
        while True:
            try:
                shards = None if list_shards is None else await list_shards()
                await self.take_round(shards)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease take round failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.take_every_s)
            self._wake.clear()

    # ---- internals ----------------------------------------------------------------------------

    def _within_fence(self, held: _Held, now: float) -> bool:
        return now - held.renewed_at < self.config.failover_s - self.config.margin_s

    def _drop_lost(self, shard_id: str, why: str) -> None:
        if self._held.pop(shard_id, None) is not None:
            self.lost.add(shard_id)
            self.stats.lost += 1
            log.warning("lost the lease of %s: %s", shard_id, why)
        self._refresh_gauge()

    def _refresh_gauge(self) -> None:
        self.stats.held = len(self.held)


class CoordinatedLeaseTable(LeaseTable):
    """The `LeaseTable` a `ShardCommitter` writes through when a coordinator holds the leases.

    `checkpoint` and `mark_shard_end` go through the coordinator, with its current lease for
    the shard: the `lease` argument only names the shard (the committer's copy has an older
    counter as soon as a renewal lands, which would otherwise look like a lost lease). The
    other verbs are the plain table's; a held lease is renewed and evicted by the coordinator.
    """

    def __init__(self, coordinator: LeaseCoordinator) -> None:
        table = coordinator.table
        super().__init__(table.dynamodb, table.table_name, table.owner)
        self.coordinator = coordinator

    def may_write(self, shard_id: str) -> bool:
        """Held, past a steal's wait, and inside the fence (`LeaseCoordinator.held_valid`)."""
        return self.coordinator.held_valid(shard_id)

    async def checkpoint(
        self, lease: Lease, sequence_number: str, sub_sequence_number: int
    ) -> Lease:
        return await self.coordinator.checkpoint(
            lease.lease_key, sequence_number, sub_sequence_number
        )

    async def mark_shard_end(self, lease: Lease, child_shard_ids: Iterable[str]) -> Lease:
        return await self.coordinator.mark_shard_end(lease.lease_key, child_shard_ids)
