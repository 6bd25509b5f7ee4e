"""Snapshots: a round trip gives the same state; restore + replay equals an uninterrupted run."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from consumers.counters import ShardState, summarize
from consumers.models import EnrichedHit
from consumers.sessions import BotRule
from consumers.state_store import FORMAT_VERSION, MAGIC, SnapshotError, from_bytes, to_bytes
from consumers.windows import Lateness
from tests.consumers.state_support import LYON, PORTLAND_ME, SEATTLE, T0, hit


def traffic(count: int, seed: int = 3) -> list[EnrichedHit]:
    """Hours of mixed traffic with gaps, late lines, bots and returning visitors."""
    rng = random.Random(seed)
    at = T0
    hits = []
    for _ in range(count):
        at += rng.choice((0, 1, 2, 30, 90, 400))
        hits.append(
            hit(
                at - (rng.randrange(4000) if rng.random() < 0.05 else 0),
                ip=f"203.0.113.{rng.randrange(120)}",
                page=rng.choice(("home", "menu", "order", "static", "static", "other")),
                location=rng.choice((SEATTLE, LYON, PORTLAND_ME)),
                bot=rng.random() < 0.05,
                status=rng.choice((200, 200, 302, 404, 500)),
            )
        )
    return hits


def run(state: ShardState, hits: list[EnrichedHit], start: int = 0) -> ShardState:
    """Feed hits at positions start.., rejecting every 97th as a line that did not parse."""
    for position, one in enumerate(hits[start:], start):
        rejected = position % 97 == 96
        accepted = state.add_rejected(position) if rejected else state.add(one, position)
        # A metrics sink publishing now and then; it runs with the worker, not with the replay,
        # so a skipped record does not trigger it.
        if accepted and position % 500 == 499:
            pending = state.pending_increments()
            if pending:
                state.mark_published(pending[-1].minute)
    return state


def new_state() -> ShardState:
    return ShardState("shardId-000000000001", Lateness(30, 3600), BotRule(8, 20))


def test_round_trip_is_identical() -> None:
    state = run(new_state(), traffic(3000))
    data = to_bytes(state)
    restored = from_bytes(data)
    assert to_bytes(restored) == data
    for window in ("5m", "1h", "24h"):
        assert summarize([restored], window) == summarize([state], window)
    assert restored.pending_increments() == state.pending_increments()
    assert restored.high_water == state.high_water
    assert restored.stats == state.stats
    assert restored.visitors.index == state.visitors.index


def test_empty_state_round_trips() -> None:
    state = ShardState("s")
    assert to_bytes(from_bytes(to_bytes(state))) == to_bytes(state)


@pytest.mark.parametrize("crash_at", [0, 1, 777, 1500, 2999])
def test_restore_and_replay_from_the_start_equals_an_uninterrupted_run(crash_at: int) -> None:
    """The consumer restores the last snapshot and re-reads from its checkpoint or earlier;
    positions at or below the snapshot's mark are skipped, so the end state is the same."""
    hits = traffic(3000)
    uninterrupted = run(new_state(), hits)
    snapshot = to_bytes(run(new_state(), hits[:crash_at]))
    resumed = run(from_bytes(snapshot), hits)  # re-reads everything, even before the checkpoint
    assert to_bytes(resumed) == to_bytes(uninterrupted)
    assert summarize([resumed]) == summarize([uninterrupted])


def test_replay_after_the_checkpoint_only() -> None:
    hits = traffic(2000, seed=11)
    uninterrupted = run(new_state(), hits)
    resumed = run(from_bytes(to_bytes(run(new_state(), hits[:1234]))), hits, start=1234)
    assert to_bytes(resumed) == to_bytes(uninterrupted)


def test_large_sequence_numbers_survive() -> None:
    state = ShardState("s")
    sequence = 49590338271490256608559692538361571095921575989136588898
    state.add(hit(T0), sequence, 7)
    assert from_bytes(to_bytes(state)).high_water == (sequence, 7)


def test_foreign_or_damaged_bytes_are_refused() -> None:
    data = to_bytes(run(new_state(), traffic(200)))
    with pytest.raises(SnapshotError, match="magic"):
        from_bytes(b"NOTSTATE" + data[8:])
    with pytest.raises(SnapshotError, match="version"):
        from_bytes(struct.pack("<8sH", MAGIC, FORMAT_VERSION + 1) + data[10:])
    with pytest.raises(SnapshotError, match="decompress"):
        from_bytes(data[:-5])
    with pytest.raises(SnapshotError, match="short"):
        from_bytes(b"CLK")
    body = zlib.decompress(data[10:])
    with pytest.raises(SnapshotError, match=r"truncated|missing"):
        from_bytes(data[:10] + zlib.compress(body[: len(body) // 2]))
    with pytest.raises(SnapshotError, match="trailing"):
        from_bytes(data[:10] + zlib.compress(body + struct.pack("<Q", 0)))


def test_rules_come_from_the_snapshot_unless_given() -> None:
    data = to_bytes(new_state())
    assert from_bytes(data).lateness == Lateness(30, 3600)
    assert from_bytes(data).bot_rule == BotRule(8, 20)
    restored = from_bytes(data, lateness=Lateness(0, 60), bot_rule=BotRule(3, 5))
    assert (restored.lateness, restored.bot_rule) == (Lateness(0, 60), BotRule(3, 5))
