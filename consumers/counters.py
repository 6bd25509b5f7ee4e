"""The stateful step of one shard: sessions and funnel in, rolling counters and metric increments
out, plus the summary that merges several shards for the API.

One `ShardState` per shard: a visitor's hits all reach one shard (the partition key is the
client IP), so sessions and distinct counts never need another shard's state, and a shard's
state can be snapshotted with its checkpoint (`consumers.state_store`) and move between workers.

Use, from the shard processor::

    state = ShardState(shard_id, Lateness(...), BotRule(...))   # or state_store.from_bytes(blob)
    state.add(enriched_hit, sequence_number, sub_sequence_number)   # per parsed line
    state.add_rejected(sequence_number, sub_sequence_number)        # per line that did not parse
    # checkpoint: publish state.pending_increments() (cities folded with MinuteIncrements.by_city
    # and top_cities(summarize(all_states), N)), state.mark_published(last minute sent), then
    # write state_store.to_bytes(state) and the checkpoint that references it
    summarize(all_states, "24h")                                   # GET /api/summary

Everything runs on the worker's event loop: a summary must not be computed in another thread
while records are being added.

How exact distinct counts stay cheap
------------------------------------
A visitor is in a window iff the newest minute it was seen at (per stage) is in the window, so
each minute bucket keeps, per place, how many visitors have *that* minute as their last-seen
minute ("last-seen counts"), and moves a visitor from its old bucket to the new one when it is
seen again. Summing a window's buckets then counts every visitor exactly once. Each window
(5m, 1h, 24h) also keeps a running per-place sum of its buckets, updated as visitors move and as
minutes leave the window, so a summary costs one pass over the places, not over 1,440 buckets.

The four numbers of a (bucket, place) cell share one Python int, 32 bits each: page views and
the last-seen counts of visit, menu and purchase (`PV`, `FIELD_SHIFT`). Adding cells adds all
four at once, which keeps both the per-hit work and the memory per cell small.

Replays
-------
`add` takes the record's position (sequence number, sub-sequence number) and ignores a record at
or below the shard's high-water mark: after a restore the state already holds everything up to
the snapshot's mark, and a record re-read within a run (a re-fetched iterator) is not counted
twice. The mark is in the snapshot, so restore + replay reaches the state an uninterrupted run
reaches.

Metric increments
-----------------
CloudWatch gets, per closed minute, page views and the visitors who reached a stage in that
minute *for the first time in 24 hours* (their previous reach of that stage, if any, is outside
the 24 h window ending at this minute). So the dashboard's `Sum` over any range up to a day is
the number of distinct visitors who reached the stage in it, the very number `/api/summary` and
the simulator's ground truth report; per-session increments would count a returning visitor
once per session. Increments are kept per minute until published; the minute
through which they were published (`published_through`) is snapshotted, so a restart neither
repeats nor loses them. A late hit whose minute was already handed to the metrics sink (or
published) adds to the first minute after it instead, so it is published once, a little late.

A crash between PutMetricData succeeding and the next snapshot (which carries the advanced
cursor) would publish those minutes again after the restart; `consumers.checkpoint` closes that
gap with a marker per published minute, read back at restore.

Limits
------
- Sessions assume a visitor's hits arrive roughly in order (one IP -> one shard -> the agent
  reads files oldest first); a hit older than the visitor's last one joins its current session.
- After a reshard, a child shard's state starts with its parents' visitors of its hash-key
  range (`consumers.lineage`), so a visitor active across the split counts once.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from consumers.geo.locator import Location
from consumers.models import EnrichedHit
from consumers.sessions import (
    MENU,
    PURCHASE,
    VISIT,
    BotRule,
    VisitorTable,
    route_key,
    visitor_hash,
)
from consumers.windows import (
    LONGEST_WINDOW_MINUTES,
    WINDOW_MINUTES,
    Lateness,
    leaving_minutes,
    minute_of,
    minute_start,
    window_first_minute,
    window_minutes,
)

SWEEP_PASS_MINUTES: Final = 4 * 60
"""Event time in which the sweep passes once over the whole visitor table: a visitor gone for
a day is forgotten within 28 hours, and a hit pays well under a microsecond for it."""

PlaceKey = tuple[str, str, str, str]
"""(city, region, country, continent): a place as the summaries name it."""

CityKey = tuple[str, str, str]
"""(city, region, country): a city as CloudWatch's dimensions name it (`CITY_DIMENSIONS`), and
as `consumers.sinks.cloudwatch.bucket_metric_data` takes it."""

OTHER: Final = "Other"

FIELD_BITS: Final = 32
FIELD_MASK: Final = (1 << FIELD_BITS) - 1
PV: Final = 1
"""One page view in a packed cell (field 0)."""


def stage_unit(stage: int) -> int:
    """One visitor in a packed cell's last-seen (or increment) field of `stage`."""
    return 1 << (FIELD_BITS * (stage + 1))


