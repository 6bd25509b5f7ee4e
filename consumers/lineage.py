"""Resharding for the counters: a child shard takes over its parents' visitors.

A visitor's hits go to the shard whose hash-key range holds the MD5 of its partition key (the
client IP). After a split or a merge, a visitor seen before the reshard is in a parent's state
and its later hits reach a child. Left alone, it would count once in the parent (its last-seen
minutes there) and once more in the child: twice in any window that spans the reshard, and
its first hit in the child would look like a first visit of the day to CloudWatch.

So the child starts from its parents, not from nothing (`inherit`): every parent visitor in the
child's hash range moves to the child with its whole row (sessions, funnel, last-seen minutes,
behaviour), and the child counts its last-seen minutes in its own buckets. The parent, whose
state stays in the summary for the page views and rejects it counted, gives those visitors up
(`release`). Both are pure functions of the parents' SHARD_END snapshots and the ranges, so the
hand-over is the same after any restart:

- the child's state is built by `inherit` when its lease still has its initial checkpoint (it
  has never committed); after its first commit its own snapshot holds the inherited visitors;
- a parent's state, loaded for the summary, is `release`d of each child range once that child's
  state is loaded too, so a visitor is always counted by exactly one state.

Page views, rejects and late lines are not per visitor: they stay with the parent, which adds
them to the windows until they age out. A parent's unpublished CloudWatch increments were handed
over at its SHARD_END commit; the child starts with its own publication cursor.
"""

from __future__ import annotations

from collections.abc import Iterable

from consumers.counters import ShardState
from consumers.sessions import COLUMNS, BotRule
from consumers.windows import Lateness

_COPIED_COLUMNS = tuple(name for name, _ in COLUMNS if name not in ("keys", "place"))


def parse_hash_range(starting: str | None, ending: str | None) -> tuple[int, int] | None:
    """A lease's or ListShards' hash-key range as integers; None when it is not known."""
    if not starting or not ending:
        return None
    return int(starting), int(ending)


def _slots_in(state: ShardState, hash_range: tuple[int, int]) -> list[int]:
    """The live visitors routed into `hash_range`, in slot order (deterministic)."""
    low, high = hash_range
    route = state.visitors.route
    return [slot for slot in sorted(state.visitors.index.values()) if low <= route(slot) <= high]


def release(parent: ShardState, hash_range: tuple[int, int]) -> int:
    """Take the visitors of `hash_range` out of an ended parent's state (a child holds them now);
    returns how many. Idempotent: released visitors are gone, so a second call finds none."""
    slots = _slots_in(parent, hash_range)
    for slot in slots:
        parent.recount_visitor(slot, -1)
        parent.visitors.remove(slot)
    return len(slots)


def inherit(
    shard_id: str,
    hash_range: tuple[int, int],
    parents: Iterable[ShardState],
    *,
    lateness: Lateness | None = None,
    bot_rule: BotRule | None = None,
) -> ShardState:
    """A child shard's state before its first record: its parents' visitors of `hash_range`,
    counted in its buckets as of the newest event time any parent reached."""
    parents = sorted(parents, key=lambda p: p.shard_id)
    child = ShardState(
        shard_id,
        lateness or (parents[0].lateness if parents else Lateness()),
        bot_rule or (parents[0].bot_rule if parents else BotRule()),
    )
    newest = [p.newest_time for p in parents if p.newest_time is not None]
    if not newest:
        return child
    child.start_at(max(newest))
    table = child.visitors
    for parent in parents:
        source = parent.visitors
        for slot in _slots_in(parent, hash_range):
            place = child.intern_place(parent.places[source.place[slot]])
            new = table.add(source.keys[slot], place, 0)
            for name in _COPIED_COLUMNS:
                getattr(table, name)[new] = getattr(source, name)[slot]
            child.recount_visitor(new, 1)
    return child
