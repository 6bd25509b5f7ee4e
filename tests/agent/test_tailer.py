"""The tailer on real files: cutting lines, start positions, long lines, many files, pressure."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, OversizePolicy
from agent.models import Ack, FileIdentity
from agent.positions import AckTracker, PositionStore
from agent.progress import BackfillProgress
from agent.tailer import (
    TRUNCATION_MARKER,
    GlobTailer,
    LineBatch,
    TailStats,
    cut_lines,
    may_hold_long_line,
)

FILE = FileIdentity(1, 2, "f" * 32)


def data_of(batches: list[LineBatch]) -> list[bytes]:
    return [line.data for b in batches for line in b.lines]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def tailer(path: Path | str, **config: object) -> GlobTailer:
    saved = config.pop("saved", None)
    settings = AgentConfig(path=str(path), rotate_wait_s=0.0, **config)  # type: ignore[arg-type]
    return GlobTailer(settings, saved=saved)  # type: ignore[arg-type]


class RecordingFlow:
    def __init__(self) -> None:
        self.batches: list[LineBatch] = []

    def issued(self, batch: LineBatch) -> None:
        self.batches.append(batch)

    def has_room(self) -> bool:
        return True

    async def wait_for_room(self) -> None:
        pass

    def live(self, keys: object) -> None:
        pass


# cut_lines (pure) ----------------------------------------------------------------------------


def test_cut_lines_gives_offsets_ends_and_leaves_the_partial_line() -> None:
    stats = TailStats()
    lines, skipped, end = cut_lines(
        FILE, b"ab\n\ncdef\npartial", 100, 64, OversizePolicy.TRUNCATE, stats
    )
    assert [(x.offset, x.end, x.data) for x in lines] == [
        (100, 103, b"ab"),
        (103, 104, b""),
        (104, 109, b"cdef"),
    ]
    assert skipped == []
    assert end == 109


def test_cut_lines_ships_bytes_as_they_are() -> None:
    raw = b"caf\xe9 \xff\xfe invalid utf-8\r\n"
    lines, _, _ = cut_lines(FILE, raw, 0, 64, OversizePolicy.TRUNCATE, TailStats())
    assert lines[0].data == raw[:-1]  # \r kept: the consumer decides


def test_cut_lines_without_a_newline_consumes_nothing() -> None:
    assert cut_lines(FILE, b"no newline", 7, 64, OversizePolicy.TRUNCATE, TailStats()) == (
        [],
        [],
        7,
    )


def test_over_long_lines_are_truncated_with_a_marker_and_counted() -> None:
    stats = TailStats()
    chunk = b"short\n" + b"x" * 200 + b"\nafter\n"
    lines, skipped, end = cut_lines(FILE, chunk, 0, 100, OversizePolicy.TRUNCATE, stats)
    assert [x.data for x in lines][0::2] == [b"short", b"after"]
    long = lines[1]
    assert long.data.endswith(TRUNCATION_MARKER)
    assert len(long.data) == 100
    assert (long.offset, long.end) == (6, 207)  # the checkpoint moves over the whole line
    assert stats.truncated_lines == 1
    assert skipped == []
    assert end == len(chunk)


def test_over_long_lines_are_rejected_and_counted_when_so_configured() -> None:
    stats = TailStats()
    chunk = b"short\n" + b"x" * 200 + b"\nafter\n"
    lines, skipped, _ = cut_lines(FILE, chunk, 0, 100, OversizePolicy.REJECT, stats)
    assert [x.data for x in lines] == [b"short", b"after"]
    assert skipped == [(6, 207)]
    assert stats.rejected_lines == 1


@given(st.lists(st.integers(0, 300), min_size=1, max_size=60), st.integers(64, 200))
def test_the_long_line_pre_check_never_misses_one(lengths: list[int], limit: int) -> None:
    data = b"".join(b"x" * n + b"\n" for n in lengths)
    if max(lengths) > limit:
        assert may_hold_long_line(data, limit)


def test_a_batch_holds_the_bytes_as_read_and_builds_lines_only_when_asked(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    content = b"".join(b"line %d\n" % i for i in range(100))
    log.write_bytes(content + b"partial")
    (b,) = tailer(log, from_start=True).poll()
    assert b.data == content
    assert (b.start, b.end, b.line_count) == (0, len(content), 100)
    assert [x.data for x in b.lines] == content.splitlines()
    assert b.lines[1].offset == len(b"line 0\n")


# One file through GlobTailer.poll --------------------------------------------------------------


def test_first_run_starts_at_the_end_by_default_and_reads_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"old 1\nold 2\nhalf a li")
    t = tailer(log)
    assert t.poll() == []
    append(log, b"ne\nnew 1\n")
    # Started after the last newline, not in the middle of a line.
    assert data_of(t.poll()) == [b"half a line", b"new 1"]


def test_from_start_reads_everything_and_reports_backfill_progress(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    content = b"".join(b"line %d\n" % i for i in range(1000))
    log.write_bytes(content)
    progress = BackfillProgress(enabled=False)
    settings = AgentConfig(path=str(log), from_start=True, read_chunk_bytes=4096)
    t = GlobTailer(settings, progress=progress)
    assert data_of(t.poll()) == [b"line %d" % i for i in range(1000)]
    assert progress.total == len(content)
    assert progress.done == len(content)


def test_lines_and_offsets_reconstruct_the_file(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    content = b"".join(b"%d " % i + b"y" * (i % 97) + b"\n" for i in range(5000))
    log.write_bytes(content)
    t = tailer(log, from_start=True, read_chunk_bytes=4096)
    lines = [line for b in t.poll() for line in b.lines]
    assert b"".join(line.data + b"\n" for line in lines) == content
    assert lines[0].offset == 0
    assert all(a.end == b.offset for a, b in itertools.pairwise(lines))
    assert all(content[x.offset : x.end] == x.data + b"\n" for x in lines[::250])


def test_a_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"first\n")
    t = tailer(log, from_start=True)
    assert data_of(t.poll()) == [b"first"]
    append(log, b"sec")
    assert t.poll() == []
    append(log, b"ond")
    assert t.poll() == []
    append(log, b"\nthi")
    assert data_of(t.poll()) == [b"second"]


def test_a_checkpoint_resumes_reading_and_an_unknown_file_after_a_first_run_starts_at_0(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"a first line\nsecond\nthird\n")
    t = tailer(log, from_start=True)
    key = t.poll()[0].file.key
    t.close()
    # Resume from a checkpoint after "a first line\n".
    t = tailer(log, saved={key: 13})
    assert data_of(t.poll()) == [b"second", b"third"]
    t.close()
    # A checkpoint file exists but does not know this content: it appeared while the agent was
    # down (rotation), so it is read from its start even without --from-start.
    t = tailer(log, saved={"somebody else": 5})
    assert data_of(t.poll()) == [b"a first line", b"second", b"third"]


def test_a_checkpoint_of_a_recycled_inode_does_not_apply_to_new_content(tmp_path: Path) -> None:
    # The classic inode-keyed bug: a new file gets the old file's inode and resumes at the old
    # offset. Checkpoints are keyed by the first line's fingerprint, so it starts at 0.
    log = tmp_path / "access_log"
    log.write_bytes(b"old content first line\n" + b"x\n" * 100)
    old = tailer(log, from_start=True)
    old_key = old.poll()[0].file.key
    old.close()
    log.unlink()
    log.write_bytes(b"new content first line\nsecond\n")
    t = tailer(log, saved={old_key: 120})
    assert data_of(t.poll()) == [b"new content first line", b"second"]


def test_a_line_longer_than_a_read_chunk_is_truncated_without_being_buffered(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"before\n")
    t = tailer(log, from_start=True, read_chunk_bytes=4096, max_line_bytes=1000)
    assert data_of(t.poll()) == [b"before"]
    append(log, b"L" * 300_000)  # 1 MiB-class line, not finished yet
    assert t.poll() == []
    append(log, b"L" * 300_000 + b"\nafter\n")
    lines = [line for b in t.poll() for line in b.lines]
    assert [x.data[:6] for x in lines] == [b"LLLLLL", b"after"]
    assert lines[0].data.endswith(TRUNCATION_MARKER) and len(lines[0].data) == 1000
    assert (lines[0].offset, lines[0].end) == (7, 7 + 600_001)
    assert t.stats.truncated_lines == 1


def test_a_rejected_long_line_is_skipped_and_reported_as_done(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"before\n" + b"R" * 20_000 + b"\nafter\n")
    flow = RecordingFlow()
    settings = AgentConfig(
        path=str(log),
        from_start=True,
        read_chunk_bytes=4096,
        max_line_bytes=1000,
        oversize_policy=OversizePolicy.REJECT,
    )
    t = GlobTailer(settings, flow=flow)
    assert data_of(t.poll()) == [b"before", b"after"]
    assert t.stats.rejected_lines == 1
    # Nothing to ship for the rejected line, but the checkpoint side is told it is done.
    assert [r for b in flow.batches for r in b.skipped] == [(7, 20_008)]
    spans = [(b.start, b.end) for b in flow.batches]
    assert spans == [(0, 0), (0, 7), (7, 20_008), (20_008, 20_014)]


def test_a_long_line_within_the_limit_but_longer_than_a_chunk_is_kept_whole(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access_log"
    long = b"W" * 10_000
    log.write_bytes(b"x\n" + long + b"\ny\n")
    t = tailer(log, from_start=True, read_chunk_bytes=4096, max_line_bytes=20_000)
    assert data_of(t.poll()) == [b"x", long, b"y"]


def test_many_files_from_a_glob_and_compressed_ones_excluded(tmp_path: Path) -> None:
    for i in range(60):
        (tmp_path / f"site{i}.log").write_bytes(b"".join(b"%d:%d\n" % (i, j) for j in range(20)))
    (tmp_path / "site0.log.gz").write_bytes(b"\x1f\x8b compressed\n")
    t = tailer(tmp_path / "site*.log*", from_start=True)
    got = data_of(t.poll())
    assert sorted(got) == sorted(b"%d:%d" % (i, j) for i in range(60) for j in range(20))
    assert t.stats.files_opened == 60


def test_a_file_missing_at_start_is_read_from_0_when_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    t = tailer(log)  # first run, start at end: but the file does not exist yet
    assert t.poll() == []
    log.write_bytes(b"first line\nsecond\n")
    assert data_of(t.poll()) == [b"first line", b"second"]


# Back-pressure through batches() ---------------------------------------------------------------


async def test_reading_stops_when_the_in_flight_budget_is_full(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"".join(b"%06d " % i + b"z" * 93 + b"\n" for i in range(20_000)))  # 2 MB
    settings = AgentConfig(
        path=str(log),
        from_start=True,
        state_dir=tmp_path / "state",
        read_chunk_bytes=64 * 1024,
        max_in_flight_bytes=256 * 1024,
        poll_interval_s=0.05,
    )
    tracker = AckTracker(PositionStore(settings.positions_file), settings)
    t = GlobTailer(settings, saved=tracker.load(), flow=tracker)
    received: list[LineBatch] = []

    async def consume() -> None:
        async for b in t.batches():
            received.append(b)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    read = sum(b.end - b.start for b in received)
    assert 256 * 1024 <= read < 256 * 1024 + 64 * 1024  # stopped at the budget, file untouched
    assert tracker.committed(received[0].file.key) == 0
    for b in list(received):  # acknowledge everything so far: reading resumes
        tracker.ack(Ack(b.file, b.start, b.end))
    await asyncio.sleep(0.3)
    assert sum(b.end - b.start for b in received) > read
    while sum(len(b.lines) for b in received) < 20_000:
        for b in list(received):
            tracker.ack(Ack(b.file, b.start, b.end))
        await asyncio.sleep(0.01)
    task.cancel()
    t.close()
    lines = [x.data[:6] for b in received for x in b.lines]
    assert lines == [b"%06d" % i for i in range(20_000)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_non_regular_files_are_ignored(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.log")
    (tmp_path / "real.log").write_bytes(b"line\n")
    t = tailer(tmp_path / "*.log", from_start=True)
    assert data_of(t.poll()) == [b"line"]


def test_a_gigantic_line_is_scanned_in_steps_and_never_shipped_half(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"G" * 3_000_000)  # no newline: ~730 chunks of 4 KiB, several read calls
    t = tailer(log, from_start=True, read_chunk_bytes=4096, max_line_bytes=100)
    assert t.poll() == []
    append(log, b"\nnext\n")
    got = data_of(t.poll())
    assert got == [b"G" * (100 - len(TRUNCATION_MARKER)) + TRUNCATION_MARKER, b"next"]


def test_a_checkpoint_that_does_not_fall_on_a_line_boundary_is_not_trusted(
    tmp_path: Path,
) -> None:
    # Same first line, different content (a file rewritten while the agent was stopped): the
    # checkpoint would resume mid-line, so the file is read from its start instead.
    log = tmp_path / "access_log"
    log.write_bytes(b"same first line\nold second line\nold third\n")
    t = tailer(log, from_start=True)
    key = t.poll()[0].file.key
    t.close()
    log.unlink()
    log.write_bytes(b"same first line\nnew, longer second line\n")
    t = tailer(log, saved={key: len(b"same first line\nold second line\n")})
    assert data_of(t.poll()) == [b"same first line", b"new, longer second line"]


def test_an_unreadable_file_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"line\n")
    log.chmod(0)
    if os.access(log, os.R_OK):
        pytest.skip("running as root: permissions do not apply")
    t = tailer(log)
    for _ in range(3):
        t.poll()
    assert sum("cannot open" in r.message for r in caplog.records) == 1


def test_more_files_than_the_usual_descriptor_limit(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    for i in range(1500):
        (sites / f"{i:04d}.log").write_bytes(b"site %d first\n" % i)
    t = tailer(sites / "*.log", from_start=True)
    assert len(data_of(t.poll())) == 1500
    for i in range(0, 1500, 7):
        append(sites / f"{i:04d}.log", b"site %d second\n" % i)
    assert len(data_of(t.poll())) == len(range(0, 1500, 7))
    t.close()


async def test_a_backfill_reads_the_oldest_files_first(tmp_path: Path) -> None:
    # A consumer closing windows on event time must not see last week's lines after today's.
    now = time.time()
    for age, name in [(2, "access_log.2"), (1, "access_log.1"), (0, "access_log")]:
        path = tmp_path / name
        path.write_bytes(b"".join(b"%s %04d\n" % (name.encode(), i) for i in range(2000)))
        os.utime(path, (now - age * 86400, now - age * 86400))
    settings = AgentConfig(
        path=str(tmp_path / "access_log*"), from_start=True, read_chunk_bytes=4096
    )
    t = GlobTailer(settings)
    order: list[bytes] = []
    async for batch in t.batches():
        order.extend(x.data.split()[0] for x in batch.lines)
        if len(order) >= 6000:
            break
    t.close()
    assert order == [b"access_log.2"] * 2000 + [b"access_log.1"] * 2000 + [b"access_log"] * 2000


def test_followed_files_report_their_read_position_and_size(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(b"one\ntwo\nthr")
    t = tailer(log, from_start=True)
    key = t.poll()[0].file.key
    followed = t.followed()[key]
    assert (followed.path, followed.read_position, followed.size) == (str(log), 8, 11)
    assert not followed.rotated_away
