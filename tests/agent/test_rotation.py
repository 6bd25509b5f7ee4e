"""Rotation scenarios for the tailer alone (no Kinesis): every line read once, by content.

The first tests stage each scenario step by step with `GlobTailer.poll()`, so the interleaving of
writes, renames and reads is exact. The last ones run the real `logrotate` (Debian package) in
`create` and `copytruncate` modes against a writer process appending at a steady rate, with the
tailer running as it does in the agent.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from agent.config import AgentConfig
from agent.models import Ack
from agent.tailer import GlobTailer, LineBatch, SavedFile

HEADER = b"#Fields: the same first line in every file\n"


def line(n: int) -> bytes:
    return b'%08d 203.0.113.7 - - [21/Nov/2026:10:00:00 +0000] "GET /cafe/menu.php" 200\n' % n


def lines(start: int, stop: int) -> bytes:
    return b"".join(line(n) for n in range(start, stop))


def seqs(batches: list[LineBatch]) -> list[int]:
    return [int(x.data[:8]) for b in batches for x in b.lines]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def tailer(path: Path | str, **config: object) -> GlobTailer:
    saved = config.pop("saved", None)
    saved_files = config.pop("saved_files", None)
    options: dict[str, object] = {"from_start": True, "rotate_wait_s": 0.0, **config}
    settings = AgentConfig(path=str(path), **options)  # type: ignore[arg-type]
    return GlobTailer(settings, saved=saved, saved_files=saved_files)  # type: ignore[arg-type]


# Rename + create -----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["access_log", "access_log*"])
def test_rename_and_create_finishes_the_old_file_then_reads_the_new(
    tmp_path: Path, pattern: str
) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 10))
    t = tailer(tmp_path / pattern, rotate_wait_s=60.0)
    assert seqs(t.poll()) == list(range(10))
    writer = log.open("ab", buffering=0)  # the web server's descriptor
    writer.write(lines(10, 15))
    log.rename(tmp_path / "access_log.1")
    writer.write(lines(15, 20))  # written after the rename, before the server reopens
    log.write_bytes(lines(20, 25))  # logrotate's `create`, then the server's reopen
    writer.close()
    # The old file is finished first, then the new one is read.
    assert seqs(t.poll()) == list(range(10, 25))
    # A second rotation: nothing is read again.
    (tmp_path / "access_log.1").rename(tmp_path / "access_log.2")
    log.rename(tmp_path / "access_log.1")
    log.write_bytes(lines(25, 30))
    assert seqs(t.poll()) == list(range(25, 30))
    assert t.stats.truncations == 0


def test_a_renamed_file_is_closed_once_read_and_idle(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 3) + b"00000003 unterminated")
    t = tailer(log, rotate_wait_s=0.0)
    assert seqs(t.poll()) == [0, 1, 2]
    log.rename(tmp_path / "access_log.1")
    log.write_bytes(lines(4, 5))
    assert seqs(t.poll()) == [4]
    assert t.stats.files_closed == 1
    # Its unterminated last line was never shipped (never half a line), only counted.
    assert t.stats.unterminated_bytes == len(b"00000003 unterminated")


def test_a_partial_line_completed_after_the_rename_is_read_whole(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 2) + line(2)[:20])
    t = tailer(log, rotate_wait_s=60.0)
    assert seqs(t.poll()) == [0, 1]
    writer = log.open("ab", buffering=0)
    log.rename(tmp_path / "access_log.1")
    log.write_bytes(lines(3, 4))
    assert seqs(t.poll()) == [3]
    writer.write(line(2)[20:])
    writer.close()
    batches = t.poll()
    assert [x.data + b"\n" for b in batches for x in b.lines] == [line(2)]


def test_restart_after_a_rotation_while_the_agent_was_down(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 10))
    t = tailer(tmp_path / "access_log*")
    batches = t.poll()
    key = batches[0].file.key
    checkpoint = batches[0].lines[4].end  # acknowledged up to line 4
    t.close()
    append(log, lines(10, 12))
    log.rename(tmp_path / "access_log.1")
    log.write_bytes(lines(12, 15))
    t = tailer(tmp_path / "access_log*", from_start=False, saved={key: checkpoint})
    assert sorted(seqs(t.poll())) == list(range(5, 15))


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
def test_rotated_while_the_agent_was_down_with_a_single_path(tmp_path: Path, rotation: str) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 10))
    t = tailer(log)
    batches = t.poll()
    key = batches[0].file.key
    checkpoint = batches[0].lines[4].end  # acknowledged up to line 4
    st = log.stat()
    where = {key: SavedFile(str(log), st.st_dev, st.st_ino)}
    t.close()
    append(log, lines(10, 12))  # written while the agent is down
    if rotation == "rename":
        log.rename(tmp_path / "access_log.1")
    else:
        copytruncate(log, tmp_path / "access_log.1")
    append(log, lines(12, 15))
    t = tailer(log, from_start=False, saved={key: checkpoint}, saved_files=where)
    # The old content's end is found in access_log.1 although the path does not match it.
    assert sorted(seqs(t.poll())) == list(range(5, 15))
    t.poll()
    assert t.stats.files_closed == 1  # read to its end, then let go


# Copytruncate and truncation -----------------------------------------------------------------


def copytruncate(log: Path, copy: Path) -> None:
    shutil.copyfile(log, copy)
    with log.open("r+b") as f:
        f.truncate(0)


@pytest.mark.parametrize("pattern", ["access_log", "access_log*"])
def test_copytruncate_reads_the_unread_end_from_the_copy_and_the_new_content_from_0(
    tmp_path: Path, pattern: str
) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 10))
    t = tailer(tmp_path / pattern, rotate_wait_s=60.0)
    assert seqs(t.poll()) == list(range(10))
    append(log, lines(10, 15))  # not read yet when logrotate copies
    copytruncate(log, tmp_path / "access_log.1")
    append(log, lines(15, 20))
    # The old content's end (from the copy) first, then the new content.
    assert seqs(t.poll()) == list(range(10, 20))
    assert t.stats.truncations == 1
    assert t.stats.unfinished_copies == 0
    append(log, lines(20, 22))
    assert seqs(t.poll()) == [20, 21]
    # The next copytruncate renames the copy away first; still nothing read twice.
    (tmp_path / "access_log.1").rename(tmp_path / "access_log.2")
    copytruncate(log, tmp_path / "access_log.1")
    append(log, lines(22, 23))
    assert seqs(t.poll()) == [22]


def test_copytruncate_seen_between_the_copy_and_the_truncation(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 10))
    t = tailer(tmp_path / "access_log*", rotate_wait_s=60.0)
    assert seqs(t.poll()) == list(range(10))
    append(log, lines(10, 12))
    shutil.copyfile(log, tmp_path / "access_log.1")
    # The copy has the same content: it is a standby, not read a second time.
    assert seqs(t.poll()) == [10, 11]
    append(log, lines(12, 13))  # after the copy, before the truncate: lost by copytruncate
    with log.open("r+b") as f:
        f.truncate(0)
    append(log, lines(13, 15))
    assert seqs(t.poll()) == [13, 14]


def test_truncation_without_a_copy_starts_again_at_0(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 10))
    t = tailer(log)
    assert seqs(t.poll()) == list(range(10))
    with log.open("r+b") as f:
        f.truncate(0)
    assert t.poll() == []
    append(log, lines(10, 12))
    assert seqs(t.poll()) == [10, 11]
    assert t.stats.truncations == 1
    assert t.stats.unfinished_copies == 1


def test_truncation_is_seen_even_when_the_file_grew_back_past_the_old_position(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 3))
    t = tailer(log)
    assert seqs(t.poll()) == [0, 1, 2]
    with log.open("r+b") as f:
        f.truncate(0)
    append(log, lines(3, 20))  # larger than before by the time the tailer looks
    assert seqs(t.poll()) == list(range(3, 20))


# Missing, reappearing, inode reuse --------------------------------------------------------------


def test_a_file_deleted_and_created_again_is_read_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 5))
    t = tailer(log)
    assert seqs(t.poll()) == list(range(5))
    log.unlink()
    assert t.poll() == []
    assert t.poll() == []
    log.write_bytes(lines(5, 8))
    assert seqs(t.poll()) == [5, 6, 7]


def test_inode_reuse_after_a_quick_delete_and_recreate(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 50))
    t = tailer(log)
    assert seqs(t.poll()) == list(range(50))
    old_inode = log.stat().st_ino
    log.unlink()
    t.poll()  # read to the end and closed (rotate_wait 0): the inode is free for reuse
    log.write_bytes(lines(50, 52))  # shorter than the old position
    reused = log.stat().st_ino == old_inode
    assert seqs(t.poll()) == [50, 51], f"inode reused: {reused}"


# The real logrotate ------------------------------------------------------------------------------

WRITER = r"""
import os, signal, sys, time
path, rate, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
reopen = False
def on_hup(signum, frame):
    global reopen
    reopen = True
