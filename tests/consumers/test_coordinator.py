"""LeaseCoordinator on moto's DynamoDB with a fake monotonic clock: every write is the real
conditional UpdateItem; only time is simulated. The pure rules are in test_lease_decisions.py.

The safety property checked throughout: no two coordinators report the same shard in `held` at
the same moment (`assert_disjoint` after every call and every tick of the clock).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from consumers.coordinator import (
    CoordinatedLeaseTable,
    CoordinatorConfig,
    LeaseCoordinator,
)
from consumers.leases import Checkpoint, LeaseLostError, LeaseTable
from consumers.shard_graph import ShardInfo
from service.aws import aws_client
from service.resources import ensure_lease_table

TABLE = "test-coordinator-leases"
SEQ = "49590338271490256608559692538361571095921575989136588801"
FAILOVER = 9.0
CONFIG = CoordinatorConfig(failover_s=FAILOVER, renew_interval_s=3.0, fencing_margin_s=3.0)
STEP = 1.0
"""Fake seconds per simulated round: every coordinator renews and runs a take round."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def shard_ids(n: int) -> list[str]:
    return [f"shardId-{i:012d}" for i in range(n)]


def infos(*shards: tuple[str, tuple[str, ...]]) -> dict[str, ShardInfo]:
    return {s: ShardInfo(s, parents, "0", "1", closed=False) for s, parents in shards}


def flat(n: int) -> dict[str, ShardInfo]:
    return infos(*((s, ()) for s in shard_ids(n)))


@pytest.fixture
async def dynamodb(aws: str) -> AsyncIterator[Any]:
    async with aws_client("dynamodb") as client:
        await ensure_lease_table(client, TABLE)
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Fleet:
    """Coordinators sharing one table and one fake clock; `step` runs one round of each live
    one and checks the safety property after every call."""

    def __init__(self, dynamodb: Any, clock: FakeClock, shards: dict[str, ShardInfo]) -> None:
        self.dynamodb = dynamodb
        self.clock = clock
        self.shards = shards
        self.workers: dict[str, LeaseCoordinator] = {}
        self.crashed: set[str] = set()

    def add(self, name: str) -> LeaseCoordinator:
        coordinator = LeaseCoordinator(
            LeaseTable(self.dynamodb, TABLE, owner=name), CONFIG, clock=self.clock
        )
        self.workers[name] = coordinator
        return coordinator

    def assert_disjoint(self) -> None:
        for (a, ca), (b, cb) in itertools.combinations(self.workers.items(), 2):
            both = ca.held & cb.held
            assert not both, f"{a} and {b} both hold {sorted(both)} at t={self.clock.now}"

    async def step(self, order: Iterable[str] | None = None) -> None:
        for name in order or sorted(self.workers):
            if name in self.crashed:
                continue
            coordinator = self.workers[name]
            await coordinator.renew_leases()
            self.assert_disjoint()
            await coordinator.take_round(self.shards)
            self.assert_disjoint()
        self.clock.advance(STEP)
        self.assert_disjoint()

    def held_counts(self) -> dict[str, int]:
        return {name: len(c.held) for name, c in self.workers.items() if name not in self.crashed}

    async def owners(self) -> dict[str, int]:
        rows = await LeaseTable(self.dynamodb, TABLE, owner="observer").list_leases()
        counts: dict[str, int] = {}
        for row in rows:
            counts[str(row.lease_owner)] = counts.get(str(row.lease_owner), 0) + 1
        return counts

    async def run_until(self, done: Any, max_rounds: int) -> int:
        for round_number in range(1, max_rounds + 1):
            await self.step()
            if await done():
                return round_number
        raise AssertionError(f"not settled in {max_rounds} rounds: held {self.held_counts()}")


def settled(fleet: Fleet, expected: list[int]) -> Any:
    async def check() -> bool:
        return sorted(fleet.held_counts().values(), reverse=True) == expected

    return check


def test_config_keeps_renewals_inside_the_fence() -> None:
    default = CoordinatorConfig()
    assert default.renew_every_s < default.failover_s - default.margin_s
    assert default.take_every_s <= default.failover_s
    with pytest.raises(ValueError):
        CoordinatorConfig(failover_s=9.0, renew_interval_s=6.0, fencing_margin_s=3.0)
    with pytest.raises(ValueError):
        CoordinatorConfig(failover_s=9.0, fencing_margin_s=9.0)
    with pytest.raises(ValueError):
        CoordinatorConfig(failover_s=0.0)


