"""Sessions, funnel progress per session, behaviour bots: through `ShardState`, as the consumer
uses them, plus the visitor table's own bookkeeping."""

from __future__ import annotations

import pytest

from consumers.counters import ShardState
from consumers.sessions import (
    ASSETS_SEEN,
    BEHAVIOUR_BOT,
    LIVE,
    NEVER,
    SESSION_MENU,
    SESSION_PURCHASE,
    SESSION_STAGES,
    SESSION_VISIT,
    BotRule,
    VisitorTable,
    visitor_hash,
)
from tests.consumers.state_support import T0, Feeder, hit


def increments_total(state: ShardState) -> tuple[int, int, int, int]:
    """Sum of every minute's increments, closed or not (page views, visitors, menu, purchase)."""
    totals = [0, 0, 0, 0]
    for cells in state.increments.values():
        for packed in cells.values():
            for i in range(4):
                totals[i] += (packed >> (32 * i)) & 0xFFFFFFFF
    return tuple(totals)  # type: ignore[return-value]


def session_stages(state: ShardState, visitor: str) -> int:
    """The stage bits the visitor's current session has reached."""
    slot = state.visitors.index[visitor_hash(visitor)]
    return state.visitors.flags[slot] & SESSION_STAGES


def test_visitor_hash_is_stable_and_64_bit() -> None:
    assert visitor_hash("a\tb") == visitor_hash("a\tb")
    assert visitor_hash("a\tb") != visitor_hash("a\tc")
    assert 0 <= visitor_hash("x") < 2**64
    # Pinned: a snapshot written by one process must be read by another.
    assert visitor_hash("198.51.100.1\tMozilla") == visitor_hash("198.51.100.1\tMozilla")


def test_funnel_per_session_and_increments_once_per_day() -> None:
    state, feed = ShardState("s"), Feeder()
    first = hit(T0, page="home")
    feed(
        state,
        first,
        hit(T0 + 10, page="static"),
        hit(T0 + 60, page="menu"),
        hit(T0 + 120, page="menu"),
        hit(T0 + 180, page="order"),
        hit(T0 + 240, page="home"),
    )
    assert increments_total(state) == (5, 1, 1, 1)
    assert session_stages(state, first.visitor) == SESSION_VISIT | SESSION_MENU | SESSION_PURCHASE
    # 31 minutes of silence: a new session reaches the stages again...
    feed(state, hit(T0 + 240 + 1801, page="menu"))
    assert session_stages(state, first.visitor) == SESSION_VISIT | SESSION_MENU
    # ...but the visitor already counted today: CloudWatch's sums stay distinct visitors.
    assert increments_total(state) == (6, 1, 1, 1)
    # A day after its last menu view it counts again (the older minutes have left the state).
    feed(state, hit(T0 + 240 + 1801 + 86_400, page="menu"))
    assert increments_total(state) == (1, 1, 1, 0)


def test_a_static_file_or_an_error_keeps_the_session_alive() -> None:
    state, feed = ShardState("s"), Feeder()
    feed(state, hit(T0, page="home"), hit(T0 + 1700, page="static"))
    feed(state, hit(T0 + 3400, page="other", status=404), hit(T0 + 5000, page="home"))
    assert increments_total(state)[1] == 1


def test_a_gap_of_exactly_thirty_minutes_keeps_the_session() -> None:
    state, feed = ShardState("s"), Feeder()
    first = hit(T0, page="menu")
    feed(state, first, hit(T0 + 1800, page="home"))
    assert session_stages(state, first.visitor) == SESSION_VISIT | SESSION_MENU
    feed(state, hit(T0 + 3601, page="home"))
    assert session_stages(state, first.visitor) == SESSION_VISIT


