"""Window rules on event time: one-minute buckets, the 5m/1h/24h query windows, the watermark and
how late a line may be and still count.

Only arithmetic lives here (as quix-streams keeps its window rules apart from window state):
`consumers.counters` stores the buckets and `consumers.state_store` snapshots them. Nothing here
reads a clock: every decision is a function of event times seen, so replaying the same records
after a crash decides the same way.

Vocabulary:

- a *minute* is an integer, `floor(event_time / 60)`: the bucket an event time belongs to;
- the *newest minute* is the minute of the newest event time seen on a shard; query windows end
  with it (open minutes included), so "the last hour" is the 60 minutes ending with it;
- the *watermark* is the newest event time minus `grace`: a minute is *closed* (its metric
  increments may be published) once its end is at or below the watermark;
- a line is *too late* when its event time is more than `allowed_lateness` behind the watermark:
  it is counted only as late. Lines less late are counted in their own bucket as if on time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

SECONDS_PER_MINUTE: Final = 60

WindowName = Literal["5m", "1h", "24h"]

WINDOW_MINUTES: Final[dict[str, int]] = {"5m": 5, "1h": 60, "24h": 24 * 60}
"""Query windows, in one-minute buckets. The longest one bounds how many buckets are kept."""

LONGEST_WINDOW_MINUTES: Final = max(WINDOW_MINUTES.values())

SESSION_GAP_SECONDS: Final = 30 * 60
"""Inactivity that ends a session (README, "Counting rules")."""


def minute_of(event_time: float) -> int:
    """The bucket of an event time (UTC epoch seconds); a float's fraction never moves it."""
    return int(event_time // SECONDS_PER_MINUTE)


def minute_start(minute: int) -> int:
    """The epoch second a bucket starts at (CloudWatch timestamps a datum with it)."""
    return minute * SECONDS_PER_MINUTE


def window_minutes(window: str) -> int:
    """Length in minutes of a named window; unknown names are a caller's error, said plainly."""
    try:
        return WINDOW_MINUTES[window]
    except KeyError:
        known = ", ".join(WINDOW_MINUTES)
        raise ValueError(f"unknown window {window!r}; known windows: {known}") from None


def window_first_minute(newest_minute: int, span_minutes: int) -> int:
    """The oldest bucket of the `span_minutes` window that ends with `newest_minute`."""
    return newest_minute - span_minutes + 1


def window_range(newest_minute: int, span_minutes: int) -> range:
    """The buckets of a window ending with `newest_minute`, oldest first."""
    return range(window_first_minute(newest_minute, span_minutes), newest_minute + 1)


def leaving_minutes(old_newest: int, new_newest: int, span_minutes: int) -> range:
    """Buckets that drop out of a window when its newest minute moves from `old_newest` to
    `new_newest`: what a running window sum must subtract.

    Never longer than the window itself, however far time jumps, so a gap of days in the
    traffic costs no more than a full window's worth of work.
    """
    if new_newest <= old_newest:
        return range(0)
    old_first = window_first_minute(old_newest, span_minutes)
    new_first = window_first_minute(new_newest, span_minutes)
    return range(old_first, min(new_first, old_newest + 1))


@dataclass(frozen=True, slots=True)
class Lateness:
    """How event time closes buckets and how late a line may arrive.

    - `grace_seconds`: how far behind the newest event time the watermark trails, so lines that
      arrive slightly out of order (several web servers, one shard) land before their minute
      closes and is published;
    - `allowed_lateness_seconds`: how far behind the watermark a line may still be counted in its
      own bucket. Later lines are counted only as late. At most the longest window, because older
      buckets are no longer kept.
    """

    grace_seconds: int = 60
    allowed_lateness_seconds: int = 60 * 60

    def __post_init__(self) -> None:
        if self.grace_seconds < 0 or self.allowed_lateness_seconds < 0:
            raise ValueError("grace and allowed lateness cannot be negative")
        if self.allowed_lateness_seconds > LONGEST_WINDOW_MINUTES * SECONDS_PER_MINUTE:
            raise ValueError("allowed lateness cannot exceed the longest window (24 h)")

    def watermark(self, newest_event_time: float) -> float:
        return newest_event_time - self.grace_seconds

    def is_too_late(self, event_time: float, newest_event_time: float) -> bool:
        return event_time < self.watermark(newest_event_time) - self.allowed_lateness_seconds

    def last_closed_minute(self, newest_event_time: float) -> int:
        """The newest bucket whose end is at or below the watermark."""
        return minute_of(self.watermark(newest_event_time)) - 1


def is_new_session(previous_event_time: int, event_time: int) -> bool:
    """A visitor's hit starts a new session after more than the gap of inactivity."""
    return event_time - previous_event_time > SESSION_GAP_SECONDS