# ---- one coordinator: take, renew, fence, write, evict -----------------------------------------


@pytest.mark.integration
async def test_discovery_creates_every_listed_shard_once_and_takes_them(
    dynamodb: Any, clock: FakeClock
) -> None:
    a = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    b = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "b"), CONFIG, clock=clock)
    shards = flat(4)
    first = await a.take_round(shards)
    assert first.created == tuple(shard_ids(4)) and first.taken == tuple(shard_ids(4))
    assert a.held == set(shard_ids(4)) and a.stats.taken == 4 and a.stats.held == 4
    assert a.healthy and not b.healthy  # b has not reached the table yet
    lease = await a.checkpoint(shard_ids(4)[0], SEQ, 3)
    second = await b.take_round(shards)  # the rows exist: nothing created, nothing overwritten
    assert second.created == () and b.stats.created == 0
    row = await a.table.get(shard_ids(4)[0])
    assert row is not None and row.checkpoint == Checkpoint(SEQ, 3) == lease.checkpoint


@pytest.mark.integration
async def test_renewals_keep_a_lease_and_others_never_judge_it_expired(
    dynamodb: Any, clock: FakeClock
) -> None:
    fleet = Fleet(dynamodb, clock, flat(1))
    a, b = fleet.add("a"), fleet.add("b")
    await a.take_round(fleet.shards)
    counter = a.lease(shard_ids(1)[0]).lease_counter
    for _ in range(int(4 * FAILOVER)):
        await fleet.step()
    assert a.held == set(shard_ids(1)) and b.held == set() and b.owned == set()
    assert a.lease(shard_ids(1)[0]).lease_counter > counter
    assert a.stats.lost == 0 and b.stats.taken == 0 and b.stats.stolen == 0


@pytest.mark.integration
async def test_a_worker_that_stops_renewing_fences_itself_before_its_lease_is_taken(
    dynamodb: Any, clock: FakeClock
) -> None:
    fleet = Fleet(dynamodb, clock, flat(1))
    a, b = fleet.add("a"), fleet.add("b")
    shard = shard_ids(1)[0]
    await a.take_round(fleet.shards)
    await b.take_round(fleet.shards)  # b first sees a's lease now
    fleet.crashed.add("a")  # a hangs: it neither renews nor scans, but still answers `held`
    fenced_at = taken_at = None
    for _ in range(int(2 * FAILOVER)):
        await fleet.step()
        if fenced_at is None and not a.held_valid(shard):
            fenced_at = clock.now
        if taken_at is None and shard in b.held:
            taken_at = clock.now
    assert fenced_at is not None and taken_at is not None
    assert fenced_at - 1000.0 <= FAILOVER - CONFIG.margin_s
    assert fenced_at < taken_at <= 1000.0 + FAILOVER + 2 * STEP
    assert not a.healthy
    with pytest.raises(LeaseLostError):
        await a.checkpoint(shard, SEQ, 0)  # fenced: refused before any write
    assert shard in a.lost and a.stats.lost == 1
    assert b.stats.taken == 1


@pytest.mark.integration
async def test_a_lease_taken_by_another_is_lost_at_the_next_renewal(
    dynamodb: Any, clock: FakeClock
) -> None:
    a = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    shard = shard_ids(1)[0]
    await a.take_round(flat(1))
    other = LeaseTable(dynamodb, TABLE, "b")
    row = await other.get(shard)
    assert row is not None
    await other.take(row)  # e.g. after a long pause of ours the row expired in b's eyes
    assert await a.renew_leases() == [shard]
    assert a.held == set() and a.lost == {shard} and a.stats.lost == 1


@pytest.mark.integration
async def test_a_take_round_notices_a_lease_taken_from_us(dynamodb: Any, clock: FakeClock) -> None:
    a = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    shard = shard_ids(1)[0]
    await a.take_round(flat(1))
    other = LeaseTable(dynamodb, TABLE, "b")
    row = await other.get(shard)
    assert row is not None
    await other.take(row)
    result = await a.take_round(flat(1))
    assert result.lost == (shard,) and a.held == set()