def test_visitors_are_ip_plus_user_agent() -> None:
    state, feed = ShardState("s"), Feeder()
    feed(
        state,
        hit(T0, ip="198.51.100.1"),
        hit(T0 + 1, ip="198.51.100.1", agent="curl-free browser 2"),
        hit(T0 + 2, ip="198.51.100.2"),
        hit(T0 + 3, ip="198.51.100.1"),
    )
    assert len(state.visitors) == 3
    assert increments_total(state) == (4, 3, 0, 0)


def test_user_agent_bots_and_static_files_create_no_visitor() -> None:
    state, feed = ShardState("s"), Feeder()
    feed(state, hit(T0, bot=True), hit(T0 + 1, ip="198.51.100.9", page="static"))
    feed(state, hit(T0 + 2, ip="198.51.100.8", status=404))
    assert len(state.visitors) == 0
    assert state.stats.bot_lines == 1


RULE = BotRule(min_page_views=5, within_seconds=10)


def test_fast_visitor_without_assets_is_flagged_forward_only() -> None:
    state, feed = ShardState("s", bot_rule=RULE), Feeder()
    feed(state, *(hit(T0 + i, page="home") for i in range(4)))
    assert increments_total(state) == (4, 1, 0, 0)
    feed(state, hit(T0 + 4, page="menu"), hit(T0 + 5, page="menu"), hit(T0 + 60, page="menu"))
    # The fifth page view trips the rule: it and all later ones are not counted; the four
    # counted before stay counted.
    assert increments_total(state) == (4, 1, 0, 0)
    assert state.stats.behaviour_bot_views == 3
    slot = state.visitors.slot_of(visitor_hash(hit(T0).visitor))
    assert slot is not None and state.visitors.flags[slot] & BEHAVIOUR_BOT


def test_a_visitor_that_loads_assets_is_never_flagged() -> None:
    state, feed = ShardState("s", bot_rule=RULE), Feeder()
    feed(state, hit(T0, page="home"), hit(T0, page="static"))
    feed(state, *(hit(T0 + 1 + i // 3, page="home") for i in range(30)))
    assert increments_total(state)[0] == 31
    assert state.stats.behaviour_bot_views == 0


def test_slow_visitor_without_assets_is_not_flagged() -> None:
    state, feed = ShardState("s", bot_rule=RULE), Feeder()
    feed(state, *(hit(T0 + 3 * i, page="home") for i in range(40)))
    assert state.stats.behaviour_bot_views == 0
    assert increments_total(state)[0] == 40


def test_bot_rule_is_validated() -> None:
    with pytest.raises(ValueError):
        BotRule(min_page_views=1)


def test_sweep_frees_only_visitors_outside_every_window_and_session() -> None:
    table = VisitorTable()
    old = table.add(1, 0, T0)
    table.last_visit[old] = 100
    recent = table.add(2, 0, T0 + 3000)
    table.last_visit[recent] = 200
    table.sweep(10, oldest_kept_minute=150, newest_time=T0 + 3600)
    assert table.slot_of(1) is None and table.slot_of(2) == recent
    assert table.flags[old] == 0 and list(table.free) == [old]
    # A freed slot is reused, clean.
    again = table.add(3, 7, T0 + 4000)
    assert again == old
    assert table.flags[again] == LIVE and table.last_visit[again] == NEVER
    assert table.place[again] == 7 and not table.flags[again] & ASSETS_SEEN


def test_sweep_keeps_a_visitor_whose_session_is_open() -> None:
    table = VisitorTable()
    slot = table.add(1, 0, T0)
    table.last_visit[slot] = 100
    table.sweep(10, oldest_kept_minute=150, newest_time=T0 + 1800)
    assert table.slot_of(1) == slot


def test_rebuild_index_matches_live_slots() -> None:
    table = VisitorTable()
    for key in range(1, 6):
        table.add(key, 0, T0)
    for slot in (2, 3, 4):
        table.last_visit[slot] = 10
    table.sweep(100, oldest_kept_minute=5, newest_time=T0 + 4000)
    before = dict(table.index)
    assert sorted(before.values()) == [2, 3, 4]
    table.rebuild_index()
    assert table.index == before