signal.signal(signal.SIGHUP, on_hup)
flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
fd = os.open(path, flags, 0o644)
print("ready", flush=True)
start = time.monotonic()
for n in range(count):
    if reopen:  # like Apache's graceful restart in logrotate's postrotate
        reopen = False
        os.close(fd)
        fd = os.open(path, flags, 0o644)
    os.write(fd, b"%08d 203.0.113.7 - - [21/Nov/2026:10:00:00 +0000] \"GET /cafe\" 200\n" % n)
    delay = start + (n + 1) / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
os.close(fd)
"""


def logrotate_config(log: Path, mode: str, writer_pid: int) -> Path:
    postrotate = (
        f"    postrotate\n        kill -HUP {writer_pid}\n    endscript\n"
        if mode == "create"
        else ""
    )
    config = log.parent / "logrotate.conf"
    config.write_text(
        f"{log} {{\n    {mode}\n    rotate 50\n    missingok\n    nocompress\n{postrotate}}}\n"
    )
    config.chmod(0o644)
    return config


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("logrotate") is None,
    reason="the real logrotate is not installed (apt-get install -y logrotate)",
)
@pytest.mark.parametrize("mode", ["create", "copytruncate"])
@pytest.mark.parametrize("pattern", ["access_log", "access_log*"])
async def test_real_logrotate_while_a_writer_appends(
    tmp_path: Path, mode: str, pattern: str
) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir(mode=0o755)
    log = logdir / "access_log"
    count, rate, rotations = 6000, 2000.0, 5
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(log), str(rate), str(count), stdout=subprocess.PIPE
    )
    assert writer.stdout is not None
    assert (await writer.stdout.readline()).strip() == b"ready"
    config = logrotate_config(log, mode, writer.pid)
    settings = AgentConfig(
        path=str(logdir / pattern), from_start=True, poll_interval_s=0.1, rotate_wait_s=1.0
    )
    t = GlobTailer(settings, saved=None)
    read: collections.Counter[int] = collections.Counter()

    async def follow() -> None:
        async for batch in t.batches():
            read.update(int(x.data[:8]) for x in batch.lines)

    follower = asyncio.create_task(follow())
    try:
        for _ in range(rotations):
            await asyncio.sleep(count / rate / (rotations + 1))
            rotate = await asyncio.create_subprocess_exec(
                *["logrotate", "-f", "-s", str(tmp_path / "logrotate.state"), str(config)],
                stderr=subprocess.PIPE,
            )
            _, stderr = await rotate.communicate()
            assert rotate.returncode == 0, stderr.decode()
        assert await asyncio.wait_for(writer.wait(), 30) == 0
        on_disk: collections.Counter[int] = collections.Counter()
        for path in logdir.glob("access_log*"):
            on_disk.update(int(x[:8]) for x in path.read_bytes().splitlines())
        deadline = time.monotonic() + 30
        while set(on_disk) - set(read) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(settings.poll_interval_s * 3)  # anything read twice shows up now
    finally:
        follower.cancel()
        if writer.returncode is None:
            writer.send_signal(signal.SIGTERM)
            await writer.wait()
        t.close()
    assert len(list(logdir.glob("access_log.*"))) == rotations
    assert max(on_disk.values()) == 1  # the writer's own output has no duplicates
    missing = sorted(set(on_disk) - set(read))
    twice = sorted(n for n, c in read.items() if c > 1)
    assert missing == [], f"{len(missing)} lines on disk were never read: {missing[:10]}"
    assert twice == [], f"{len(twice)} lines read more than once: {twice[:10]}"
    assert set(read) <= set(range(count))
    if mode == "create":
        # Rename rotation loses nothing anywhere: every line written was read, once.
        assert sorted(read) == list(range(count))
    else:
        # copytruncate can lose the lines written between its copy and its truncate; they are in
        # no file, so no tailer can read them. Everything that exists was read exactly once.
        # (measured: about 13 lines per rotation at 2,000 lines/s, a ~6 ms window).
        lost = count - len(on_disk)
        assert lost < count // 10, f"logrotate lost {lost} lines of {count}"


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
async def test_rotation_during_a_downstream_stall_loses_nothing(
    tmp_path: Path, rotation: str
) -> None:
    from agent.models import Ack
    from agent.positions import AckTracker, PositionStore

    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 5000))  # ~400 KB, more than the in-flight budget
    settings = AgentConfig(
        path=str(log),
        from_start=True,
        state_dir=tmp_path / "state",
        read_chunk_bytes=16 * 1024,
        max_in_flight_bytes=64 * 1024,
        poll_interval_s=0.05,
        rotate_wait_s=0.2,
    )
    tracker = AckTracker(PositionStore(settings.positions_file), settings)
    t = GlobTailer(settings, saved=tracker.load(), flow=tracker)
    received: list[LineBatch] = []

    async def follow() -> None:
        async for b in t.batches():
            received.append(b)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # the budget fills up; nothing is acknowledged (a stall)
    assert sum(len(b.lines) for b in received) < 5000
    append(log, lines(5000, 5100))
    if rotation == "rename":
        log.rename(tmp_path / "access_log.1")
    else:
        copytruncate(log, tmp_path / "access_log.1")
    append(log, lines(5100, 5200))
    await asyncio.sleep(0.3)  # still stalled while the rotation happens
    deadline = time.monotonic() + 10
    acked = 0
    while sum(len(b.lines) for b in received) < 5200 and time.monotonic() < deadline:
        for b in received[acked:]:
            tracker.ack(Ack(b.file, b.start, b.end))
        acked = len(received)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    follower.cancel()
    t.close()
    # Exactly once, and in order: the old content to its end, then the new file.
    assert seqs(received) == list(range(5200))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["create", "copytruncate"])
@pytest.mark.parametrize("pattern", ["access_log", "access_log*"])
async def test_the_simulators_own_rotation_while_it_writes(
    tmp_path: Path, mode: str, pattern: str
) -> None:
    clickstream = shutil.which("clickstream", path=str(Path(sys.executable).parent))
    if clickstream is None:
        pytest.skip("the clickstream command is not installed in this environment")
    log = tmp_path / "access_log"
    count = 8000
    settings = AgentConfig(
        path=str(tmp_path / pattern), from_start=True, poll_interval_s=0.1, rotate_wait_s=1.0
    )
    t = GlobTailer(settings, saved=None)
    read: collections.Counter[bytes] = collections.Counter()

    async def follow() -> None:
        async for batch in t.batches():
            read.update(x.data for x in batch.lines)

    follower = asyncio.create_task(follow())
    simulate = await asyncio.create_subprocess_exec(
        *[clickstream, "simulate", "--rate", "4000", "--lines", str(count), "--out", str(log)],
        *["--rotate-every", "1500", "--rotate-mode", mode, "--rotate-keep", "20", "--seed", "3"],
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(simulate.communicate(), timeout=60)
        assert simulate.returncode == 0, stderr.decode()
        on_disk = lines_on_disk(tmp_path)
        assert sum(on_disk.values()) == count  # the simulator rotates without losing lines
        deadline = time.monotonic() + 30
        while read != on_disk and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # anything read twice shows up now
    finally:
        follower.cancel()
        t.close()
    assert rotated_files(tmp_path) == count // 1500
    assert read - on_disk == collections.Counter(), "read more often than written"
    assert on_disk - read == collections.Counter(), "written but never read"


def lines_on_disk(directory: Path) -> collections.Counter[bytes]:
    found: collections.Counter[bytes] = collections.Counter()
    for path in directory.glob("access_log*"):
        found.update(path.read_bytes().splitlines())
    return found


def rotated_files(directory: Path) -> int:
    return len(list(directory.glob("access_log.*")))


# Random interleavings --------------------------------------------------------------------------


class Scenario:
    """A log being written and rotated, and an agent reading it (and maybe restarting).

    Every read batch is acknowledged at once; a restart saves the checkpoint first (a graceful
    stop), so no line may be read twice and none may be missed, in any interleaving the steps
    allow. What the steps do not allow is what no polling tailer can promise: a file whose whole
    content comes and goes between two looks (only a glob over rotated names could catch it),
    and truncation of lines that were never read.
    """

    def __init__(
        self, directory: Path, pattern: str, rnd: random.Random, header: bool = False
    ) -> None:
        from agent.positions import AckTracker, PositionStore

        self.rnd = rnd
        self.dir = directory
        self.log = directory / "access_log"
        self.settings = AgentConfig(
            path=str(directory / pattern),
            from_start=True,
            state_dir=directory / "state",
            rotate_wait_s=rnd.choice([0.0, 60.0]),
            read_chunk_bytes=4096,
        )
        self.new_tracker = lambda: AckTracker(
            PositionStore(self.settings.positions_file), self.settings
        )
        self.tracker = self.new_tracker()
        self.tailer: GlobTailer | None = GlobTailer(
            self.settings, saved=self.tracker.load(), flow=self.tracker
        )
        self.header = header  # every file starts with the same line (W3C-style logs)
        self.writer = self.new_file()
        self.written = 0
        self.half: bytes | None = None  # the rest of a line split across writes
        self.rotations = 0
        self.rotated_while_down = 0
        self.read: list[int] = []
        self.poll()  # the agent is running before the first line is written

    def new_file(self) -> BinaryIO:
        writer = self.log.open("ab", buffering=0)
        if self.header:
            writer.write(HEADER)
        return writer

    def start_file(self) -> None:
        if self.header:
            self.writer.write(HEADER)

    @property
    def up(self) -> bool:
        return self.tailer is not None

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        self.written += data.count(b"\n")

    def finish_half(self) -> None:
        if self.half is not None:
            self.writer.write(self.half)
            self.half = None

    def poll(self) -> None:
        if self.tailer is None:  # start again from the checkpoint file
            self.tracker = self.new_tracker()
            self.tailer = GlobTailer(
                self.settings,
                saved=self.tracker.load(),
                flow=self.tracker,
                saved_files=self.tracker.saved_files(),
            )
        for batch in self.tailer.poll():
            self.read.extend(int(x.data[:8]) for x in batch.lines if x.data[:1] != b"#")
            self.tracker.ack(Ack(batch.file, batch.start, batch.end))

    def followed(self) -> bool:
        """Whether the agent holds the file now at `log` and has read a line of it (beyond the
        header: a header-only file truncated back to its header looks unchanged to any poller)."""
        if self.tailer is None:
            return False
        inode = self.log.stat().st_ino
        least = len(HEADER) if self.header else 0
        return any(
            r.inode == inode and r.identity is not None and r.position > least
            for r in self.tailer._files.values()
        )

    def append(self) -> None:
        self.finish_half()
        self.write(lines(self.written, self.written + self.rnd.randint(1, 40)))
        if self.rnd.random() < 0.3:  # end on half a line
            extra = line(self.written)
            cut = self.rnd.randint(1, len(extra) - 1)
            self.writer.write(extra[:cut])
            self.half = extra[cut:]
            self.written += 1

    def rotate(self) -> None:
        if self.up:
            # The agent polls far more often than logs rotate: it has seen the file recently,
            # but lines may have come since (the race every rotation scheme must survive).
            self.poll()
            if self.rnd.random() < 0.5 and self.half is None and self.followed():
                self.write(lines(self.written, self.written + 2))
        elif self.rotated_while_down or not self.current_was_followed:
            return  # its content would come and go unseen
        else:
            self.rotated_while_down += 1
        self.rotations += 1
        for n in range(self.rotations - 1, 0, -1):
            older = self.dir / f"access_log.{n}"
            if older.exists():
                older.rename(self.dir / f"access_log.{n + 1}")
        if self.rnd.random() < 0.5:
            self.log.rename(self.dir / "access_log.1")
            if self.rnd.random() < 0.5 and self.half is None:  # written before the reopen
                self.write(lines(self.written, self.written + 3))
            self.finish_half()
            self.writer.close()
            self.writer = self.new_file()
        else:
            self.finish_half()
            shutil.copyfile(self.log, self.dir / "access_log.1")
            os.ftruncate(self.writer.fileno(), 0)
            self.start_file()

    def delete(self) -> None:
        """Deleted; the server writes on to it until it reopens its log."""
        if not self.up:
            return
        self.finish_half()
        self.poll()
        if self.followed():
            self.log.unlink()
            self.write(lines(self.written, self.written + 2))
            self.writer.close()
            self.writer = self.new_file()

    def truncate(self) -> None:
        """Truncated in place, everything in it already read."""
        if not self.up:
            return
        self.finish_half()
        self.poll()
        os.ftruncate(self.writer.fileno(), 0)
        self.start_file()

    def restart(self) -> None:
        if not self.up:
            return
        assert self.tailer is not None
        self.poll()
        self.current_was_followed = self.followed()
        self.tracker.save(force=True)
        self.tailer.close()
        self.tailer = None
        self.rotated_while_down = 0

    def finish(self) -> list[int]:
        self.finish_half()
        self.writer.close()
        for _ in range(3):
            self.poll()
        assert self.tailer is not None
        self.tailer.close()
        return self.read


@pytest.mark.parametrize("seed", range(int(os.environ.get("ROTATION_SEEDS", "16"))))
def test_random_interleavings_of_writes_rotations_restarts_and_reads(
    tmp_path: Path, seed: int
) -> None:
    """Appends (whole and split lines), rename+create and copytruncate rotations, deletions,
    truncations and agent restarts (rotations while it is down too), in a random order with
    reads in between: every line is read exactly once, and in the order written (the old file
    is finished before the new one)."""
    rnd = random.Random(seed)
    # Every third run: every file starts with the same header line, so contents are told apart
    # by more than their first line. (Not with restarts: after one, a rewrite that keeps the
    # header is only caught by a checkpoint that no longer falls on a line boundary, and these
    # lines are all the same length.)
    header = seed % 3 == 2
    scenario = Scenario(tmp_path, "access_log*" if seed % 2 else "access_log", rnd, header)
    steps = [
        (0.45, scenario.append),
        (0.10, scenario.rotate),
        (0.03, scenario.delete),
        (0.03, scenario.truncate),
        (0.0 if header else 0.04, scenario.restart),
        (0.35, scenario.poll),
    ]
    for _ in range(300):
        rnd.choices([step for _, step in steps], weights=[w for w, _ in steps])[0]()
    read = scenario.finish()
    counts = collections.Counter(read)
    assert [n for n, c in counts.items() if c > 1] == [], "read twice"
    assert sorted(set(range(scenario.written)) - set(counts)) == [], "never read"
    assert read == sorted(read), "out of order"


# Contents whose first lines are the same ----------------------------------------------------------


def data(batches: list[LineBatch]) -> list[bytes]:
    return [x.data for b in batches for x in b.lines]


def test_deleted_and_recreated_with_the_same_first_line(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(HEADER + b"old 1\nold 2\n")
    t = tailer(log, rotate_wait_s=60.0)  # the deleted file stays open: its inode is not reused
    assert data(t.poll()) == [HEADER[:-1], b"old 1", b"old 2"]
    log.unlink()
    log.write_bytes(HEADER + b"new 1\n")
    batches = t.poll()
    assert data(batches) == [HEADER[:-1], b"new 1"]
    # A content of its own: its checkpoint and event ids do not collide with the old one's.
    assert len(set(t.followed())) == 2


def test_renamed_and_created_with_the_same_first_line(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(HEADER + b"old 1\n")
    for pattern in ("access_log", "access_log*"):
        for path in tmp_path.glob("access_log*"):
            path.unlink()
        log.write_bytes(HEADER + b"old 1\n")
        t = tailer(tmp_path / pattern, rotate_wait_s=60.0)
        assert data(t.poll()) == [HEADER[:-1], b"old 1"]
        log.rename(tmp_path / "access_log.1")
        log.write_bytes(HEADER + b"new 1\n")
        assert data(t.poll()) == [HEADER[:-1], b"new 1"], pattern
        append(log, b"new 2\n")
        assert data(t.poll()) == [b"new 2"], pattern
        t.close()


def test_two_logs_in_a_glob_with_the_same_first_line(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(HEADER + b"a 1\n")
    (tmp_path / "b.log").write_bytes(HEADER + b"b 1\n")
    t = tailer(tmp_path / "*.log")
    assert sorted(data(t.poll())) == sorted([HEADER[:-1], b"a 1", HEADER[:-1], b"b 1"])
    append(tmp_path / "b.log", b"b 2\n")
    append(tmp_path / "a.log", b"a 2\n")
    assert sorted(data(t.poll())) == [b"a 2", b"b 2"]


def test_truncated_and_rewritten_with_the_same_first_line(tmp_path: Path) -> None:
    log = tmp_path / "access_log"
    log.write_bytes(HEADER + b"old 1\nold 2\n")
    t = tailer(log)
    assert data(t.poll()) == [HEADER[:-1], b"old 1", b"old 2"]
    with log.open("r+b") as f:
        f.truncate(0)
    log.write_bytes(HEADER + b"new 1\n")
    batches = t.poll()
    assert data(batches) == [HEADER[:-1], b"new 1"]
    first_key = batches[0].file.key
    with log.open("r+b") as f:
        f.truncate(0)
    log.write_bytes(HEADER + b"newer 1\n")
    batches = t.poll()
    assert data(batches) == [HEADER[:-1], b"newer 1"]
    assert batches[0].file.key != first_key


def test_a_copy_that_is_not_a_copy_is_read_as_new_content(tmp_path: Path) -> None:
    # copytruncate, and next to it another file that starts like the truncated content but
    # continues differently: the copy is recognised by its bytes before the position, not by its
    # first line alone.
    log = tmp_path / "access_log"
    log.write_bytes(HEADER + b"old 1\n")
    t = tailer(tmp_path / "access_log*", rotate_wait_s=60.0)
    assert data(t.poll()) == [HEADER[:-1], b"old 1"]
    append(log, b"old 2\n")
    (tmp_path / "access_log.0").write_bytes(HEADER + b"xyz 1\nxyz 2\n")  # not a copy
    copytruncate(log, tmp_path / "access_log.1")
    append(log, b"new 1\n")
    got = data(t.poll())
    assert sorted(got) == sorted([b"old 2", HEADER[:-1], b"xyz 1", b"xyz 2", b"new 1"])


@pytest.mark.parametrize("pattern", ["access_log", "access_log*"])
def test_a_copy_that_ends_before_the_read_position_is_still_the_copy(
    tmp_path: Path, pattern: str
) -> None:
    # logrotate copies, then truncates; lines written in between were read from the original but
    # are in no copy. The copy is still recognised (by the bytes before an earlier position) and
    # nothing in it is read again.
    log = tmp_path / "access_log"
    log.write_bytes(lines(0, 10))
    t = tailer(tmp_path / pattern, rotate_wait_s=60.0)
    assert seqs(t.poll()) == list(range(10))
    append(log, lines(10, 12))
    shutil.copyfile(log, tmp_path / "access_log.1")  # the copy: lines 0-11
    append(log, lines(12, 14))
    assert seqs(t.poll()) == [10, 11, 12, 13]  # read from the original before the truncate
    with log.open("r+b") as f:
        f.truncate(0)
    append(log, lines(14, 16))
    assert seqs(t.poll()) == [14, 15]
    assert t.stats.unfinished_copies == 0
