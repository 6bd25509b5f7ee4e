"""Per-visitor sessions, funnel progress and behaviour-based bot flagging, for one shard.

A shard may hold a million visitors in a day, so a visitor is not an object: it is a slot in a
few parallel `array` columns (about 51 bytes a visitor), found through one dict from the
visitor key's 64-bit hash to the slot. The columns are what `consumers.state_store` snapshots,
byte for byte, so a restored table is the very table that was saved (slots, free list and all).

What a slot remembers, and why:

- `keys`: the 64-bit hash of "client IP + user agent" (`visitor_hash`); two visitors colliding
  needs ~4e9 visitors for an even chance, far past the 1M a shard holds in a day;
- `place`: the interned place index of the visitor's address, fixed at its first page view (a
  visitor key contains the IP, so its place cannot change unless the geo database does);
- `last_seen[stage]`: the newest minute in which the visitor reached that stage (visit, menu,
  purchase), or `NEVER`. Distinct counting in `consumers.counters` needs only this: a visitor
  is in a window iff its last-seen minute is;
- `last_time`: the newest event second of any of its hits: sessions end after 30 minutes of
  inactivity (`consumers.windows.is_new_session`);
- `burst_start`, `burst_views`: a tumbling count of page views per `BotRule.within_seconds`, the
  only history the behaviour rule needs;
- `flags`: live slot, stages reached in the current session (the session's funnel), static
  asset ever loaded, behaviour bot;
- `route_high`, `route_low`: the 128-bit Kinesis hash key of the visitor's partition key (MD5 of
  the logged client IP, as the agent keys its records): which shard the visitor's hits go to.
  After a reshard a child shard takes over exactly the visitors of its hash-key range from its
  parents (`consumers.lineage`), so a visitor active across the split counts once.

Behaviour bots: a visitor that has never loaded a static asset and makes `min_page_views` page
views within `within_seconds` is flagged. Flagging is forward-only: the page view that trips the
rule and every later one are not counted (the shard counts them as `behaviour_bot_views`), but
counts already made stay. Already published CloudWatch increments cannot be retracted, and the
API keeps agreeing with what was published. Browsers load a page's CSS and images right after
the page, so a human is never flagged; the simulator's humans always do and are slow, so its
ground truth is met exactly.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import Final

from consumers.windows import is_new_session

NEVER: Final = -1
"""`last_seen` of a stage not reached (minutes are positive for any real event time)."""

VISIT: Final = 0
MENU: Final = 1
PURCHASE: Final = 2
STAGE_INDEX: Final[dict[str, int]] = {"visit": VISIT, "menu": MENU, "purchase": PURCHASE}

# flags bits
LIVE: Final = 1
SESSION_VISIT: Final = 2  # SESSION_VISIT << stage is the session bit of each stage
SESSION_MENU: Final = 4
SESSION_PURCHASE: Final = 8
SESSION_STAGES: Final = SESSION_VISIT | SESSION_MENU | SESSION_PURCHASE
ASSETS_SEEN: Final = 16
BEHAVIOUR_BOT: Final = 32

_MAX_BURST_VIEWS: Final = 0xFFFF


def route_key(partition_key: str) -> int:
    """The Kinesis hash key of a partition key: MD5 of its UTF-8 bytes as a 128-bit unsigned
    big-endian integer (what PutRecords uses to pick the shard)."""
    return int.from_bytes(
        hashlib.md5(partition_key.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest(),
        "big",
    )


def visitor_hash(visitor: str) -> int:
    """A stable 64-bit key for a visitor: `hash()` is salted per process, so it would not
    survive a snapshot and a restart; blake2b is stable and costs well under a microsecond."""
    return int.from_bytes(
        hashlib.blake2b(visitor.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


@dataclass(frozen=True, slots=True)
class BotRule:
    """Behaviour that marks a browser-looking client as a bot: `min_page_views` page views within
    `within_seconds` (counted in tumbling bursts) and never a static asset."""

    min_page_views: int = 10
    within_seconds: int = 10

    def __post_init__(self) -> None:
        if self.min_page_views < 2 or self.within_seconds < 1:
            raise ValueError("a bot rule needs at least 2 page views within at least 1 second")


# Column name -> array typecode. The order is the snapshot's order.
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("keys", "Q"),
    ("place", "I"),
    ("last_visit", "i"),
    ("last_menu", "i"),
    ("last_purchase", "i"),
    ("last_time", "q"),
    ("burst_start", "q"),
    ("burst_views", "H"),
    ("flags", "B"),
    ("route_high", "Q"),
    ("route_low", "Q"),
)
_LOW64: Final = (1 << 64) - 1


class VisitorTable:
    """The visitors of one shard, as columns; see the module docstring for what each holds."""

    __slots__ = (
        "burst_start",
        "burst_views",
        "flags",
        "free",
        "index",
        "keys",
        "last_menu",
        "last_purchase",
        "last_time",
        "last_visit",
        "place",
        "route_high",
        "route_low",
        "sweep_cursor",
    )

    def __init__(self) -> None:
        self.keys = array("Q")
        self.place = array("I")
        self.last_visit = array("i")
        self.last_menu = array("i")
        self.last_purchase = array("i")
        self.last_time = array("q")
        self.burst_start = array("q")
        self.burst_views = array("H")
        self.flags = array("B")
        self.route_high = array("Q")
        self.route_low = array("Q")
        self.index: dict[int, int] = {}
        self.free = array("I")
        self.sweep_cursor = 0

    def __len__(self) -> int:
        return len(self.index)

    def last_seen(self, stage: int) -> array[int]:
        return (self.last_visit, self.last_menu, self.last_purchase)[stage]

    def slot_of(self, key: int) -> int | None:
        return self.index.get(key)

    def add(self, key: int, place: int, event_time: int, route: int = 0) -> int:
        """A new visitor at its first page view (`route`: its `route_key`); reuses a slot freed
        by `sweep`."""
        high, low = route >> 64, route & _LOW64
        if self.free:
            slot = self.free.pop()
            self.keys[slot] = key
            self.place[slot] = place
            self.last_visit[slot] = NEVER
            self.last_menu[slot] = NEVER
            self.last_purchase[slot] = NEVER
            self.last_time[slot] = event_time
            self.burst_start[slot] = event_time
            self.burst_views[slot] = 0
            self.flags[slot] = LIVE
            self.route_high[slot] = high
            self.route_low[slot] = low
        else:
            slot = len(self.keys)
            self.keys.append(key)
            self.place.append(place)
            self.last_visit.append(NEVER)
            self.last_menu.append(NEVER)
            self.last_purchase.append(NEVER)
            self.last_time.append(event_time)
            self.burst_start.append(event_time)
            self.burst_views.append(0)
            self.flags.append(LIVE)
            self.route_high.append(high)
            self.route_low.append(low)
        self.index[key] = slot
        return slot

    def route(self, slot: int) -> int:
        return (self.route_high[slot] << 64) | self.route_low[slot]

    def remove(self, slot: int) -> None:
        """Forget a live visitor (handed over to a child shard); its slot is reused."""
        self.flags[slot] = 0
        del self.index[self.keys[slot]]
        self.free.append(slot)

    def touch(self, slot: int, event_time: int) -> None:
        """Any hit of a known visitor (a static file, a 404) keeps its session alive."""
        if is_new_session(self.last_time[slot], event_time):
            self.flags[slot] &= ~SESSION_STAGES
        if event_time > self.last_time[slot]:
            self.last_time[slot] = event_time

    def asset_loaded(self, slot: int, event_time: int) -> None:
        """A static file: a browser, not a script, so the behaviour rule no longer applies."""
        self.touch(slot, event_time)
        self.flags[slot] |= ASSETS_SEEN

    def page_view(self, slot: int, event_time: int, rule: BotRule) -> bool:
        """Session and bot bookkeeping of one page view; False when the visitor is (now) a
        behaviour bot and the view must not be counted."""
        flags = self.flags[slot]
        if is_new_session(self.last_time[slot], event_time):
            flags &= ~SESSION_STAGES
        if event_time > self.last_time[slot]:
            self.last_time[slot] = event_time
        if event_time - self.burst_start[slot] >= rule.within_seconds:
            self.burst_start[slot] = event_time
            self.burst_views[slot] = 1
        elif self.burst_views[slot] < _MAX_BURST_VIEWS:
            self.burst_views[slot] += 1
        if (
            not flags & (ASSETS_SEEN | BEHAVIOUR_BOT)
            and self.burst_views[slot] >= rule.min_page_views
        ):
            flags |= BEHAVIOUR_BOT
        self.flags[slot] = flags
        return not flags & BEHAVIOUR_BOT

    def reach(self, slot: int, stage: int) -> bool:
        """Mark a stage reached in the current session; True the first time in this session."""
        bit = SESSION_VISIT << stage
        flags = self.flags[slot]
        if flags & bit:
            return False
        self.flags[slot] = flags | bit
        return True

    def sweep(self, slots: int, oldest_kept_minute: int, newest_time: int) -> None:
        """Free up to `slots` slots' worth of table, round robin: visitors seen in no window any
        more and whose session has ended count nowhere, so forgetting them changes no count.

        Done a slice at a time as event time advances, so no single hit pays for a scan of a
        million rows; the cursor is part of the snapshot, so a restored shard sweeps alike.
        """
        size = len(self.keys)
        if not size:
            return
        remaining = min(slots, size)
        cursor = self.sweep_cursor % size
        flags, last_visit, last_time = self.flags, self.last_visit, self.last_time
        while remaining:
            end = min(size, cursor + remaining)
            for slot in range(cursor, end):
                if (
                    flags[slot] & LIVE
                    and last_visit[slot] < oldest_kept_minute
                    and is_new_session(last_time[slot], newest_time)
                ):
                    flags[slot] = 0
                    del self.index[self.keys[slot]]
                    self.free.append(slot)
            remaining -= end - cursor
            cursor = end % size
        self.sweep_cursor = cursor

    def rebuild_index(self) -> None:
        """After a restore: the index is derived from the columns, so it is not snapshotted."""
        flags, keys = self.flags, self.keys
        self.index = {keys[slot]: slot for slot in range(len(keys)) if flags[slot] & LIVE}