@pytest.mark.integration
async def test_checkpoints_and_renewals_share_one_fencing_token(
    dynamodb: Any, clock: FakeClock
) -> None:
    """A checkpoint bumps the counter as a renewal does: through the coordinator neither makes
    the other look lost, whichever copy of the lease the committer kept."""
    a = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    shard = shard_ids(1)[0]
    await a.take_round(flat(1))
    committers_copy = a.lease(shard)
    table = CoordinatedLeaseTable(a)
    await a.renew_leases()
    clock.advance(FAILOVER - CONFIG.margin_s - 0.5)  # the checkpoint renews, too
    written = await table.checkpoint(committers_copy, SEQ, 7)
    assert written.checkpoint == Checkpoint(SEQ, 7)
    clock.advance(1.0)  # past the fence of the renewal, within the checkpoint's
    assert a.held_valid(shard)
    assert await a.renew_leases() == []
    ended = await table.mark_shard_end(committers_copy, ["shardId-000000000009"])
    assert ended.checkpoint.is_shard_end and ended.child_shard_ids == {"shardId-000000000009"}
    assert a.held == set() and a.stats.ended == 1 and a.stats.lost == 0
    with pytest.raises(LeaseLostError):
        await a.checkpoint(shard, SEQ, 8)  # no longer held


@pytest.mark.integration
async def test_graceful_eviction_hands_leases_over_at_once(dynamodb: Any, clock: FakeClock) -> None:
    fleet = Fleet(dynamodb, clock, flat(4))
    a, b = fleet.add("a"), fleet.add("b")
    await fleet.run_until(settled(fleet, [2, 2]), max_rounds=3 * int(FAILOVER))
    mine, lost = a.held, a.stats.lost
    a.stop_taking()
    b.stop_taking()
    for _ in range(int(FAILOVER)):  # a long drain: renewals go on, nothing is taken
        await fleet.step()
    assert a.held == mine and a.healthy and a.stats.lost == lost
    await a.checkpoint(sorted(mine)[0], SEQ, 1)  # the final checkpoint, then evict
    assert await a.evict_all() == 2
    assert a.held == set() and a.owned == set() and a.stats.evicted == 2
    fleet.assert_disjoint()
    assert (await b.take_round(fleet.shards)).taken == ()  # b is stopping, too
    b.taking = True
    result = await b.take_round(fleet.shards)  # no failover wait: the rows are unowned
    assert set(result.taken) == mine and b.held == set(shard_ids(4))
    row = await b.table.get(sorted(mine)[0])
    assert row is not None and row.checkpoint == Checkpoint(SEQ, 1)


@pytest.mark.integration
async def test_children_are_taken_only_after_every_parent_reached_shard_end(
    dynamodb: Any, clock: FakeClock
) -> None:
    """A split of p0 into c2, c3; then a merge of c3 and the adjacent p1 into m4."""
    p0, p1, c2, c3, m4 = shard_ids(5)
    a = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    shards = infos((p0, ()), (p1, ()))
    await a.take_round(shards)
    shards = infos((p0, ()), (p1, ()), (c2, (p0,)), (c3, (p0,)), (m4, (c3, p1)))
    result = await a.take_round(shards)
    assert result.created == (c2, c3, m4) and result.taken == ()
    await a.mark_shard_end(p0, [c2, c3])
    result = await a.take_round(shards)
    assert set(result.taken) == {c2, c3}
    await a.mark_shard_end(c3, [m4])
    assert (await a.take_round(shards)).taken == ()  # m4 still waits for its adjacent parent
    await a.mark_shard_end(p1, [m4])
    assert (await a.take_round(shards)).taken == (m4,)
    assert a.held == {c2, m4}


# ---- a fleet on 8 shards -----------------------------------------------------------------------


