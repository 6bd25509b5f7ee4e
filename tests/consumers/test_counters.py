"""Rolling counters: distinct visitors across buckets, window edges, lateness, summaries over
shards, top N, conversion, replay protection and the metric increments' publish cursor."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.counters import (
    OTHER,
    SWEEP_PASS_MINUTES,
    Counts,
    ShardState,
    summarize,
    top_cities,
    top_regions,
)
from consumers.geo.locator import Location
from consumers.state_store import from_bytes, to_bytes
from consumers.windows import Lateness, minute_of
from tests.consumers.state_support import (
    LYON,
    PORTLAND_ME,
    PORTLAND_OR,
    SEATTLE,
    T0,
    Feeder,
    hit,
)

M0 = minute_of(T0)


def totals(state: ShardState | list[ShardState], window: str = "24h") -> dict[str, int]:
    states = state if isinstance(state, list) else [state]
    return summarize(states, window)["totals"]


def brute_force(hits: list[Any], window_minutes: int) -> dict[str, int]:
    """Distinct visitors per stage and page views over the window ending at the newest minute."""
    newest = max(minute_of(h.hit.time) for h in hits)
    inside = [h for h in hits if minute_of(h.hit.time) > newest - window_minutes and h.is_page_view]
    return {
        "page_views": len(inside),
        "visitors": len({h.visitor for h in inside}),
        "menu_viewers": len({h.visitor for h in inside if h.stage == "menu"}),
        "purchasers": len({h.visitor for h in inside if h.stage == "purchase"}),
    }


def test_a_visitor_in_many_buckets_counts_once() -> None:
    state, feed = ShardState("s"), Feeder()
    feed(state, *(hit(T0 + 60 * i, page="home") for i in range(30)))
    feed(state, hit(T0 + 1800, ip="198.51.100.2", page="menu"))
    assert totals(state, "24h") == {
        "page_views": 31,
        "visitors": 2,
        "menu_viewers": 1,
        "purchasers": 0,
        "rejected_lines": 0,
        "late_lines": 0,
    }
    assert totals(state, "5m")["visitors"] == 2
    assert totals(state, "5m")["page_views"] == 5


def test_window_edges_follow_the_newest_minute() -> None:
    state, feed = ShardState("s"), Feeder()
    feed(state, hit(T0, ip="198.51.100.1"))  # minute 0
    feed(state, hit(T0 + 4 * 60 + 59, ip="198.51.100.2"))  # minute 4
    assert totals(state, "5m")["visitors"] == 2
    feed(state, hit(T0 + 5 * 60, ip="198.51.100.3"))  # minute 5: minute 0 leaves the 5m window
    assert totals(state, "5m")["visitors"] == 2
    assert totals(state, "1h")["visitors"] == 3
    feed(state, hit(T0 + 60 * 60, ip="198.51.100.3"))  # minute 60: minute 0 leaves 1h
    assert totals(state, "1h")["visitors"] == 2
    assert totals(state, "24h")["visitors"] == 3
    feed(state, hit(T0 + 86_400 + 4 * 60, ip="198.51.100.9"))  # minutes 0..4 leave 24h
    assert totals(state, "24h")["visitors"] == 2  # .3 (minute 60) and .9
    assert totals(state, "24h")["page_views"] == 3
    assert totals(state, "5m")["visitors"] == 1


def test_returning_visitor_moves_to_its_newest_minute() -> None:
    state, feed = ShardState("s"), Feeder()
    feed(state, hit(T0, page="menu"), hit(T0 + 600, page="home"))
    feed(state, hit(T0 + 601, ip="198.51.100.5"))
    # In the 5m window the visitor is there (minute 10) but its menu view (minute 0) is not.
    assert totals(state, "5m")["visitors"] == 2
    assert totals(state, "5m")["menu_viewers"] == 0
    assert totals(state, "1h")["menu_viewers"] == 1


def test_randomised_against_brute_force() -> None:
    rng = random.Random(7)
    state, feed = ShardState("s", lateness=Lateness(60, 3600)), Feeder()
    hits = []
    at = T0
    for _ in range(3000):
        at += rng.choice((0, 1, 5, 20, 60, 300))
        late = rng.random() < 0.1
        one = hit(
            at - (rng.randrange(0, 3000) if late else 0),
            ip=f"198.51.100.{rng.randrange(60)}",
            page=rng.choice(("home", "home", "menu", "order", "static", "other")),
            location=rng.choice((SEATTLE, PORTLAND_OR, LYON)),
            status=rng.choice((200, 200, 200, 404)),
        )
        hits.append(one)
        feed(state, one)
        if rng.random() < 0.02:
            for window, minutes in (("5m", 5), ("1h", 60), ("24h", 1440)):
                got = totals(state, window)
                assert {k: got[k] for k in brute_force(hits, minutes)} == brute_force(
                    hits, minutes
                ), window


def test_late_lines_within_the_allowance_count_in_their_minute() -> None:
    state, feed = ShardState("s", lateness=Lateness(60, 600)), Feeder()
    feed(state, hit(T0 + 3600, ip="198.51.100.1"))
    feed(state, hit(T0 + 3600 - 660, ip="198.51.100.2"))  # grace + allowance behind: counted
    feed(state, hit(T0 + 3600 - 661, ip="198.51.100.3"))  # later: counted as late only
    got = totals(state, "1h")
    assert got["visitors"] == 2 and got["page_views"] == 2 and got["late_lines"] == 1
    assert state.stats.too_late == 1
    assert totals(state, "5m")["visitors"] == 1  # the late one is in minute 49, not in 5m


def test_rejected_lines_join_the_newest_minute() -> None:
    state = ShardState("s")
    state.add_rejected(1)  # before any event time
    state.add(hit(T0), 2)
    state.add_rejected(3)
    assert totals(state)["rejected_lines"] == 2
    state.add(hit(T0 + 600), 4)
    assert totals(state, "5m")["rejected_lines"] == 0
    assert totals(state, "1h")["rejected_lines"] == 2


def test_replayed_positions_are_skipped() -> None:
    state = ShardState("s")
    assert state.add(hit(T0), "49590338271490256608559692538361571095921575989136588898", 0)
    assert state.add(hit(T0 + 1), "49590338271490256608559692538361571095921575989136588898", 1)
    # A re-fetched iterator hands the same records again, and an older one.
    assert not state.add(hit(T0), "49590338271490256608559692538361571095921575989136588898", 0)
    assert not state.add(hit(T0 + 1), 49590338271490256608559692538361571095921575989136588898, 1)
    assert not state.add_rejected(5)
    assert state.add(hit(T0 + 2), "49590338271490256608559692538361571095921575989136588899")
    assert totals(state)["page_views"] == 3
    assert state.stats.replays_skipped == 3


def place_rows(summary: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(row["city"], row["region"], row["visitors"]) for row in summary["cities"]]


def test_cities_sorted_by_visitors_then_name_and_merged_across_shards() -> None:
    a, b = ShardState("a"), ShardState("b")
    feed_a, feed_b = Feeder(), Feeder()
    feed_a(a, hit(T0, ip="10.0.0.1", location=LYON), hit(T0, ip="10.0.0.2", location=SEATTLE))
    feed_b(b, hit(T0 + 5, ip="10.0.0.3", location=PORTLAND_OR))
    feed_b(b, hit(T0 + 5, ip="10.0.0.4", location=PORTLAND_ME, page="menu"))
    feed_b(b, hit(T0 + 6, ip="10.0.0.5", location=SEATTLE, page="order"))
    summary = summarize([a, b], "24h")
    assert place_rows(summary) == [
        ("Seattle", "Washington", 2),
        ("Lyon", "Auvergne-Rhone-Alpes", 1),
        ("Portland", "Maine", 1),
        ("Portland", "Oregon", 1),
    ]
    assert summary["totals"]["visitors"] == 5
    seattle = summary["cities"][0]
    assert seattle["purchasers"] == 1 and seattle["purchase_rate"] == 0.5
    assert summary["conversion"] == {
        "menu_rate": 0.2,
        "purchase_rate": 0.2,
        "menu_to_purchase_rate": 1.0,
    }
    assert [r["country"] for r in summary["countries"]] == ["US", "FR"]
    assert summary["regions"][0]["region"] == "Washington"
    assert top_cities(summary, 2) == [
        ("Seattle", "Washington", "US"),
        ("Lyon", "Auvergne-Rhone-Alpes", "FR"),
    ]
    assert top_regions(summary, 1) == [("US", "Washington")]


def test_merge_of_shards_at_different_newest_minutes_is_exact() -> None:
    """The summary ends with the newest minute of any shard; a shard behind it must drop the
    buckets that a window ending later no longer covers."""
    a, b = ShardState("a"), ShardState("b")
    Feeder()(a, hit(T0, ip="10.0.0.1"), hit(T0 + 120, ip="10.0.0.2"))
    Feeder()(b, hit(T0 + 6 * 60, ip="10.0.0.3"))
    assert totals([a, b], "5m")["visitors"] == 2  # minutes 2..6: .2 and .3
    assert totals([a, b], "1h")["visitors"] == 3
    with pytest.raises(ValueError):
        b.window_cells(5, M0)


def test_empty_summary() -> None:
    summary = summarize([ShardState("a")], "1h")
    assert summary["totals"]["visitors"] == 0 and summary["cities"] == []


def test_pending_increments_only_for_closed_minutes_and_cursor() -> None:
    state, feed = ShardState("s", lateness=Lateness(60, 3600)), Feeder()
    feed(state, hit(T0 + 1, page="home"), hit(T0 + 2, page="menu"))
    feed(state, hit(T0 + 61, ip="10.0.0.2", location=LYON))
    assert state.pending_increments() == []  # watermark T0 + 1: nothing closed
    feed(state, hit(T0 + 125, ip="10.0.0.3"))
    pending = state.pending_increments()
    assert [p.minute for p in pending] == [M0]
    assert pending[0].timestamp == T0
    assert pending[0].totals == Counts(2, 1, 1, 0)
    state.mark_published(M0)
    assert state.pending_increments() == []
    feed(state, hit(T0 + 300, ip="10.0.0.4"))
    assert [p.minute for p in state.pending_increments()] == [M0 + 1, M0 + 2]
    # A late hit in a minute already published is published with the oldest unpublished one.
    feed(state, hit(T0 + 3, ip="10.0.0.5", page="menu"))
    minute1 = state.pending_increments()[0]
    assert minute1.minute == M0 + 1
    assert minute1.totals == Counts(2, 2, 1, 0)
    assert totals(state)["visitors"] == 5  # and the API counts it in its own minute


def test_a_late_hit_for_a_minute_handed_to_the_sink_moves_past_it() -> None:
    """Handed minutes are fixed batches in the sink's queue: an increment added to one would be
    neither sent nor kept (the publication cursor later deletes the minute), so it moves on."""
    state, feed = ShardState("s", lateness=Lateness(60, 3600)), Feeder()
    feed(state, hit(T0 + 1), hit(T0 + 61, ip="10.0.0.2"), hit(T0 + 185, ip="10.0.0.3"))
    handed = state.pending_increments()
    assert [p.minute for p in handed] == [M0, M0 + 1]
    state.mark_handed(M0 + 1)  # in the sink's queue, not yet acknowledged
    feed(state, hit(T0 + 70, ip="10.0.0.4", page="menu"))  # late, for the handed minute M0 + 1
    state.mark_published(M0 + 1)
    pending = state.pending_increments(close_all=True)
    assert [p.minute for p in pending] == [M0 + 2, M0 + 3]
    assert sum((p.totals for p in pending), Counts(0, 0, 0, 0)) == Counts(2, 2, 1, 0)


def test_increments_fold_into_top_cities_and_regions() -> None:
    state, feed = ShardState("s", lateness=Lateness(0, 600)), Feeder()
    feed(state, hit(T0, ip="10.0.0.1", location=SEATTLE), hit(T0, ip="10.0.0.2", location=LYON))
    feed(state, hit(T0 + 1, ip="10.0.0.3", location=PORTLAND_ME))
    feed(state, hit(T0 + 60, ip="10.0.0.4"))
    (minute,) = state.pending_increments()
    seattle = ("Seattle", "Washington", "US")
    folded = minute.by_city([seattle])
    assert folded == {seattle: Counts(1, 1, 0, 0), OTHER: Counts(2, 2, 0, 0)}
    assert minute.by_region([("US", "Washington")]) == {
        ("US", "Washington"): Counts(1, 1, 0, 0),
        OTHER: Counts(2, 2, 0, 0),
    }
    assert minute.by_region()[("FR", "Auvergne-Rhone-Alpes")] == Counts(1, 1, 0, 0)


def test_increments_hand_over_to_the_cloudwatch_sink() -> None:
    """The sink's `bucket_metric_data` takes (city, region, country) -> (page views, visitors,
    menu viewers, purchasers): exactly `by_city_key()`, with `top_cities` of a summary."""
    cloudwatch = pytest.importorskip("consumers.sinks.cloudwatch")
    state, feed = ShardState("s", lateness=Lateness(0, 600)), Feeder()
    feed(state, hit(T0, ip="10.0.0.1", page="menu"), hit(T0 + 1, ip="10.0.0.2", location=LYON))
    state.add_rejected(feed.sequence)
    feed.sequence += 1
    feed(state, hit(T0 + 60, ip="10.0.0.4"))
    (minute,) = state.pending_increments()
    data = cloudwatch.bucket_metric_data(
        minute.timestamp,
        minute.by_city_key(),
        top_cities=top_cities(summarize([state]), 1),
        top_regions=top_regions(summarize([state]), 1),
        rejected_lines=minute.rejected_lines,
    )
    totals = {d.name: d.value for d in data if not d.dimensions}
    assert totals == {
        "PageViews": 2, "Visitors": 2, "MenuViewers": 1, "Purchasers": 0, "RejectedLines": 1,
    }  # fmt: skip
    cities = {d.dimensions[-1][1] for d in data if len(d.dimensions) == 3}
    assert cities == {"Seattle", OTHER}
    assert {d.timestamp for d in data} == {T0}


def test_increments_count_visitors_once_a_day_and_rejections() -> None:
    state, feed = ShardState("s", lateness=Lateness(0, 600)), Feeder()
    feed(state, hit(T0), hit(T0 + 10))
    state.add_rejected(feed.sequence)
    feed.sequence += 1
    feed(state, hit(T0 + 2000), hit(T0 + 4000), hit(T0 + 4200, ip="10.0.0.2"))
    pending = state.pending_increments()  # minutes up to T0 + 4200's are closed
    assert sum(p.totals.visitors for p in pending) == 1  # three sessions of one visitor: once
    everything = state.pending_increments(close_all=True)  # with 10.0.0.2's open minute
    assert sum(p.totals.visitors for p in everything) == 2
    assert sum(p.rejected_lines for p in pending) == 1
    assert totals(state)["visitors"] == 2


def test_old_buckets_are_dropped_and_visitors_swept() -> None:
    state, feed = ShardState("s"), Feeder()
    feed(state, *(hit(T0 + i, ip=f"10.0.{i // 256}.{i % 256}") for i in range(2000)))
    feed(state, hit(T0 + 2 * 86_400, ip="10.9.9.9"))
    assert min(state.buckets) >= minute_of(T0 + 86_400)
    # A jump of SWEEP_PASS_MINUTES or more sweeps the whole table at once.
    assert len(state.visitors) == 1
    assert totals(state)["visitors"] == 1


def test_the_sweep_passes_over_the_table_in_four_hours_of_event_time() -> None:
    state, feed = ShardState("s"), Feeder()
    feed(state, *(hit(T0 + i, ip=f"10.0.{i // 256}.{i % 256}") for i in range(2000)))
    for minute in range(1, 24 * 60 + 1):  # a day later, one visitor a minute
        feed(state, hit(T0 + 60 * minute, ip="10.9.9.9"))
    assert len(state.visitors) == 2001  # all still in the 24h window or its last minute
    for minute in range(24 * 60 + 1, 24 * 60 + SWEEP_PASS_MINUTES + 2):
        feed(state, hit(T0 + 60 * minute, ip="10.9.9.9"))
    assert len(state.visitors) == 1


def brute_force_daily_reaches(hits: list[Any]) -> Counts:
    """Page views, and each visitor's reaches of each stage that are its first in 24 hours (its
    previous reach of that stage, if any, at least 1,440 minutes earlier), for hits in
    event-time order: what CloudWatch's increments must add up to."""
    last_reach: dict[tuple[str, str], int] = {}
    totals = [0, 0, 0, 0]
    for one in hits:
        if one.is_bot or not one.is_page_view:
            continue
        totals[0] += 1
        minute = int(one.hit.time // 60)
        for index, stage in enumerate(("visit", "menu", "purchase"), 1):
            if stage == "visit" or one.stage == stage:
                previous = last_reach.get((one.visitor, stage))
                if previous is None or minute - previous >= 24 * 60:
                    totals[index] += 1
                last_reach[(one.visitor, stage)] = max(minute, previous or minute)
    return Counts(*totals)


def test_close_all_hands_over_the_open_minutes_too() -> None:
    """The last commit before a shard stops: no later event time will ever close them."""
    state, feed = ShardState("s", lateness=Lateness(60, 3600)), Feeder()
    assert state.pending_increments(close_all=True) == []
    feed(state, hit(T0 + 1, page="home"), hit(T0 + 61, ip="10.0.0.2", location=LYON))
    assert state.pending_increments() == []
    assert [p.minute for p in state.pending_increments(close_all=True)] == [M0, M0 + 1]
    state.mark_published(M0)
    assert [p.minute for p in state.pending_increments(close_all=True)] == [M0 + 1]


def test_published_increments_sum_to_first_reaches_in_24_hours() -> None:
    """What CloudWatch receives over a run of weeks: every page view once, and each visitor's
    visit, menu view and purchase once per 24 hours, with a sink publishing at random moments."""
    rng = random.Random(5)
    state, feed = ShardState("s", lateness=Lateness(0, 600)), Feeder()
    hits = []
    at = T0
    for _ in range(4000):
        at += rng.choice((0, 1, 10, 60, 120, 900, 2000))
        hits.append(
            hit(
                at,
                ip=f"198.51.100.{rng.randrange(40)}",
                page=rng.choice(("home", "menu", "order", "static", "other")),
                location=rng.choice((SEATTLE, LYON)),
                status=rng.choice((200, 200, 404)),
            )
        )
    published = Counts(0, 0, 0, 0)
    for one in hits:
        feed(state, one)
        if rng.random() < 0.05:
            pending = state.pending_increments()
            published = sum((p.totals for p in pending), published)
            if pending:
                state.mark_published(pending[-1].minute)
    feed(state, hit(at + 3600, ip="203.0.113.1", bot=True))  # closes every minute
    published = sum((p.totals for p in state.pending_increments()), published)
    assert published == brute_force_daily_reaches(hits)


def test_a_limited_summary_is_the_full_one_cut_short() -> None:
    rng = random.Random(2)
    state, feed = ShardState("s"), Feeder()
    cities = [Location(f"C{i % 7}", f"R{i}", "US", "NA") for i in range(40)]
    for i in range(600):
        feed(state, hit(T0 + i, ip=f"10.1.{i // 200}.{i % 200}", location=rng.choice(cities)))
    full, top = summarize([state], "24h"), summarize([state], "24h", limit=5)
    assert top["cities"] == full["cities"][:5]
    assert top["regions"] == full["regions"][:5]
    assert top["totals"] == full["totals"] and top["countries"] == full["countries"]
    rows = [(-row["visitors"], row["city"], row["region"]) for row in full["cities"]]
    assert rows == sorted(rows) and len(rows) == 40


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from((0, 1, 30, 59, 60, 61, 299, 300, 1800, 1801, 3600, 86_400)),
            st.integers(0, 12),  # visitor
            st.sampled_from(("home", "menu", "order", "static", "other")),
            st.integers(0, 5000),  # how late, when late
            st.booleans(),  # late?
        ),
        min_size=1,
        max_size=120,
    ),
    crash=st.integers(0, 120),
)
def test_two_shards_with_a_restore_agree_with_brute_force(
    steps: list[tuple[int, int, str, int, bool]], crash: int
) -> None:
    """Any traffic, split by address over two shards, one of them restored from a snapshot at
    any point and re-fed from the start, gives the brute-force distinct counts in every window
    (all lines within the allowance, so nothing is counted as late)."""
    lateness = Lateness(60, 5000)
    states = [ShardState("a", lateness=lateness), ShardState("b", lateness=lateness)]
    hits = []
    at = T0
    for delta, who, page, behind, late in steps:
        at += delta
        hits.append(hit(at - behind if late else at, ip=f"10.0.0.{who}", page=page))
    for position, one in enumerate(hits):
        if position == crash:
            states[0] = from_bytes(to_bytes(states[0]))
            for earlier, again in enumerate(hits[:position]):  # re-fed: all skipped
                if int(again.client_ip.rsplit(".", 1)[1]) % 2 == 0:
                    assert not states[0].add(again, earlier)
        shard = int(one.client_ip.rsplit(".", 1)[1]) % 2
        states[shard].add(one, position)
    newest = max(minute_of(h.hit.time) for h in hits)
    for window, minutes in (("5m", 5), ("1h", 60), ("24h", 1440)):
        counted = [h for h in hits if h.is_page_view and newest - minutes < minute_of(h.hit.time)]
        got = totals(states, window)
        # Not `brute_force`: that ends its window at the newest page view, here any line does.
        expected = {
            "page_views": len(counted),
            "visitors": len({h.visitor for h in counted}),
            "menu_viewers": len({h.visitor for h in counted if h.stage == "menu"}),
            "purchasers": len({h.visitor for h in counted if h.stage == "purchase"}),
        }
        assert {key: got[key] for key in expected} == expected, window
        assert got["late_lines"] == 0
