"""The lease coordinator's pure rules (`consumers.lease_decisions`): expiry on the observer's
clock, fair share, take before steal, one steal per round without ping-pong, parents first."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.lease_decisions import (
    ExpiryTracker,
    available_leases,
    discovery_order,
    fair_target,
    lease_counts,
    parents_finished,
    plan_takes,
    work_leases,
)
from consumers.leases import SHARD_END, TRIM_HORIZON, Checkpoint, Lease

FAILOVER = 10.0


def lease(
    key: str,
    owner: str | None = None,
    counter: int = 0,
    *,
    ended: bool = False,
    parents: Iterable[str] = (),
) -> Lease:
    return Lease(
        lease_key=key,
        lease_owner=owner,
        lease_counter=counter,
        checkpoint=Checkpoint(SHARD_END if ended else TRIM_HORIZON),
        parent_shard_ids=frozenset(parents),
    )


def table(*leases: Lease) -> dict[str, Lease]:
    return {row.lease_key: row for row in leases}


def shards(n: int) -> list[str]:
    return [f"shardId-{i:012d}" for i in range(n)]


def owned(owners: dict[str, int]) -> dict[str, Lease]:
    """A table where each owner holds its count of leases, in shard order."""
    rows: list[Lease] = []
    ids = iter(shards(sum(owners.values())))
    for owner, count in owners.items():
        rows += [lease(next(ids), owner, counter=1) for _ in range(count)]
    return table(*rows)


# ---- expiry on the observer's own clock ----------------------------------------------------------


def test_an_owned_lease_expires_when_its_counter_stands_still_for_the_failover_time() -> None:
    tracker = ExpiryTracker(FAILOVER)
    tracker.observe([lease("s0", "a", 5)], now=100.0)
    assert not tracker.is_expired("s0", 100.0 + FAILOVER)  # exactly the failover time: not yet
    assert tracker.is_expired("s0", 100.0 + FAILOVER + 0.001)
    assert tracker.expired(100.0 + FAILOVER + 0.001) == {"s0"}


def test_a_counter_change_seen_later_restarts_the_wait_from_when_we_saw_it() -> None:
    tracker = ExpiryTracker(FAILOVER)
    tracker.observe([lease("s0", "a", 5)], now=0.0)
    tracker.observe([lease("s0", "a", 5)], now=8.0)  # unchanged: still dated 0
    assert tracker.is_expired("s0", 10.5)
    tracker.observe([lease("s0", "a", 6)], now=10.5)  # renewed: dated when seen
    assert not tracker.is_expired("s0", 20.5)
    assert tracker.is_expired("s0", 20.6)


def test_a_lease_first_seen_owned_counts_as_renewed_then_and_unowned_as_available() -> None:
    """A new worker knows nothing of an owner's renewals before its first scan, so it waits a
    full failover time; an unowned row has never been renewed."""
    tracker = ExpiryTracker(FAILOVER)
    tracker.observe([lease("s0", "a", 9), lease("s1", None, 3)], now=50.0)
    assert tracker.expired(50.0) == {"s1"}
    assert not tracker.is_expired("unknown", 1e9)


def test_rows_gone_from_the_table_are_forgotten() -> None:
    tracker = ExpiryTracker(FAILOVER)
    tracker.observe([lease("s0", "a", 1)], now=0.0)
    tracker.observe([], now=1.0)
    tracker.observe([lease("s0", "a", 1)], now=2.0)  # back again: a first sighting
    assert not tracker.is_expired("s0", 11.0)
    assert tracker.is_expired("s0", 12.1)


# ---- fair share --------------------------------------------------------------------------------


def test_fair_target_is_the_ceiling_of_work_per_worker() -> None:
    assert [fair_target(8, w) for w in (1, 2, 3, 4, 5, 8, 9)] == [8, 4, 3, 2, 2, 1, 1]
    assert fair_target(0, 3) == 0


def test_live_workers_are_owners_of_unexpired_leases_plus_me() -> None:
    rows = table(lease("s0", "a", 1), lease("s1", "b", 1), lease("s2", "c", 1), lease("s3"))
    counts = lease_counts(rows, expired={"s2"}, me="me")
    assert counts == Counter({"a": 1, "b": 1, "me": 0})
    assert available_leases(rows, expired={"s2"}) == ["s2", "s3"]


def test_alone_a_worker_takes_everything_available_oldest_first() -> None:
    rows = table(*(lease(s) for s in reversed(shards(8))))
    plan = plan_takes(rows, expired=set(), me="a")
    assert (plan.target, plan.workers, plan.take, plan.steal) == (8, 1, tuple(shards(8)), None)


def test_takes_stop_at_the_target() -> None:
    rows = owned({"b": 4}) | table(*(lease(s) for s in shards(8)[4:]))
    plan = plan_takes(rows, expired=set(), me="a")
    assert plan.target == 4 and plan.take == tuple(shards(8)[4:])
    rows = owned({"b": 2, "a": 4}) | table(*(lease(s) for s in shards(8)[6:]))
    assert plan_takes(rows, expired=set(), me="a").take == ()  # at target: takes nothing


def test_an_expired_workers_leases_are_taken_and_it_is_not_counted() -> None:
    rows = owned({"dead": 3, "b": 3, "a": 2})
    dead = {key for key, row in rows.items() if row.lease_owner == "dead"}
    plan = plan_takes(rows, expired=dead, me="a")
    # Two live workers share 8: target 4, so "a" takes two of the dead worker's three.
    assert (plan.workers, plan.target) == (2, 4)
    assert plan.take == tuple(sorted(dead)[:2]) and plan.steal is None


def test_take_before_steal() -> None:
    rows = owned({"b": 7}) | table(lease("shardId-000000000007"))
    plan = plan_takes(rows, expired=set(), me="a")
    assert plan.take == ("shardId-000000000007",) and plan.steal is None


# ---- stealing ----------------------------------------------------------------------------------


def test_one_steal_per_round_from_the_most_loaded_worker() -> None:
    rows = owned({"b": 3, "c": 5})
    plan = plan_takes(rows, expired=set(), me="a")
    assert plan.target == 3 and plan.take == ()
    assert plan.victim == "c" and plan.steal == max(
        k for k, r in rows.items() if r.lease_owner == "c"
    )


def test_ties_between_victims_are_broken_the_same_way_by_every_observer() -> None:
    plan = plan_takes(owned({"c": 4, "b": 4}), expired=set(), me="a")
    assert plan.victim == "b"


def test_a_worker_at_target_never_steals() -> None:
    rows = owned({"b": 4, "a": 3, "c": 1})  # "b" is over target (3), but "a" is at it
    assert plan_takes(rows, expired=set(), me="a").steal is None
    assert plan_takes(rows, expired=set(), me="c").victim == "b"


def test_no_steal_from_a_worker_only_one_ahead() -> None:
    """3/3/2 is the fair split of 8 over 3: the worker with 2 would just move the imbalance."""
    rows = owned({"b": 3, "c": 3, "a": 2})
    plan = plan_takes(rows, expired=set(), me="a")
    assert (plan.target, plan.take, plan.steal) == (3, (), None)


def test_a_worker_two_below_steals_even_from_one_at_target() -> None:
    """3/3/1 over 7 leases: nobody is over target 3, yet 1 is unfair; the KCL steals here."""
    rows = owned({"b": 3, "c": 3, "a": 1})
    plan = plan_takes(rows, expired=set(), me="a")
    assert plan.target == 3 and plan.victim == "b"


def test_expired_leases_are_never_stolen_but_taken() -> None:
    rows = owned({"b": 6})
    expired = {"shardId-000000000005"}
    plan = plan_takes(rows, expired=expired, me="a")
    # "b" is live with 5; "a" takes the expired one rather than stealing a live one.
    assert plan.take == ("shardId-000000000005",) and plan.steal is None


def _squares(counts: Counter[str]) -> int:
    return sum(c * c for c in counts.values())


@settings(max_examples=200, deadline=None)
@given(
    workers=st.integers(min_value=1, max_value=6),
    owners=st.lists(st.integers(min_value=-1, max_value=5), min_size=0, max_size=30),
)
def test_rounds_converge_to_a_fair_split_and_steals_never_cycle(
    workers: int, owners: list[int]
) -> None:
    """Any start (leases unowned or spread anyhow), workers taking turns on a shared table:
    every steal lowers the sum of squared counts (so no ping-pong), and the rounds stop at a
    split where no worker holds more than one lease more than another."""
    names = [f"w{i}" for i in range(workers)]
    rows = {
        key: lease(key, None if o < 0 or o >= workers else names[o], counter=1)
        for key, o in zip(shards(len(owners)), owners, strict=True)
    }
    for _ in range(4 * len(owners) + 4):
        changed = False
        for me in names:
            plan = plan_takes(rows, expired=set(), me=me)
            for key in plan.take:
                rows[key] = lease(key, me, counter=rows[key].lease_counter + 1)
                changed = True
            if plan.steal is not None:
                before = _squares(lease_counts(rows, set(), me))
                assert rows[plan.steal].lease_owner == plan.victim != me
                rows[plan.steal] = lease(plan.steal, me, counter=rows[plan.steal].lease_counter + 1)
                assert _squares(lease_counts(rows, set(), me)) < before
                changed = True
        if not changed:
            break
    else:
        raise AssertionError("the rounds did not settle")
    counts = Counter({name: 0 for name in names})
    counts.update(row.lease_owner for row in rows.values())
    assert None not in counts
    assert max(counts.values()) - min(counts.values()) <= 1
    assert max(counts.values()) == fair_target(len(rows), workers)


# ---- resharding --------------------------------------------------------------------------------


def test_a_child_waits_for_its_parent_at_shard_end() -> None:
    parent, child = lease("p", "b", 1), lease("c", parents=["p"])
    rows = table(parent, child)
    assert not parents_finished(child, rows)
    assert plan_takes(rows, expired=set(), me="a").take == ()
    rows = table(lease("p", "b", 2, ended=True), child)
    assert parents_finished(child, rows)
    assert plan_takes(rows, expired=set(), me="a").take == ("c",)


def test_a_merged_child_waits_for_both_parents() -> None:
    child = lease("m", parents=["p1", "p2"])
    one_done = table(lease("p1", "b", 2, ended=True), lease("p2", "b", 1), child)
    assert not parents_finished(child, one_done)
    assert plan_takes(one_done, expired=set(), me="a").take == ()
    both = one_done | table(lease("p2", "b", 2, ended=True))
    assert plan_takes(both, expired=set(), me="a").take == ("m",)


def test_a_parent_row_gone_counts_as_finished_unless_listshards_still_lists_it() -> None:
    child = lease("c", parents=["p"])
    rows = table(child)
    assert parents_finished(child, rows)  # trimmed: nothing of it is left to read
    assert parents_finished(child, rows, listed={"c"})
    assert not parents_finished(child, rows, listed={"p", "c"})  # not discovered yet
    assert plan_takes(rows, expired=set(), me="a", listed={"p", "c"}).take == ()


def test_finished_and_waiting_leases_are_not_work_and_not_counted() -> None:
    rows = table(
        lease("p", "b", 3, ended=True),
        lease("q", "b", 1),
        lease("c1", parents=["q"]),
        lease("c2", parents=["q"]),
        lease("s", None),
    )
    assert set(work_leases(rows)) == {"q", "s"}
    plan = plan_takes(rows, expired=set(), me="a")
    assert (plan.target, plan.take) == (1, ("s",))  # 2 work leases over "a" and "b"
    assert plan_takes(rows, expired={"p"}, me="a").take == ("s",)  # an ended lease: never


def test_discovery_creates_parents_before_children() -> None:
    parents = {"c1": ("p",), "c2": ("p",), "m": ("c1", "x"), "p": (), "x": ()}
    order = discovery_order(["m", "c2", "x", "c1", "p"], parents)
    assert sorted(order) == ["c1", "c2", "m", "p", "x"]
    position = {shard: i for i, shard in enumerate(order)}
    for child, its_parents in parents.items():
        assert all(position[p] < position[child] for p in its_parents)
    # A parent that already has a row is not created again, and does not block its child.
    assert discovery_order(["c1"], parents) == ["c1"]