@pytest.mark.integration
async def test_three_workers_split_8_shards_3_3_2_then_survive_a_crash_and_a_newcomer(
    dynamodb: Any, clock: FakeClock
) -> None:
    fleet = Fleet(dynamodb, clock, flat(8))
    for name in ("a", "b", "c"):
        fleet.add(name)
    # Table ownership settles within a few rounds (one steal per worker per round); a stolen
    # lease is processed only after the failover time, so `held` follows FAILOVER later.
    await fleet.run_until(settled(fleet, [3, 3, 2]), max_rounds=5 + 2 * int(FAILOVER))
    assert sorted((await fleet.owners()).values()) == [2, 3, 3]

    victim = max(fleet.held_counts(), key=lambda n: (fleet.held_counts()[n], n))
    orphans = fleet.workers[victim].held
    fleet.crashed.add(victim)  # it stops calling anything, but keeps its beliefs
    crashed_at = clock.now
    await fleet.run_until(settled(fleet, [4, 4]), max_rounds=int(FAILOVER) + 4)
    assert clock.now - crashed_at <= FAILOVER + CONFIG.take_every_s + 2 * STEP
    survivors = [c for n, c in fleet.workers.items() if n != victim]
    assert orphans <= set().union(*(c.held for c in survivors))
    assert sum(c.stats.taken for c in survivors) >= len(orphans)

    newcomer = fleet.add("d")
    await fleet.run_until(settled(fleet, [3, 3, 2]), max_rounds=5 + 2 * int(FAILOVER))
    assert len(newcomer.held) >= 2 and newcomer.stats.stolen >= 2
    assert newcomer.stats.taken == 0  # nothing was free: all of it by stealing
    # Settled means settled: no more steals (no ping-pong) over several failover times.
    steals = sum(c.stats.stolen for c in fleet.workers.values())
    for _ in range(3 * int(FAILOVER)):
        await fleet.step()
    assert sum(c.stats.stolen for c in fleet.workers.values()) == steals
    assert sorted(fleet.held_counts().values(), reverse=True) == [3, 3, 2]


@pytest.mark.integration
async def test_a_fourth_worker_gets_its_fair_share_by_stealing(
    dynamodb: Any, clock: FakeClock
) -> None:
    fleet = Fleet(dynamodb, clock, flat(8))
    for name in ("a", "b", "c"):
        fleet.add(name)
    await fleet.run_until(settled(fleet, [3, 3, 2]), max_rounds=5 + 2 * int(FAILOVER))
    d = fleet.add("d")
    await fleet.run_until(settled(fleet, [2, 2, 2, 2]), max_rounds=5 + 2 * int(FAILOVER))
    assert d.stats.stolen == 2 and len(d.held) == 2
    lost = sum(c.stats.lost for n, c in fleet.workers.items() if n != "d")
    assert lost >= 2  # the victims found out, at a renewal or a scan


@pytest.mark.integration
async def test_a_worker_whose_renewals_stopped_gives_up_then_takes_back_like_anyone(
    dynamodb: Any, clock: FakeClock
) -> None:
    a = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    shard = shard_ids(1)[0]
    await a.take_round(flat(1))
    await a.take_round(flat(1))  # its own take, seen now
    clock.advance(FAILOVER - CONFIG.margin_s)  # no renewals meanwhile (the table was away)
    result = await a.take_round(flat(1))
    assert result.lost == (shard,) and result.taken == () and a.held == set()
    assert not (await a.take_round(flat(1))).taken  # our own row: expired only after failover
    clock.advance(CONFIG.margin_s + 0.1)
    assert (await a.take_round(flat(1))).taken == (shard,)
    assert a.held == {shard} and a.stats.lost == 1 and a.stats.taken == 2


@pytest.mark.integration
async def test_run_takes_and_renews_on_its_own_until_cancelled(dynamodb: Any) -> None:
    """The loops on the real monotonic clock, with room for a loaded machine."""
    config = CoordinatorConfig(failover_s=6.0, renew_interval_s=0.2, take_interval_s=0.2)
    a = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), config)

    async def list_shards() -> dict[str, ShardInfo]:
        return flat(3)

    task = asyncio.create_task(a.run(list_shards))
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            if a.held == set(shard_ids(3)) and a.stats.renewals >= 3:
                break
        assert a.held == set(shard_ids(3)) and a.stats.renewals >= 3 and a.healthy
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await a.evict_all() == 3
    rows = await a.table.list_leases()
    assert [row.lease_owner for row in rows] == [None] * 3


