"""A reshard changes no count: parents hand their visitors to the children of their hash range.

Each test runs the same hits twice: once through one state (no reshard), once through parent
states until the reshard and child states after it, routed by the MD5 hash key of the client IP
as Kinesis routes them. Summaries (every window) and CloudWatch increments must be equal.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from consumers.counters import Counts, ShardState, summarize
from consumers.lineage import inherit, parse_hash_range, release
from consumers.sessions import route_key
from consumers.state_store import from_bytes, to_bytes
from consumers.windows import minute_of
from tests.consumers.state_support import LYON, PORTLAND_OR, SEATTLE, T0, Feeder, hit

TOP = 2**128 - 1
MID = 2**127
LOW_HALF = (0, MID - 1)
HIGH_HALF = (MID, TOP)
WINDOWS = ("5m", "1h", "24h")


def traffic(seed: int, count: int, start: int = T0) -> list[Any]:
    """In-order hits of a few hundred visitors: pages, funnel stages, assets, 404s, bots."""
    rng = random.Random(seed)
    at = start
    hits = []
    for _ in range(count):
        at += rng.choice((0, 1, 5, 20, 60, 240))
        host = rng.randrange(360)
        hits.append(
            hit(
                at,
                ip=f"198.51.{host // 120}.{host % 120}",
                page=rng.choice(("home", "home", "menu", "order", "static", "other")),
                location=(SEATTLE, PORTLAND_OR, LYON)[host % 3],  # an address stays put
                status=rng.choice((200, 200, 200, 404)),
                bot=rng.random() < 0.03,
            )
        )
    return hits


def in_range(one: Any, hash_range: tuple[int, int]) -> bool:
    return hash_range[0] <= route_key(one.hit.client_ip) <= hash_range[1]


def increments(states: list[ShardState]) -> Counts:
    total = Counts(0, 0, 0, 0)
    for state in states:
        for minute in state.pending_increments(close_all=True):
            total = total + minute.totals
    return total


def assert_same_numbers(resharded: list[ShardState], whole: ShardState) -> None:
    for window in WINDOWS:
        assert summarize(resharded, window) == summarize([whole], window), window
    assert increments(resharded) == increments([whole])


def feed_routed(states: dict[tuple[int, int], ShardState], hits: list[Any]) -> None:
    feeders = {key: Feeder() for key in states}
    for one in hits:
        for hash_range, state in states.items():
            if in_range(one, hash_range):
                feeders[hash_range](state, one)


@pytest.mark.parametrize("seed", range(5))
def test_a_split_counts_every_visitor_once(seed: int) -> None:
    before = traffic(seed, 1500)
    split_at = int(before[-1].hit.time)
    after = traffic(seed + 100, 1000, split_at)  # the same addresses: visitors come back
    whole, feed = ShardState("whole"), Feeder()
    feed(whole, *before)
    whole.mark_published(minute_of(split_at))  # CloudWatch has the increments until the split
    feed(whole, *after)

    parent = ShardState("parent")
    Feeder()(parent, *before)
    parent.mark_published(minute_of(split_at))  # its SHARD_END commit published the rest
    children = {r: inherit(f"child-{r[0]}", r, [parent]) for r in (LOW_HALF, HIGH_HALF)}
    released = sum(release(parent, r) for r in children)
    assert released > 0 and len(parent.visitors) == 0
    feed_routed(children, after)
    assert_same_numbers([parent, *children.values()], whole)


@pytest.mark.parametrize("seed", range(5))
def test_a_merge_counts_every_visitor_once(seed: int) -> None:
    before = traffic(seed, 1500)
    merge_at = int(before[-1].hit.time)
    after = traffic(seed + 100, 1000, merge_at)
    whole, feed = ShardState("whole"), Feeder()
    feed(whole, *before)
    whole.mark_published(minute_of(merge_at))
    feed(whole, *after)

    parents = {r: ShardState(f"parent-{r[0]}") for r in (LOW_HALF, HIGH_HALF)}
    feed_routed(parents, before)
    for parent in parents.values():
        parent.mark_published(minute_of(merge_at))
    child = inherit("child", (0, TOP), parents.values())
    for parent in parents.values():
        release(parent, (0, TOP))
    Feeder()(child, *after)
    assert_same_numbers([*parents.values(), child], whole)


def test_release_is_idempotent_and_leaves_page_views() -> None:
    parent = ShardState("parent")
    Feeder()(parent, *traffic(1, 800))
    views = summarize([parent], "24h")["totals"]["page_views"]
    assert release(parent, LOW_HALF) > 0
    assert release(parent, LOW_HALF) == 0
    release(parent, HIGH_HALF)
    totals = summarize([parent], "24h")["totals"]
    assert totals["page_views"] == views
    assert totals["visitors"] == totals["menu_viewers"] == totals["purchasers"] == 0
    for cells in parent.window_sums.values():
        assert all(Counts.unpack(packed)[1:] == (0, 0, 0) for packed in cells.values())


def test_inherited_state_survives_a_snapshot() -> None:
    parent = ShardState("parent")
    Feeder()(parent, *traffic(2, 800))
    child = inherit("child", HIGH_HALF, [from_bytes(to_bytes(parent))])
    again = from_bytes(to_bytes(child))
    assert to_bytes(again) == to_bytes(child)
    assert summarize([again], "24h") == summarize([child], "24h")
    assert len(child.visitors) > 0


def test_a_child_of_parents_that_counted_nothing_starts_empty() -> None:
    child = inherit("child", HIGH_HALF, [ShardState("a"), ShardState("b")])
    assert child.newest_time is None and len(child.visitors) == 0


def test_hash_ranges_from_lease_text() -> None:
    assert parse_hash_range("0", str(TOP)) == (0, TOP)
    assert parse_hash_range(None, "5") is None
    assert parse_hash_range("", "") is None
