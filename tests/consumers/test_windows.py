"""Window rules: buckets, window edges, the watermark and lateness, session gaps."""

from __future__ import annotations

import pytest

from consumers.windows import (
    Lateness,
    is_new_session,
    leaving_minutes,
    minute_of,
    minute_start,
    window_first_minute,
    window_minutes,
    window_range,
)
from tests.consumers.state_support import T0


def test_a_minute_is_floor_of_event_time() -> None:
    assert minute_of(T0) == T0 // 60
    assert minute_of(T0 + 59.999) == T0 // 60
    assert minute_of(T0 + 60) == T0 // 60 + 1
    assert minute_of(T0 - 0.5) == T0 // 60 - 1
    assert minute_start(minute_of(T0 + 42)) == T0


def test_named_windows() -> None:
    assert [window_minutes(name) for name in ("5m", "1h", "24h")] == [5, 60, 1440]
    with pytest.raises(ValueError, match="known windows"):
        window_minutes("7d")


def test_a_window_ends_with_and_includes_the_newest_minute() -> None:
    assert list(window_range(100, 5)) == [96, 97, 98, 99, 100]
    assert window_first_minute(100, 60) == 41


def test_leaving_minutes() -> None:
    assert list(leaving_minutes(100, 101, 5)) == [96]
    assert list(leaving_minutes(100, 103, 5)) == [96, 97, 98]
    assert list(leaving_minutes(100, 100, 5)) == []
    assert list(leaving_minutes(100, 99, 5)) == []
    # A jump longer than the window: every bucket the window held, nothing it never held.
    assert list(leaving_minutes(100, 10_000, 5)) == [96, 97, 98, 99, 100]


def test_watermark_closes_minutes() -> None:
    rules = Lateness(grace_seconds=60, allowed_lateness_seconds=600)
    newest = T0 + 125  # minute 2 of the day, 5 s in
    assert rules.watermark(newest) == T0 + 65
    assert rules.last_closed_minute(newest) == minute_of(T0)  # minute 0 closed, minute 1 open
    assert rules.last_closed_minute(T0 + 120) == minute_of(T0)
    assert rules.last_closed_minute(T0 + 119) == minute_of(T0) - 1


def test_lateness_allowance_is_behind_the_watermark() -> None:
    rules = Lateness(grace_seconds=60, allowed_lateness_seconds=600)
    newest = T0 + 3600
    assert not rules.is_too_late(newest - 660, newest)  # exactly grace + allowance behind
    assert rules.is_too_late(newest - 661, newest)


def test_lateness_is_validated() -> None:
    with pytest.raises(ValueError):
        Lateness(grace_seconds=-1)
    with pytest.raises(ValueError):
        Lateness(allowed_lateness_seconds=86_401)


def test_session_gap_is_more_than_thirty_minutes() -> None:
    assert not is_new_session(T0, T0 + 1800)
    assert is_new_session(T0, T0 + 1801)
    assert not is_new_session(T0 + 100, T0)  # out of order within a session