@pytest.mark.integration
async def test_a_stolen_lease_is_written_by_nobody_until_the_victims_fence_has_passed(
    dynamodb: Any, clock: FakeClock
) -> None:
    fleet = Fleet(dynamodb, clock, flat(2))
    a, b = fleet.add("a"), fleet.add("b")
    await a.take_round(fleet.shards)
    result = await b.take_round(fleet.shards)
    stolen = result.stolen[0]
    assert result.plan.victim == "a" and b.pending == {stolen} and b.held == set()
    with pytest.raises(LeaseLostError):
        await b.checkpoint(stolen, SEQ, 0)  # not yet: the victim may still be working on it
    assert b.owned == {stolen}  # refused, not lost
    fleet.assert_disjoint()
    with pytest.raises(LeaseLostError):
        await a.checkpoint(stolen, SEQ, 0)  # the victim's next write finds out
    assert a.lost == {stolen} and a.held == {s for s in shard_ids(2) if s != stolen}
    for _ in range(int(FAILOVER)):
        await fleet.step()
    assert b.held == {stolen} and b.pending == set()
    assert (await b.checkpoint(stolen, SEQ, 0)).checkpoint == Checkpoint(SEQ, 0)


@pytest.mark.integration
@pytest.mark.parametrize("seed", [1, 2])
async def test_random_interleavings_never_hold_a_shard_twice_and_settle_afterwards(
    dynamodb: Any, clock: FakeClock, seed: int
) -> None:
    """Four workers under a random schedule: renewals and take rounds in any order, clock jumps
    past renew intervals, hangs and resumptions, graceful stops and rejoins, checkpoints. At no
    moment do two report the same shard; once the schedule calms down, they settle fairly."""
    rng = random.Random(seed)
    fleet = Fleet(dynamodb, clock, flat(8))
    names = ["a", "b", "c", "d"]
    for name in names:
        fleet.add(name)
    position = 10**40
    for _ in range(250):
        name = rng.choice(names)
        coordinator = fleet.workers[name]
        event = rng.random()
        if name in fleet.crashed:
            if event < 0.1:
                fleet.crashed.discard(name)  # the hang ends; it carries on with its beliefs
        elif event < 0.3:
            await coordinator.renew_leases()
        elif event < 0.6:
            await coordinator.take_round(fleet.shards)
        elif event < 0.75:
            clock.advance(rng.uniform(0.1, 2.5))
        elif event < 0.8:
            fleet.crashed.add(name)
        elif event < 0.83:
            await coordinator.evict_all()  # a graceful stop, and a restart under the same id
        elif coordinator.held:
            shard = rng.choice(sorted(coordinator.held))
            position += 1
            try:
                written = await coordinator.checkpoint(shard, str(position), 0)
            except LeaseLostError:
                # Stolen since its last write: the stealer is still waiting (pending), or has
                # given it up again; no other worker may report it held.
                assert shard not in coordinator.owned
                assert not any(shard in w.held for w in fleet.workers.values())
            else:
                assert written.lease_owner == name
        fleet.assert_disjoint()
    fleet.crashed.clear()
    await fleet.run_until(settled(fleet, [2, 2, 2, 2]), max_rounds=8 + 3 * int(FAILOVER))
    assert sorted((await fleet.owners()).values()) == [2, 2, 2, 2]


@pytest.mark.integration
async def test_a_pending_steal_given_up_is_not_freed_for_a_third_worker(
    dynamodb: Any, clock: FakeClock
) -> None:
    """The stealer stops before its steal's wait ended: the victim may still be working on the
    shard, so the row must expire (by when the victim has fenced), not become unowned."""
    fleet = Fleet(dynamodb, clock, flat(2))
    a, b, c = fleet.add("a"), fleet.add("b"), fleet.add("c")
    await a.take_round(fleet.shards)
    stolen = (await b.take_round(fleet.shards)).stolen[0]
    assert await b.evict_all() == 0 and b.owned == set()
    assert stolen in a.held
    assert (await c.take_round(fleet.shards)).taken == ()  # still b's row, not expired
    fleet.assert_disjoint()
    fleet.crashed.add("b")
    dropped_at = clock.now
    for _ in range(2 * int(FAILOVER)):
        row = await a.table.get(stolen)
        if row is not None and row.lease_owner != "b":
            break
        await fleet.step()
    assert clock.now - dropped_at > FAILOVER  # taken once expired, never freed at once
    await fleet.run_until(settled(fleet, [1, 1]), max_rounds=3 * int(FAILOVER))