VISIT_UNIT: Final = stage_unit(VISIT)
MENU_UNIT: Final = stage_unit(MENU)
PURCHASE_UNIT: Final = stage_unit(PURCHASE)
_STAGE_UNITS: Final = (VISIT_UNIT, MENU_UNIT, PURCHASE_UNIT)


class Counts(NamedTuple):
    page_views: int
    visitors: int
    menu_viewers: int
    purchasers: int

    @classmethod
    def unpack(cls, packed: int) -> Counts:
        return cls(
            packed & FIELD_MASK,
            (packed >> FIELD_BITS) & FIELD_MASK,
            (packed >> (2 * FIELD_BITS)) & FIELD_MASK,
            (packed >> (3 * FIELD_BITS)) & FIELD_MASK,
        )

    def __add__(self, other: object) -> Counts:  # type: ignore[override]
        if not isinstance(other, Counts):
            return NotImplemented
        return Counts(*(a + b for a, b in zip(self, other, strict=True)))


ZERO: Final = Counts(0, 0, 0, 0)


def _add_cell(cells: dict[int, int], place: int, delta: int) -> None:
    """Add to a packed cell, dropping it when it returns to zero (memory follows live data)."""
    value = cells.get(place, 0) + delta
    if value:
        cells[place] = value
    else:
        cells.pop(place, None)


@dataclass(frozen=True, slots=True)
class MinuteIncrements:
    """What one closed minute adds to the CloudWatch series (metric_names.py): page views and
    visitors first reaching each stage in their session, per place; `rejected_lines` in total."""

    minute: int
    by_place: dict[PlaceKey, Counts]
    rejected_lines: int = 0

    @property
    def timestamp(self) -> int:
        return minute_start(self.minute)

    @property
    def totals(self) -> Counts:
        return sum(self.by_place.values(), ZERO)

    def by_city_key(self) -> dict[CityKey, Counts]:
        """Per (city, region, country): the `by_place` argument of `bucket_metric_data`."""
        return {place[:3]: counts for place, counts in self.by_place.items()}  # type: ignore[misc]

    def by_city(self, top_cities: Collection[CityKey]) -> dict[CityKey | str, Counts]:
        """Cities in `top_cities` by name, every other one folded into `OTHER` (DESIGN.md §8)."""
        folded: dict[CityKey | str, Counts] = {}
        for place, counts in self.by_place.items():
            city: CityKey = place[:3]  # type: ignore[assignment]
            key: CityKey | str = city if city in top_cities else OTHER
            folded[key] = folded.get(key, ZERO) + counts
        return folded

    def by_region(
        self, top_regions: Collection[tuple[str, str]] | None = None
    ) -> dict[tuple[str, str] | str, Counts]:
        """(country, region) -> counts; regions outside `top_regions` (when given) -> `OTHER`."""
        folded: dict[tuple[str, str] | str, Counts] = {}
        for (_, region, country, _), counts in self.by_place.items():
            key: tuple[str, str] | str = (country, region)
            if top_regions is not None and key not in top_regions:
                key = OTHER
            folded[key] = folded.get(key, ZERO) + counts
        return folded


@dataclass(slots=True)
class ShardStats:
    """Lifetime figures of a shard (not windowed), for /metrics and for tests; all but
    `replays_skipped` (this process's run only) survive a snapshot."""

    hits: int = 0
    replays_skipped: int = 0
    bot_lines: int = 0
    behaviour_bot_views: int = 0
    too_late: int = 0


