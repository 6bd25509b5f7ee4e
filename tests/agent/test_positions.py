"""Checkpoints: atomic file, contiguous acknowledged prefix, back-pressure, garbage collection."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig
from agent.models import Ack, FileIdentity, Line
from agent.positions import (
    AckTracker,
    Checkpoint,
    PositionStore,
    StateDirLocked,
    _FileProgress,
    add_range,
)
from agent.tailer import LineBatch

FILE = FileIdentity(device=1, inode=42, fingerprint="f" * 32)


def progress_from(offset: int, issued_end: int) -> _FileProgress:
    return _FileProgress(Checkpoint(1, 42, offset, "/log", 0.0, 0.0), issued_end)


# add_range: the arithmetic -------------------------------------------------------------------


def test_in_order_acknowledgements_move_the_frontier() -> None:
    progress = progress_from(0, 300)
    assert add_range(progress, 0, 100) == 100
    assert progress.frontier == 100
    assert add_range(progress, 100, 300) == 200
    assert progress.frontier == 300
    assert progress.pending == []


def test_an_acknowledgement_beyond_a_hole_waits_for_the_hole() -> None:
    progress = progress_from(0, 300)
    add_range(progress, 200, 300)
    add_range(progress, 100, 200)
    assert progress.frontier == 0  # [0, 100) is still in flight
    assert progress.pending == [(100, 300)]
    add_range(progress, 0, 100)
    assert progress.frontier == 300
    assert progress.pending == []


def test_repeated_and_overlapping_acknowledgements_count_once() -> None:
    progress = progress_from(0, 300)
    assert add_range(progress, 100, 200) == 100
    assert add_range(progress, 100, 200) == 0
    assert add_range(progress, 150, 250) == 50
    assert add_range(progress, 0, 50) == 50
    assert add_range(progress, 0, 50) == 0  # below the frontier now
    assert progress.frontier == 50
    assert progress.pending == [(100, 250)]


def test_acknowledgements_are_clipped_to_what_was_issued() -> None:
    progress = progress_from(100, 200)
    assert add_range(progress, 0, 500) == 100
    assert progress.frontier == 200


@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.randoms())
def test_the_frontier_is_always_the_contiguous_acknowledged_prefix(
    sizes: list[int], rnd: random.Random
) -> None:
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    ranges = list(itertools.pairwise(bounds))
    order = ranges[:]
    rnd.shuffle(order)
    progress = progress_from(0, bounds[-1])
    acked: set[tuple[int, int]] = set()
    total = 0
    for r in order:
        total += add_range(progress, *r)
        acked.add(r)
        expected = 0
        for low, high in ranges:
            if (low, high) not in acked:
                break
            expected = high
        assert progress.frontier == expected
    assert total == bounds[-1]
    assert progress.pending == []


# PositionStore: the file ---------------------------------------------------------------------


def test_store_round_trip_and_no_temporary_file_left(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "state" / "agent-positions.json")
    assert store.load() is None  # first run
    checkpoints = {"abc": Checkpoint(1, 2, 3, "/var/log/access_log", 10.5, 11.0)}
    store.save(checkpoints)
    assert store.load() == checkpoints
    assert sorted(os.listdir(tmp_path / "state")) == ["agent-positions.json"]
    document = orjson.loads(store.path.read_bytes())
    assert document["version"] == 1
    assert document["positions"]["abc"]["offset"] == 3
    assert (store.path.stat().st_mode & 0o777) == 0o600


def test_a_corrupt_checkpoint_is_moved_aside_and_means_read_from_the_start(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "agent-positions.json")
    store.path.write_bytes(b'{"version": 1, "positions": {"abc": {"dev')
    assert store.load() == {}  # not None: a first run would skip existing lines
    assert not store.path.exists()
    assert any(name.startswith("agent-positions.json.corrupt-") for name in os.listdir(tmp_path))


def test_a_second_agent_cannot_take_the_same_state_directory(tmp_path: Path) -> None:
    first = PositionStore(tmp_path / "agent-positions.json")
    second = PositionStore(tmp_path / "agent-positions.json")
    first.lock()
    try:
        with pytest.raises(StateDirLocked):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    second.unlock()


# AckTracker: checkpoints follow acknowledgements --------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def batch(start: int, end: int, *, skipped: list[tuple[int, int]] | None = None) -> LineBatch:
    lines = [] if start == end else [Line(FILE, start, end, b"x" * (end - start - 1))]
    return LineBatch(FILE, "/var/log/access_log", start, end, lines, skipped or [])


def make_tracker(tmp_path: Path, **config: object) -> tuple[AckTracker, FakeClock]:
    clock = FakeClock()
    settings = AgentConfig(
        path=str(tmp_path / "log"),
        state_dir=tmp_path / "state",
        **config,  # type: ignore[arg-type]
    )
    tracker = AckTracker(PositionStore(settings.positions_file), settings, clock=clock)
    return tracker, clock


def test_reading_never_moves_the_checkpoint_only_acknowledgements_do(tmp_path: Path) -> None:
    tracker, _ = make_tracker(tmp_path)
    assert tracker.load() is None
    tracker.issued(batch(500, 500))  # announced: reading starts at 500
    tracker.issued(batch(500, 600))
    tracker.issued(batch(600, 700))
    assert tracker.committed(FILE.key) == 500
    assert tracker.in_flight_bytes == 200
    tracker.ack(Ack(FILE, 600, 700))
    assert tracker.committed(FILE.key) == 500
    tracker.ack(Ack(FILE, 500, 600))
    assert tracker.committed(FILE.key) == 700
    assert tracker.in_flight_bytes == 0


def test_rejected_lines_count_as_done_without_an_acknowledgement(tmp_path: Path) -> None:
    tracker, _ = make_tracker(tmp_path)
    tracker.issued(batch(0, 0))
    tracker.issued(batch(0, 300, skipped=[(100, 300)]))
    assert tracker.committed(FILE.key) == 0
    tracker.ack(Ack(FILE, 0, 100))
    assert tracker.committed(FILE.key) == 300


def test_saved_checkpoint_survives_a_restart(tmp_path: Path) -> None:
    tracker, _ = make_tracker(tmp_path)
    tracker.load()
    tracker.issued(batch(0, 0))
    tracker.issued(batch(0, 100))
    tracker.issued(batch(100, 200))
    tracker.ack(Ack(FILE, 0, 100))
    assert tracker.save()
    assert not tracker.save()  # nothing changed: no write
    again, _ = make_tracker(tmp_path)
    assert again.load() == {FILE.key: 100}  # [100, 200) was in flight: read again after restart


async def test_reading_waits_while_the_in_flight_budget_is_spent(tmp_path: Path) -> None:
    budget = 256 * 1024
    tracker, _ = make_tracker(tmp_path, max_in_flight_bytes=budget)
    tracker.issued(batch(0, 0))
    tracker.issued(batch(0, budget))
    waiter = asyncio.create_task(tracker.wait_for_room())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    tracker.ack(Ack(FILE, 0, 1000))
    await asyncio.wait_for(waiter, timeout=1)


def test_forgotten_only_when_gone_long_enough_and_fully_acknowledged(tmp_path: Path) -> None:
    tracker, clock = make_tracker(tmp_path, forget_after_s=60.0)
    tracker.issued(batch(0, 0))
    tracker.issued(batch(0, 100))
    clock.now += 3600
    assert tracker.collect_garbage() == []  # lines still in flight
    tracker.ack(Ack(FILE, 0, 100))
    tracker.live([FILE.key])
    clock.now += 30
    assert tracker.collect_garbage() == []  # seen recently
    clock.now += 31
    assert tracker.collect_garbage() == [FILE.key]
    assert tracker.committed(FILE.key) is None


async def test_run_saves_periodically_and_on_stop(tmp_path: Path) -> None:
    tracker, _ = make_tracker(tmp_path, checkpoint_interval_s=0.05)
    tracker.load()
    stop = asyncio.Event()
    runner = asyncio.create_task(tracker.run(stop))
    tracker.issued(batch(0, 0))
    tracker.issued(batch(0, 100))
    tracker.ack(Ack(FILE, 0, 100))
    await asyncio.sleep(0.2)
    assert PositionStore(tracker.store.path).load() is not None
    tracker.issued(batch(100, 150))
    tracker.ack(Ack(FILE, 100, 150))
    stop.set()
    await asyncio.wait_for(runner, timeout=2)
    saved = PositionStore(tracker.store.path).load()
    assert saved is not None
    assert saved[FILE.key].offset == 150


def test_the_first_run_leaves_a_checkpoint_file_even_with_nothing_to_record(
    tmp_path: Path,
) -> None:
    tracker, _ = make_tracker(tmp_path)
    assert tracker.load() is None
    assert tracker.save()
    again, _ = make_tracker(tmp_path)
    assert again.load() == {}  # not a first run any more: new files start at 0


async def test_a_crash_loses_nothing_and_repeats_only_what_was_in_flight(tmp_path: Path) -> None:
    """Read, acknowledge out of order, checkpoint, 'kill -9' (drop everything), restart, repeat."""
    from agent.tailer import GlobTailer

    log = tmp_path / "access_log"
    total = 20_000
    log.write_bytes(b"".join(b"%06d " % i + b"c" * (i % 50) + b"\n" for i in range(total)))
    settings = AgentConfig(
        path=str(log),
        from_start=True,
        state_dir=tmp_path / "state",
        read_chunk_bytes=8192,
        max_in_flight_bytes=64 * 1024,
    )
    rnd = random.Random(7)
    delivered: list[int] = []  # what "Kinesis" accepted, over all runs
    line_end = {int(x[:6]): i for i, x in _line_ends(log.read_bytes())}
    exposed: set[int] = set()  # delivered above the saved checkpoint at a kill: may repeat
    for _ in range(6):
        tracker = AckTracker(PositionStore(settings.positions_file), settings)
        t = GlobTailer(settings, saved=tracker.load(), flow=tracker)
        in_flight: list[LineBatch] = []
        for b in t.poll():
            in_flight.append(b)
            if rnd.random() < 0.7:  # shards acknowledge in their own order
                rnd.shuffle(in_flight)
                for done in in_flight[: rnd.randint(0, len(in_flight))]:
                    delivered.extend(int(x.data[:6]) for x in done.lines)
                    tracker.ack(Ack(done.file, done.start, done.end))
                    in_flight.remove(done)
            if rnd.random() < 0.1:
                tracker.save()
            if rnd.random() < 0.02:
                break  # kill -9: in-flight batches and unsaved acks are gone
        t.close()
        saved = PositionStore(settings.positions_file).load() or {}
        checkpoint = max((c.offset for c in saved.values()), default=0)
        exposed.update(n for n in delivered if line_end[n] > checkpoint)
    tracker = AckTracker(PositionStore(settings.positions_file), settings)
    t = GlobTailer(settings, saved=tracker.load(), flow=tracker)
    for b in t.poll():  # a last, uninterrupted run delivers the rest
        delivered.extend(int(x.data[:6]) for x in b.lines)
    assert set(delivered) == set(range(total))  # nothing missing
    repeated = {n for n, times in collections.Counter(delivered).items() if times > 1}
    assert repeated, "the scenario should include a kill after unsaved acknowledgements"
    assert repeated <= exposed  # only lines acknowledged after the last checkpoint repeat


def _line_ends(content: bytes) -> list[tuple[int, bytes]]:
    ends, position = [], 0
    for raw in content.split(b"\n")[:-1]:
        position += len(raw) + 1
        ends.append((position, raw))
    return ends


def test_nothing_is_forgotten_before_the_tailer_reports_which_files_exist(tmp_path: Path) -> None:
    tracker, clock = make_tracker(tmp_path, forget_after_s=60.0)
    tracker.load()
    tracker.issued(batch(0, 0))
    tracker.save()
    clock.now += 7200  # the agent was down for two hours
    again, _ = make_tracker(tmp_path, forget_after_s=60.0)
    again._clock = clock
    again.load()
    assert again.collect_garbage() == []
    again.live([FILE.key])  # the file is still there
    assert again.collect_garbage() == []
    assert again.committed(FILE.key) == 0


def test_reading_restarting_below_the_checkpoint_moves_the_checkpoint_down(tmp_path: Path) -> None:
    tracker, _ = make_tracker(tmp_path)
    tracker.issued(batch(0, 0))
    tracker.issued(batch(0, 100))
    tracker.ack(Ack(FILE, 0, 100))
    tracker.issued(batch(100, 200))
    assert (tracker.committed(FILE.key), tracker.in_flight_bytes) == (100, 100)
    tracker.issued(batch(0, 0))  # the tailer starts this content again from 0
    assert (tracker.committed(FILE.key), tracker.in_flight_bytes) == (0, 0)


def test_a_reading_jump_counts_the_skipped_bytes_as_done(tmp_path: Path) -> None:
    tracker, _ = make_tracker(tmp_path)
    tracker.issued(batch(0, 0))
    moved = LineBatch(
        FileIdentity(1, 43, FILE.fingerprint), "/var/log/access_log.1", 50, 100, [], []
    )
    tracker.issued(moved)  # another file (a copy), and ahead of what was issued
    assert tracker.committed(FILE.key) == 50
    tracker.ack(Ack(FILE, 50, 100))
    assert tracker.committed(FILE.key) == 100
    assert tracker.in_flight_bytes == 0
