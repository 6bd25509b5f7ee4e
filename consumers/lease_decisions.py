"""What a lease coordinator should do, decided from a snapshot of the lease table. Pure: no I/O,
no clock of its own (times are passed in), so every rule is a unit test with a fake clock.

The rules are the Kinesis Client Library's LeaseTaker (DESIGN.md §4):

- **Expiry is judged on the observer's own monotonic clock.** Workers' clocks are never
  compared: an observer remembers when it last *saw* each lease's ``leaseCounter`` change
  (`ExpiryTracker`), and a lease is expired once that was more than the failover time ago. An
  owned lease seen for the first time counts as renewed at that moment (we cannot know better);
  an unowned lease is available at once (evicted on a graceful stop, or never taken).
- **Only leases that are work count.** A lease at SHARD_END is finished; a child lease is not
  work until every parent is finished (at SHARD_END, or its row gone and ListShards no longer
  listing it), the adjacent parent of a merge included. Neither kind is taken, stolen or counted
  in anyone's share.
- **Fair share** is ceil(work leases / live workers), where the live workers are the owners of
  non-expired work leases, plus us.
- **Take before steal.** Below target, take available leases (unowned or expired), oldest shard
  first, up to the target. Only when none is available, steal at most one lease per round, from
  the most loaded worker, and only when that worker holds at least two more leases than we do.
  Since no lease is available, the most loaded worker then holds at least the target, so this is
  the KCL's rule ("it is over target, or at target while we are two or more below"), and a
  worker at or above target never steals. Each steal lowers the sum of the squares of the
  workers' counts (v² + m² > (v - 1)² + (m + 1)² when v ≥ m + 2), so steals cannot cycle:
  no ping-pong.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from consumers.leases import Lease


@dataclass(slots=True)
class _Observation:
    counter: int
    changed_at: float | None
    """Observer time the counter was last seen to change; None: never renewed (unowned when
    first seen), so expired at once."""


@dataclass(slots=True)
class ExpiryTracker:
    """When this observer last saw each lease's counter change, and so which leases expired.

    Call `observe` with every table snapshot and the observer time at which the snapshot was
    *complete* (after the scan returned): a change is then never dated before the write that
    made it was sent, which is what makes the owner's self-fencing (renewal time + failover -
    margin) come strictly before anyone judges its lease expired.
    """

    failover_s: float
    _seen: dict[str, _Observation] = field(default_factory=dict)

    def observe(self, leases: Iterable[Lease], now: float) -> None:
        present: set[str] = set()
        for lease in leases:
            present.add(lease.lease_key)
            previous = self._seen.get(lease.lease_key)
            if previous is None:
                changed_at = None if lease.lease_owner is None else now
                self._seen[lease.lease_key] = _Observation(lease.lease_counter, changed_at)
            elif previous.counter != lease.lease_counter:
                previous.counter = lease.lease_counter
                previous.changed_at = now
        for gone in self._seen.keys() - present:
            del self._seen[gone]

    def is_expired(self, lease_key: str, now: float) -> bool:
        """Counter unchanged for more than the failover time, as this observer saw it (a lease
        never observed is not judged expired: we know nothing about it)."""
        seen = self._seen.get(lease_key)
        if seen is None:
            return False
        return seen.changed_at is None or now - seen.changed_at > self.failover_s

    def expired(self, now: float) -> frozenset[str]:
        return frozenset(key for key in self._seen if self.is_expired(key, now))


def parents_finished(
    lease: Lease, leases: Mapping[str, Lease], listed: Collection[str] | None = None
) -> bool:
    """Every parent (both parents of a merge) is at SHARD_END, or its row is gone and, when we
    know what ListShards lists (`listed`), the stream no longer lists it (trimmed)."""
    for parent in lease.parent_shard_ids:
        row = leases.get(parent)
        if row is not None:
            if not row.checkpoint.is_shard_end:
                return False
        elif listed is not None and parent in listed:
            return False  # listed but not yet discovered: its row is coming
    return True


def work_leases(
    leases: Mapping[str, Lease], listed: Collection[str] | None = None
) -> dict[str, Lease]:
    """The leases that are work now: not at SHARD_END, every parent finished."""
    return {
        key: lease
        for key, lease in leases.items()
        if not lease.checkpoint.is_shard_end and parents_finished(lease, leases, listed)
    }


def fair_target(work: int, workers: int) -> int:
    """ceil(work / workers): how many leases each worker should hold."""
    if work <= 0:
        return 0
    return math.ceil(work / max(workers, 1))


def lease_counts(work: Mapping[str, Lease], expired: Collection[str], me: str) -> Counter[str]:
    """Work leases per live worker: owners of non-expired work leases, and us (maybe at 0)."""
    counts: Counter[str] = Counter(
        lease.lease_owner
        for key, lease in work.items()
        if lease.lease_owner is not None and key not in expired
    )
    counts[me] += 0
    return counts


def available_leases(work: Mapping[str, Lease], expired: Collection[str]) -> list[str]:
    """Work leases anyone may take now: unowned, or expired (ours too: a lease we stopped
    renewing is taken back like anyone's). Oldest shard id first."""
    return sorted(key for key, lease in work.items() if lease.lease_owner is None or key in expired)


@dataclass(frozen=True, slots=True)
class TakePlan:
    """One taker round's decision."""

    target: int
    workers: int
    take: tuple[str, ...] = ()
    steal: str | None = None
    victim: str | None = None


def plan_takes(
    leases: Mapping[str, Lease],
    expired: Collection[str],
    me: str,
    listed: Collection[str] | None = None,
) -> TakePlan:
    """The leases `me` should take this round, or the one it should steal (module docstring)."""
    work = work_leases(leases, listed)
    counts = lease_counts(work, expired, me)
    target = fair_target(len(work), len(counts))
    needed = target - counts[me]
    if needed <= 0:
        return TakePlan(target, len(counts))
    available = available_leases(work, expired)
    if available:
        return TakePlan(target, len(counts), take=tuple(available[:needed]))
    victim, victim_count = _most_loaded(counts, me)
    if victim is None or victim_count < counts[me] + 2:
        return TakePlan(target, len(counts))
    theirs = sorted(
        key for key, lease in work.items() if lease.lease_owner == victim and key not in expired
    )
    # The newest of the victim's shards: its oldest ones are likelier to be behind, so the
    # victim keeps what it has been working through longest.
    return TakePlan(target, len(counts), steal=theirs[-1], victim=victim)


def _most_loaded(counts: Counter[str], me: str) -> tuple[str | None, int]:
    """The other worker holding the most work leases (ties: the smallest id, so every observer
    of the same snapshot picks the same one)."""
    others = [(-count, owner) for owner, count in counts.items() if owner != me]
    if not others:
        return None, 0
    negative, owner = min(others)
    return owner, -negative


def discovery_order(missing: Iterable[str], parents: Mapping[str, Iterable[str]]) -> list[str]:
    """Shards to create lease rows for, every parent before its children, so a child's row never
    exists while its still-listed parent's row does not (what `parents_finished` relies on)."""
    pending = set(missing)
    ordered: list[str] = []
    placed: set[str] = set()

    def place(shard_id: str, path: frozenset[str]) -> None:
        if shard_id in placed or shard_id in path:
            return
        for parent in sorted(parents.get(shard_id, ())):
            if parent in pending:
                place(parent, path | {shard_id})
        placed.add(shard_id)
        ordered.append(shard_id)

    for shard_id in sorted(pending):
        place(shard_id, frozenset())
    return ordered