@dataclass(slots=True)
class ShardState:
    """Everything the consumer remembers about one shard between checkpoints.

    Fields are plain containers so that `consumers.state_store` can encode them; only the
    methods below change them.
    """

    shard_id: str
    lateness: Lateness = field(default_factory=Lateness)
    bot_rule: BotRule = field(default_factory=BotRule)
    visitors: VisitorTable = field(default_factory=VisitorTable)
    places: list[PlaceKey] = field(default_factory=list)
    place_index: dict[tuple[str, str, str], int] = field(default_factory=dict)
    newest_time: int | None = None
    buckets: dict[int, dict[int, int]] = field(default_factory=dict)
    """minute -> place -> packed (page views, last-seen counts of visit, menu, purchase)."""
    window_sums: dict[int, dict[int, int]] = field(default_factory=dict)
    """window length in minutes -> place -> packed sum of that window's buckets."""
    rejected: dict[int, int] = field(default_factory=dict)
    """minute -> rejected lines, counted at the newest minute when they arrived (no event time)."""
    late: dict[int, int] = field(default_factory=dict)
    """minute -> too-late lines, counted at the newest minute when they arrived."""
    rejected_unplaced: int = 0
    """Rejected lines seen before any event time; they join the first minute that appears."""
    increments: dict[int, dict[int, int]] = field(default_factory=dict)
    """minute -> place -> packed (page views, first-in-session visit, menu, purchase)."""
    rejected_increments: dict[int, int] = field(default_factory=dict)
    published_through: int | None = None
    handed_through: int | None = field(default=None, compare=False)
    """Newest minute handed to this process's metrics sink (not yet necessarily published).
    Not snapshotted: a restored state's sink has been handed nothing."""
    high_water: tuple[int, int] | None = None
    stats: ShardStats = field(default_factory=ShardStats)
    place_ids: list[int] = field(default_factory=list, init=False, repr=False, compare=False)
    """Derived, not snapshotted: one int object per place index, so the millions of cells keyed
    by a place share one key object instead of each holding its own (32 bytes a cell)."""
    window_starts: list[tuple[int, dict[int, int]]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    """Derived, not snapshotted: (first minute, running sums) of each window, longest last, as of
    the newest minute; the per-hit path compares against these instead of recomputing them."""

    def __post_init__(self) -> None:
        for span in WINDOW_MINUTES.values():
            self.window_sums.setdefault(span, {})
        self._refresh_window_starts()
        self.place_ids = list(range(len(self.places)))

    def _refresh_window_starts(self) -> None:
        newest = self.newest_minute
        if newest is None:
            self.window_starts = []
            return
        self.window_starts = [
            (window_first_minute(newest, span), self.window_sums[span])
            for span in sorted(self.window_sums)
        ]

    # Input -------------------------------------------------------------------------------------

    @property
    def newest_minute(self) -> int | None:
        return None if self.newest_time is None else minute_of(self.newest_time)

    def _is_replay(self, sequence: int | str, sub_sequence: int) -> bool:
        position = (int(sequence), sub_sequence)
        if self.high_water is not None and position <= self.high_water:
            self.stats.replays_skipped += 1
            return True
        self.high_water = position
        return False

    def add(self, hit: EnrichedHit, sequence: int | str, sub_sequence: int = 0) -> bool:
        """Count one hit at its shard position; False if the position was already counted."""
        if self._is_replay(sequence, sub_sequence):
            return False
        self._count(hit)
        return True

    def add_rejected(self, sequence: int | str, sub_sequence: int = 0) -> bool:
        """Count one line that did not parse; it has no event time of its own, so it joins the
        newest minute (deterministic on replay, unlike the wall clock)."""
        if self._is_replay(sequence, sub_sequence):
            return False
        minute = self.newest_minute
        if minute is None:
            self.rejected_unplaced += 1
        else:
            self.rejected[minute] = self.rejected.get(minute, 0) + 1
            at = self._increment_minute(minute)
            self.rejected_increments[at] = self.rejected_increments.get(at, 0) + 1
        return True

    def _count(self, hit: EnrichedHit) -> None:
        self.stats.hits += 1
        event_time = int(hit.hit.time // 1)
        newest = self.newest_time
        if newest is None or event_time > newest:
            # Every line moves event time, bots' too: the watermark is about the stream.
            self._advance(event_time)
        if hit.is_bot:
            self.stats.bot_lines += 1
            return
        if newest is not None and self.lateness.is_too_late(event_time, newest):
            minute = minute_of(newest)
            self.late[minute] = self.late.get(minute, 0) + 1
            self.stats.too_late += 1
            return
        visitors = self.visitors
        key = visitor_hash(hit.visitor)
        slot = visitors.index.get(key)
        if not hit.is_page_view:
            if slot is not None:
                if hit.page == "static":
                    visitors.asset_loaded(slot, event_time)
                else:
                    visitors.touch(slot, event_time)
            return
        if slot is None:
            slot = visitors.add(key, self._intern(hit), event_time, route_key(hit.hit.client_ip))
        if not visitors.page_view(slot, event_time, self.bot_rule):
            self.stats.behaviour_bot_views += 1
            return
        minute = minute_of(event_time)
        place = self.place_ids[visitors.place[slot]]
        self._page_view(minute, place)
        self._seen(slot, VISIT, minute, place)
        stage = hit.stage
        if stage == "menu":
            self._seen(slot, MENU, minute, place)
        elif stage == "purchase":
            self._seen(slot, PURCHASE, minute, place)

    def add_columns(
        self,
        sequences: Sequence[int | str],
        sub_sequences: Sequence[int],
        times: Sequence[float],
        logged_ips: Sequence[str],
        visitors: Sequence[str],
        locations: Sequence[Location],
        bots: Sequence[bool],
        pages: Sequence[str],
        page_views: Sequence[bool],
        stages: Sequence[str | None],
    ) -> int:
        """`add` for a run of hits given as parallel columns in shard order, the fields of
        `EnrichedHit` that counting reads (`logged_ips` is `hit.hit.client_ip`); returns how many
        were counted (the others were replays).

        The processor's hot path (`consumers.processor.count_in_shard_order`): the counting of
        one `add` per hit, without building an `EnrichedHit` and a `Hit` per line only to read
        seven fields back, and with each distinct visitor key hashed once per call (a batch
        repeats a visitor's key on every asset). `add` stays the reference:
        tests/consumers/test_processing_columns.py checks both leave the same snapshot."""
        distinct = dict.fromkeys(visitors)
        hashes = dict(zip(distinct, map(visitor_hash, distinct), strict=True))
        counted = 0
        rows = zip(
            sequences, sub_sequences, times, logged_ips, visitors, locations, bots, pages,
            page_views, stages, strict=True,
        )  # fmt: skip
        for sequence, sub, time, ip, visitor, location, bot, page, page_view, stage in rows:
            if self._is_replay(sequence, sub):
                continue
            counted += 1
            # From here on, `_count` with the hit's fields.
            self.stats.hits += 1
            event_time = int(time // 1)
            newest = self.newest_time
            if newest is None or event_time > newest:
                self._advance(event_time)
            if bot:
                self.stats.bot_lines += 1
                continue
            if newest is not None and self.lateness.is_too_late(event_time, newest):
                minute = minute_of(newest)
                self.late[minute] = self.late.get(minute, 0) + 1
                self.stats.too_late += 1
                continue
            table = self.visitors
            key = hashes[visitor]
            slot = table.index.get(key)
            if not page_view:
                if slot is not None:
                    if page == "static":
                        table.asset_loaded(slot, event_time)
                    else:
                        table.touch(slot, event_time)
                continue
            if slot is None:
                place_key = (location.city, location.region, location.country, location.continent)
                slot = table.add(key, self.intern_place(place_key), event_time, route_key(ip))
            if not table.page_view(slot, event_time, self.bot_rule):
                self.stats.behaviour_bot_views += 1
                continue
            minute = minute_of(event_time)
            place = self.place_ids[table.place[slot]]
            self._page_view(minute, place)
            self._seen(slot, VISIT, minute, place)
            if stage == "menu":
                self._seen(slot, MENU, minute, place)
            elif stage == "purchase":
                self._seen(slot, PURCHASE, minute, place)
        return counted

    def start_at(self, event_time: int) -> None:
        """Set the event time of a state that has counted nothing yet (a child shard's, whose
        parents reached `event_time`), so its windows line up with theirs."""
        if self.newest_time is not None:
            raise ValueError(f"shard {self.shard_id} has already counted events")
        self.newest_time = event_time
        self._refresh_window_starts()

    def intern_place(self, place: PlaceKey) -> int:
        """The index of a place (city, region, country, continent), added when new."""
        index = self.place_index.get(place[:3])
        if index is None:
            index = self.place_index[place[:3]] = len(self.places)
            self.place_ids.append(index)
            self.places.append(place)
        return index

    def recount_visitor(self, slot: int, sign: int) -> None:
        """Add (`sign` 1) or take away (-1) a visitor's last-seen units in the buckets and the
        running window sums, where `_seen` puts them: how a visitor moves between the states of
        a parent and a child shard (`consumers.lineage`)."""
        starts = self.window_starts
        if not starts:
            return
        oldest_kept = starts[-1][0]
        place = self.place_ids[self.visitors.place[slot]]
        for stage, unit in enumerate(_STAGE_UNITS):
            minute = self.visitors.last_seen(stage)[slot]
            if minute < oldest_kept:  # NEVER (-1) included
                continue
            cells = self.buckets.setdefault(minute, {})
            _add_cell(cells, place, sign * unit)
            if not cells:
                del self.buckets[minute]
            for first, sums in starts:
                if minute >= first:
                    _add_cell(sums, place, sign * unit)

    def _intern(self, hit: EnrichedHit) -> int:
        location = hit.location
        return self.intern_place(
            (location.city, location.region, location.country, location.continent)
        )

    def _increment_minute(self, minute: int) -> int:
        """Where an increment for `minute` goes: its own minute, unless that minute was already
        handed to the metrics sink (whose batch is then fixed, and will be marked published
        whole); then the first minute after what was handed, so it is published once, later."""
        published, handed = self.published_through, self.handed_through
        if handed is not None and (published is None or handed > published):
            published = handed
        return minute if published is None or minute > published else published + 1

    def _page_view(self, minute: int, place: int) -> None:
        starts = self.window_starts
        if minute >= starts[-1][0]:
            _add_cell(self.buckets.setdefault(minute, {}), place, PV)
            for first, sums in starts:
                if minute >= first:
                    sums[place] = sums.get(place, 0) + PV
        cells = self.increments.setdefault(self._increment_minute(minute), {})
        cells[place] = cells.get(place, 0) + PV

    def _seen(self, slot: int, stage: int, minute: int, place: int) -> None:
        """The visitor reached `stage` at `minute`: a first-in-24-hours increment, and a move of
        its last-seen minute (from one bucket's last-seen count to another's)."""
        visitors = self.visitors
        unit = _STAGE_UNITS[stage]
        visitors.reach(slot, stage)  # the session's funnel
        column = visitors.last_seen(stage)
        old = column[slot]  # NEVER (-1) when the stage was never reached: always a day ago
        if minute - old >= LONGEST_WINDOW_MINUTES:
            cells = self.increments.setdefault(self._increment_minute(minute), {})
            cells[place] = cells.get(place, 0) + unit
        if minute <= old:
            return
        column[slot] = minute
        starts = self.window_starts
        oldest_kept = starts[-1][0]
        if old >= oldest_kept:
            _add_cell(self.buckets[old], place, -unit)
        if minute >= oldest_kept:
            _add_cell(self.buckets.setdefault(minute, {}), place, unit)
        for first, sums in starts:
            if minute >= first > old:
                sums[place] = sums.get(place, 0) + unit

    def _advance(self, event_time: int) -> None:
        """Event time moved forward: buckets leave windows, old ones are dropped, a slice of
        the visitor table is swept."""
        old_time = self.newest_time
        self.newest_time = event_time
        new_minute = minute_of(event_time)
        if old_time is None:
            if self.rejected_unplaced:
                self.rejected[new_minute] = self.rejected_unplaced
                at = self._increment_minute(new_minute)
                self.rejected_increments[at] = self.rejected_unplaced
                self.rejected_unplaced = 0
            self._refresh_window_starts()
            return
        old_minute = minute_of(old_time)
        if new_minute == old_minute:
            return
        for span, sums in self.window_sums.items():
            for minute in leaving_minutes(old_minute, new_minute, span):
                cells = self.buckets.get(minute)
                if cells:
                    for place, packed in cells.items():
                        _add_cell(sums, place, -packed)
        for minute in leaving_minutes(old_minute, new_minute, LONGEST_WINDOW_MINUTES):
            self.buckets.pop(minute, None)
            self.rejected.pop(minute, None)
            self.late.pop(minute, None)
            # Unpublished increments older than a day have no one waiting for them.
            self.increments.pop(minute, None)
            self.rejected_increments.pop(minute, None)
        self._refresh_window_starts()
        table_size = len(self.visitors.keys)
        steps = min(new_minute - old_minute, SWEEP_PASS_MINUTES)
        self.visitors.sweep(
            (table_size // SWEEP_PASS_MINUTES + 1) * steps,
            window_first_minute(new_minute, LONGEST_WINDOW_MINUTES),
            event_time,
        )

    # Queries -----------------------------------------------------------------------------------

    def window_cells(self, span: int, end_minute: int | None = None) -> dict[int, int]:
        """Place -> packed counts of the `span` minutes ending with `end_minute` (default: the
        newest minute). A later end than this shard's newest minute is answered exactly (the
        shard saw nothing since); an earlier one cannot be, for distinct visitors, and is an
        error."""
        sums = self.window_sums[span]
        newest = self.newest_minute
        if newest is None or end_minute is None or end_minute == newest:
            return dict(sums)
        if end_minute < newest:
            raise ValueError(f"shard {self.shard_id} is past minute {end_minute}")
        cells = dict(sums)
        for minute in leaving_minutes(newest, end_minute, span):
            for place, packed in self.buckets.get(minute, {}).items():
                _add_cell(cells, place, -packed)
        return cells

    def _minute_total(self, counts: dict[int, int], span: int, end_minute: int) -> int:
        first = window_first_minute(end_minute, span)
        return sum(n for minute, n in counts.items() if first <= minute <= end_minute)

    def pending_increments(self, close_all: bool = False) -> list[MinuteIncrements]:
        """Closed minutes not yet published, oldest first: what the metrics sink sends next.
        Call `mark_published` with the last minute sent once CloudWatch accepted them.

        `close_all` includes the still-open minutes too: for the last commit before a shard
        stops being read (shutdown, idle exit), when no later event time will ever close them.
        Safe because a hit that still arrives for a published minute is added to the minute
        after the publication cursor (`_increment_minute`)."""
        if self.newest_time is None and not close_all:
            return []
        last_closed = (
            None if self.newest_time is None else self.lateness.last_closed_minute(self.newest_time)
        )
        published = self.published_through
        minutes = sorted(
            m
            for m in self.increments.keys() | self.rejected_increments.keys()
            if (close_all or (last_closed is not None and m <= last_closed))
            and (published is None or m > published)
        )
        places = self.places
        return [
            MinuteIncrements(
                minute,
                {
                    places[place]: Counts.unpack(packed)
                    for place, packed in self.increments.get(minute, {}).items()
                },
                self.rejected_increments.get(minute, 0),
            )
            for minute in minutes
        ]

    def mark_handed(self, through_minute: int | None) -> None:
        """The metrics sink holds this shard's minutes through `through_minute`: later
        increments for them go to a later minute (`_increment_minute`)."""
        if through_minute is not None and (
            self.handed_through is None or through_minute > self.handed_through
        ):
            self.handed_through = through_minute

    def mark_published(self, through_minute: int) -> None:
        """Increments through `through_minute` reached CloudWatch; the cursor goes into the next
        snapshot, so a restart resumes after them."""
        if self.published_through is not None and through_minute <= self.published_through:
            return
        self.published_through = through_minute
        for minute in [m for m in self.increments if m <= through_minute]:
            del self.increments[minute]
        for minute in [m for m in self.rejected_increments if m <= through_minute]:
            del self.rejected_increments[minute]


# Summaries over several shards ------------------------------------------------------------------


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _iso(second: int | None) -> str | None:
    if second is None:
        return None
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _place_row(names: dict[str, str], counts: Counts) -> dict[str, Any]:
    return {
        **names,
        "visitors": counts.visitors,
        "menu_viewers": counts.menu_viewers,
        "purchasers": counts.purchasers,
        "page_views": counts.page_views,
        "menu_rate": _rate(counts.menu_viewers, counts.visitors),
        "purchase_rate": _rate(counts.purchasers, counts.visitors),
    }


def _ranked(packed_by_key: dict[Any, int], limit: int | None) -> list[tuple[int, Any, int]]:
    """(-visitors, key, packed) of the keys with visitors, most visitors first, ties by key
    (name first): sorting plain tuples, and building rows only for what is shown, keeps a
    summary of 20,000 places in tens of milliseconds."""
    ranked = (
        (-visitors, key, packed)
        for key, packed in packed_by_key.items()
        if (visitors := (packed >> FIELD_BITS) & FIELD_MASK)
    )
    return sorted(ranked) if limit is None else heapq.nsmallest(limit, ranked)


def summarize(
    states: Iterable[ShardState], window: str = "24h", limit: int | None = None
) -> dict[str, Any]:
    """The `GET /api/summary` body (DESIGN.md §9) for the window ending with the newest minute any
    shard has seen: totals, cities (visitors desc, then city, region, country), regions,
    countries and conversion rates. Shards are merged by place name, since each interns its own.

    `limit` keeps the first `limit` cities and regions only (a top N for a dashboard); totals
    and countries always cover everything. None lists every city, as the contract does.
    """
    span = window_minutes(window)
    shards: Sequence[ShardState] = list(states)
    newest_minutes = [s.newest_minute for s in shards if s.newest_minute is not None]
    end = max(newest_minutes) if newest_minutes else None
    packed_by_place: dict[PlaceKey, int] = {}
    rejected = late = 0
    for shard in shards:
        rejected += shard.rejected_unplaced
        if end is None or shard.newest_minute is None:
            continue
        names = shard.places
        for place, packed in shard.window_cells(span, end).items():
            key = names[place]
            packed_by_place[key] = packed_by_place.get(key, 0) + packed  # adds all four fields
        rejected += shard._minute_total(shard.rejected, span, end)
        late += shard._minute_total(shard.late, span, end)
    packed_regions: dict[tuple[str, str, str], int] = {}
    packed_countries: dict[tuple[str, str], int] = {}
    packed_total = 0
    for (_, region, country, continent), packed in packed_by_place.items():
        packed_total += packed
        region_key = (region, country, continent)
        packed_regions[region_key] = packed_regions.get(region_key, 0) + packed
        packed_countries[(country, continent)] = (
            packed_countries.get((country, continent), 0) + packed
        )
    totals = Counts.unpack(packed_total)
    newest_time = max((s.newest_time for s in shards if s.newest_time is not None), default=None)
    return {
        "window": window,
        "from": _iso(None if end is None else minute_start(window_first_minute(end, span))),
        "newest_event_time": _iso(newest_time),
        "totals": {
            "page_views": totals.page_views,
            "visitors": totals.visitors,
            "menu_viewers": totals.menu_viewers,
            "purchasers": totals.purchasers,
            "rejected_lines": rejected,
            "late_lines": late,
        },
        "conversion": {
            "menu_rate": _rate(totals.menu_viewers, totals.visitors),
            "purchase_rate": _rate(totals.purchasers, totals.visitors),
            "menu_to_purchase_rate": _rate(totals.purchasers, totals.menu_viewers),
        },
        "cities": [
            _place_row(
                {"city": city, "region": region, "country": country, "continent": continent},
                Counts.unpack(packed),
            )
            for _, (city, region, country, continent), packed in _ranked(packed_by_place, limit)
        ],
        "regions": [
            _place_row(
                {"region": region, "country": country, "continent": continent},
                Counts.unpack(packed),
            )
            for _, (region, country, continent), packed in _ranked(packed_regions, limit)
        ],
        "countries": [
            _place_row({"country": country, "continent": continent}, Counts.unpack(packed))
            for _, (country, continent), packed in _ranked(packed_countries, None)
        ],
    }


def top_cities(summary: dict[str, Any], n: int) -> list[CityKey]:
    """The `n` cities with most visitors (ties by name, as the summary sorts them): the cities
    that get their own CloudWatch series; every other one is `OTHER`. Taken from a long window
    (24 h), the set changes slowly, so few distinct metrics are billed."""
    return [(row["city"], row["region"], row["country"]) for row in summary["cities"][:n]]


def top_regions(summary: dict[str, Any], n: int) -> list[tuple[str, str]]:
    """The `n` (country, region) pairs with most visitors, for `MinuteIncrements.by_region`."""
    return [(row["country"], row["region"]) for row in summary["regions"][:n]]
