"""Following log files: a path or glob in, batches of complete lines in file order out.

Three layers, from pure to I/O:

- `cut_lines` turns a chunk of bytes into `Line`s (pure; the hot loop).
- `FileTailer` reads one open file from a byte position with positioned bulk reads, keeps the
  position on a line boundary (a partial last line is simply read again next time, so there is no
  carry buffer to lose or to grow) and follows an over-long line without buffering it.
- `GlobTailer` polls the path or glob, maps what it finds to open files by device+inode, and
  decides for each file which content it holds (its fingerprint, see `agent.identity`) and where
  reading starts. Rotation, truncation, copytruncate and reappearing files are all handled there,
  by the same two rules: a file is followed through its open descriptor, never through its name;
  and reading positions belong to a *content* (fingerprint), not to a file.

Order: each batch is in file order, and a file that was rotated away (renamed, deleted, or a
copy holding the end of a truncated content) is read to its end before the files that replaced
it, so lines leave in the order they were written.

Flow control: reading is pull-based (an async generator stops at `yield` when nobody asks for the
next batch) and, before each read, waits on `FlowControl.wait_for_room()`, which the checkpoint
side (`agent.positions.AckTracker`) blocks while too many bytes are read but not acknowledged. The
file is the buffer: memory holds at most the in-flight budget plus one batch. Scanning goes on
during a stall, and a rotated file stays open until it is read to its end, so a file that
logrotate renames or even deletes during a long stall is still read completely.

Copytruncate, in detail. logrotate copies `access_log` to `access_log.1`, then truncates
`access_log` to zero, and the web server keeps appending to it. The reader of `access_log` notices
that the file shrank, or no longer holds its first line or the kilobyte it read last (a size check
alone would miss a file that already grew back past the old position). It gives up the old
content's key and remembers where it stopped, with hashes of the bytes before that position and a
few earlier ones. The copy starts with the same bytes and holds the same bytes at those positions:
whether it is found by the glob or by a look at the original's siblings, it continues from exactly
that byte (or, if it ends earlier, it is recognised and nothing in it is read again), so the lines
written between the last read and the copy are read from the copy, once. The truncated file has
new content and is read from 0. (Lines written after logrotate's copy and before its truncate, and
not read before it, are in neither file: copytruncate's own, documented loss.)

Contents that share a first line (a fixed header, a file written again) are told apart by their
bytes, not their first line: a copy must hold what was read, and another content gets a key of
its own (`agent.identity.distinct_key`), so checkpoints and event ids never collide.

Rotation while the agent is stopped: on start, a checkpointed content that no matched file holds
any more is looked for next to the name it was last read under; found there (renamed or copied),
it is read from its checkpoint to its end, then let go. A checkpoint is trusted only where it
falls on a line boundary of the file it is applied to.

Limits no poller escapes: a file whose whole content appears and is rotated away between two
looks is seen only if the glob matches its rotated name; a header-only file truncated back to the
same header looks unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import glob
import hashlib
import logging
import os
import re
import resource
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from agent.config import AgentConfig, OversizePolicy
from agent.identity import (
    Fingerprint,
    distinct_key,
    file_identity,
    read_fingerprint,
    still_holds,
)
from agent.models import FileIdentity, Line

log = logging.getLogger(__name__)

# Appended to a line cut at `max_line_bytes`; the consumer sees a line that does not parse and
# counts it with its reason, instead of the agent silently dropping it.
TRUNCATION_MARKER = b"...[clickstream:truncated]"
# How much of an over-long line one read call scans for its end before yielding (64 x 256 KiB).
_LONG_LINE_CHUNKS_PER_CALL = 64
# How many bytes before a reading position identify the content read up to there (a copy must hold
# the same bytes at the same place).
_TAIL_BYTES = 1024
# Reading positions remembered with the bytes before them (see `FileTailer.holds_what_was_read`).
_MARKS = 32
# Generations of `distinct_key` looked for when a file's checkpoint is sought after a restart.
_MAX_GENERATIONS = 16
# A file not written to for this long holds old lines: it is read before the files being written.
_IDLE_NS = 30 * 1_000_000_000


class LineBatch:
    """Consecutive lines of one file, and the byte range [start, end) they account for.

    Usually `data` holds the file's bytes [start, end) as read: complete lines, each with its
    newline, none over the length limit. Nothing per line is built while reading; `lines` splits
    them into `Line`s only if asked, and a shipper can take `data` whole
    (`RecordBuilder.add_chunk`). When the range held an over-long line, `data` is None and `lines`
    holds the lines as shipped (truncated ones with their marker).

    `end` can lie past the last line's end when the batch closes with rejected (oversized) lines:
    `skipped` lists those ranges, which are done without being shipped. A checkpoint may move over
    them, and `AckTracker` does so as soon as the batch is issued.
    """

    __slots__ = ("_lines", "data", "end", "file", "path", "skipped", "start")

    def __init__(
        self,
        file: FileIdentity,
        path: str,
        start: int,
        end: int,
        lines: list[Line] | None = None,
        skipped: list[tuple[int, int]] | None = None,
        *,
        data: bytes | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.start = start
        self.end = end
        self.data = data
        self._lines = lines if lines is not None or data is not None else []
        self.skipped = skipped if skipped is not None else []

    @property
    def lines(self) -> list[Line]:
        if self._lines is None:
            assert self.data is not None
            self._lines = split_lines(self.file, self.data, self.start)
        return self._lines

    @property
    def has_lines(self) -> bool:
        return bool(self.data) or bool(self._lines)

    @property
    def line_count(self) -> int:
        if self._lines is not None:
            return len(self._lines)
        return self.data.count(b"\n") if self.data else 0

    def __repr__(self) -> str:
        return (
            f"LineBatch({self.path!r}, [{self.start}, {self.end}), {self.line_count} lines,"
            f" skipped={self.skipped})"
        )


@dataclass(slots=True)
class TailStats:
    """Counters for the agent's metrics; plain ints so the hot path pays nothing for them."""

    lines: int = 0
    bytes: int = 0
    truncated_lines: int = 0
    rejected_lines: int = 0
    files_opened: int = 0
    files_closed: int = 0
    rotations: int = 0  # a followed file lost its name (renamed or deleted)
    truncations: int = 0  # a followed file's content was replaced (truncate, copytruncate)
    unterminated_bytes: int = 0  # bytes after the last newline of a file closed for good
    unfinished_copies: int = 0  # truncations whose old content's copy was not found


class SavedFile(NamedTuple):
    """Where a checkpointed content was last read (from the checkpoint file)."""

    path: str
    device: int
    inode: int


@dataclass(frozen=True, slots=True)
class _Mark:
    """A reading position and a hash of the bytes before it (a kilobyte: enough to span several
    log lines, so that two different logs do not match by a repeated user agent)."""

    offset: int
    length: int
    digest: bytes

    @classmethod
    def of(cls, offset: int, tail: bytes) -> _Mark:
        return cls(offset, len(tail), hashlib.blake2b(tail, digest_size=16).digest())

    def found_in(self, fd: int) -> bool:
        data = os.pread(fd, self.length, self.offset - self.length)
        return hashlib.blake2b(data, digest_size=16).digest() == self.digest


@dataclass(frozen=True, slots=True)
class _Stop:
    """Where reading of a content stopped in this process, for a file that may continue it."""

    position: int
    at: float
    digest: str
    tail: bytes  # the bytes just before `position`, as read: a copy holds them too
    marks: tuple[_Mark, ...]  # the same at earlier positions
    head: int  # how many first bytes the fingerprint covers
    device: int
    inode: int
    truncated: bool  # its file's content was replaced (copytruncate): a copy may continue it


@dataclass(frozen=True, slots=True)
class FollowedFile:
    path: str
    read_position: int
    size: int  # at the last scan
    rotated_away: bool  # no longer matched by the path or glob: read to its end, then let go


class FlowControl(Protocol):
    """What the tailer needs from the acknowledgement side; `AckTracker` provides it."""

    def issued(self, batch: LineBatch) -> None:
        """`batch` was read (possibly empty: that announces a file and its start position)."""

    def has_room(self) -> bool:
        """Whether more bytes may be read now."""

    async def wait_for_room(self) -> None:
        """Return when more bytes may be read; block while the in-flight budget is spent."""

    def live(self, keys: Iterable[str]) -> None:
        """The identities that exist on disk now (their checkpoints must be kept)."""


class _NoFlowControl:
    def issued(self, batch: LineBatch) -> None:
        pass

    def has_room(self) -> bool:
        return True

    async def wait_for_room(self) -> None:
        pass

    def live(self, keys: Iterable[str]) -> None:
        pass


class ProgressSink(Protocol):
    def set_total(self, total_bytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def close(self) -> None: ...


def split_lines(identity: FileIdentity, data: bytes, offset: int) -> list[Line]:
    """`Line`s of `data`: complete lines, each ending in a newline, starting at byte `offset`."""
    lines: list[Line] = []
    append = lines.append
    position = offset
    for part in data[:-1].split(b"\n"):
        end = position + len(part) + 1
        append(Line(identity, position, end, part))
        position = end
    return lines


def may_hold_long_line(data: bytes, max_line_bytes: int) -> bool:
    """False when no line in `data` (complete lines) can be longer than `max_line_bytes`.

    A line longer than that spans a whole aligned block of `max_line_bytes // 2` bytes, so a
    newline in every such block rules it out: a handful of C-speed `find`s per chunk instead of a
    look at every line. True means "maybe": the caller then measures each line.
    """
    if len(data) <= max_line_bytes + 1:
        return False
    block = max_line_bytes // 2
    find = data.find
    return any(find(b"\n", at, at + block) < 0 for at in range(0, len(data) - block + 1, block))


def cut_lines(
    identity: FileIdentity,
    chunk: bytes,
    offset: int,
    max_line_bytes: int,
    policy: OversizePolicy,
    stats: TailStats,
) -> tuple[list[Line], list[tuple[int, int]], int]:
    """The complete lines of `chunk` (which starts at file byte `offset`).

    Returns the lines, the rejected ranges and the offset just past the last newline; bytes after
    it are a partial line and are left for the next read. This is the hot loop: one `split` per
    chunk and one `Line` per line, nothing else per line unless a line is too long.
    """
    last_newline = chunk.rfind(b"\n")
    if last_newline < 0:
        return [], [], offset
    parts = chunk[:last_newline].split(b"\n")
    lines: list[Line] = []
    skipped: list[tuple[int, int]] = []
    append = lines.append
    position = offset
    if max(map(len, parts)) <= max_line_bytes:
        for data in parts:
            end = position + len(data) + 1
            append(Line(identity, position, end, data))
            position = end
    else:
        for data in parts:
            end = position + len(data) + 1
            if len(data) <= max_line_bytes:
                append(Line(identity, position, end, data))
            else:
                oversized = oversized_line(identity, position, end, data, max_line_bytes, policy)
                if oversized is None:
                    skipped.append((position, end))
                    stats.rejected_lines += 1
                else:
                    append(oversized)
                    stats.truncated_lines += 1
            position = end
    return lines, skipped, position


def oversized_line(
    identity: FileIdentity,
    offset: int,
    end: int,
    prefix: bytes,
    max_line_bytes: int,
    policy: OversizePolicy,
) -> Line | None:
    """The line to ship for an over-long line (its first bytes and the marker), None to reject.

    The result is at most `max_line_bytes` long, marker included, so the shipper's record-size
    arithmetic can rely on the limit.
    """
    if policy is OversizePolicy.REJECT:
        return None
    keep = max(0, max_line_bytes - len(TRUNCATION_MARKER))
    return Line(identity, offset, end, prefix[:keep] + TRUNCATION_MARKER)


class FileTailer:
    """One open file: reads complete lines from `position` on, for one identity at a time.

    Holds the file descriptor, not the name: after a rename the same object keeps reading the
    renamed file to its end. `position` is always the start of the next line not yet read.
    """

    __slots__ = (
        "_long_prefix",
        "_long_scan",
        "_long_start",
        "backfill_until",
        "busy",
        "chunk_bytes",
        "device",
        "eof_size",
        "fd",
        "fingerprint",
        "found_at_startup",
        "high",
        "identity",
        "inode",
        "last_growth",
        "last_stat",
        "marks",
        "matched",
        "max_line_bytes",
        "maybe_more",
        "path",
        "policy",
        "position",
        "rotated",
        "size",
        "tail",
        "unmatched_since",
    )

    def __init__(
        self,
        path: str,
        fd: int,
        device: int,
        inode: int,
        *,
        chunk_bytes: int,
        max_line_bytes: int,
        policy: OversizePolicy,
        now: float,
    ) -> None:
        self.path = path
        self.fd = fd
        self.device = device
        self.inode = inode
        self.chunk_bytes = chunk_bytes
        self.max_line_bytes = max_line_bytes
        self.policy = policy
        self.fingerprint: Fingerprint | None = None
        self.identity: FileIdentity | None = None
        self.position = 0
        self.size = 0
        # The furthest extent this content is known to have had; less than that is a truncation.
        self.high = 0
        # The size seen when a read last found nothing new; only growth past it is worth a read.
        self.eof_size = -1
        self.last_growth = now
        self.last_stat = (-1, -1)  # (size, mtime) at the last look
        self.matched = True
        self.unmatched_since = now
        self.maybe_more = False
        self.busy = False  # stopped in the middle of a long line, not at the end of the file
        # Renamed, unlinked, or a copy holding an old content's end: old lines, read first.
        self.rotated = False
        self.found_at_startup = False
        self.backfill_until = 0
        # The last bytes before `position`, as read: what a copy of this content must also hold;
        # and the same at the last few reading positions (a copy may end before `position`).
        self.tail = b""
        self.marks: deque[_Mark] = deque(maxlen=_MARKS)
        # An over-long line being followed: where it starts, how far it was scanned, its head.
        self._long_start: int | None = None
        self._long_scan = 0
        self._long_prefix = b""

    @property
    def resume_position(self) -> int:
        """Where reading would start again: the current line, even if it is half scanned."""
        return self.position if self._long_start is None else self._long_start

    def start(self, fingerprint: Fingerprint, identity: FileIdentity, position: int) -> None:
        self.fingerprint = fingerprint
        self.identity = identity
        self.position = position
        before = min(_TAIL_BYTES, position)
        self.tail = os.pread(self.fd, before, position - before) if before else b""
        self.marks.clear()
        self.marks.append(_Mark.of(position, self.tail))
        self._long_start = None
        self.maybe_more = True

    def forget_content(self) -> None:
        """The file's content was replaced (truncated): what it held is no longer here."""
        self.fingerprint = None
        self.identity = None
        self.position = 0
        self.high = 0
        self.eof_size = -1
        self._long_start = None
        self._long_prefix = b""
        self.maybe_more = False

    def read_batch(self, stats: TailStats) -> LineBatch | None:
        """The next complete lines, or None when there are none yet (end of file or half a line).

        One positioned read of `chunk_bytes`; the bytes after the last newline are read again next
        time rather than kept, which keeps `position` on a line boundary at all times.
        """
        identity = self.identity
        self.busy = False
        if identity is None or self.fd < 0:
            return None
        if self._long_start is not None:
            return self._follow_long_line(identity, stats)
        start = self.position
        chunk = os.pread(self.fd, self.chunk_bytes, start)
        if not chunk:
            return None
        last_newline = chunk.rfind(b"\n")
        if last_newline >= 0:
            complete = chunk if last_newline == len(chunk) - 1 else chunk[: last_newline + 1]
            if not may_hold_long_line(complete, self.max_line_bytes):
                # The fast path: the bytes as read are the batch; nothing is built per line.
                end = start + len(complete)
                self.position = end
                self._remember_tail(complete)
                if end > self.high:
                    self.high = end
                stats.lines += complete.count(b"\n")
                stats.bytes += len(complete)
                return LineBatch(identity, self.path, start, end, data=complete)
        lines, skipped, end = cut_lines(
            identity, chunk, start, self.max_line_bytes, self.policy, stats
        )
        if end == start:
            # No newline in the chunk. Over the limit (or a full chunk with no end in sight): the
            # line is followed without being kept whole. Otherwise: half a line, wait for the rest.
            if len(chunk) > self.max_line_bytes or len(chunk) == self.chunk_bytes:
                self._long_start = start
                self._long_scan = start + len(chunk)
                self._long_prefix = chunk[: self.max_line_bytes + 1]
                return self._follow_long_line(identity, stats)
            return None
        self.position = end
        self._remember_tail(chunk[: end - start])
        if end > self.high:
            self.high = end
        stats.lines += len(lines)
        stats.bytes += end - start
        return LineBatch(identity, self.path, start, end, lines, skipped)

    def _follow_long_line(self, identity: FileIdentity, stats: TailStats) -> LineBatch | None:
        """Scan an over-long line for its newline, keeping at most its first bytes in memory."""
        start = self._long_start
        assert start is not None
        limit = self.max_line_bytes + 1
        for _ in range(_LONG_LINE_CHUNKS_PER_CALL):
            chunk = os.pread(self.fd, self.chunk_bytes, self._long_scan)
            if not chunk:
                return None  # the line is not finished yet: never ship half a line
            newline = chunk.find(b"\n")
            take = len(chunk) if newline < 0 else newline
            if len(self._long_prefix) < limit:
                self._long_prefix += chunk[: min(take, limit - len(self._long_prefix))]
            if newline < 0:
                self._long_scan += len(chunk)
                continue
            end = self._long_scan + newline + 1
            data = self._long_prefix
            self._long_start = None
            self._long_prefix = b""
            self.position = end
            self.tail = chunk[: newline + 1][-_TAIL_BYTES:]
            self.marks.append(_Mark.of(end, self.tail))
            self.high = max(self.high, end)
            stats.bytes += end - start
            if end - 1 - start <= self.max_line_bytes:
                stats.lines += 1
                whole = Line(identity, start, end, data)
                return LineBatch(identity, self.path, start, end, [whole])
            line = oversized_line(identity, start, end, data, self.max_line_bytes, self.policy)
            if line is None:
                stats.rejected_lines += 1
                return LineBatch(identity, self.path, start, end, [], [(start, end)])
            stats.truncated_lines += 1
            stats.lines += 1
            return LineBatch(identity, self.path, start, end, [line])
        # A gigantic line: give the event loop (and the other files) a turn, then go on.
        self.busy = True
        return None

    def _remember_tail(self, consumed: bytes) -> None:
        if len(consumed) >= _TAIL_BYTES:
            self.tail = consumed[-_TAIL_BYTES:]
        else:
            self.tail = (self.tail + consumed)[-_TAIL_BYTES:]
        self.marks.append(_Mark.of(self.position, self.tail))

    def holds_what_was_read(self, stop: _Stop) -> bool:
        """Whether this file is a copy of the content `stop` describes, up to its own end.

        A copy can end before the position where reading stopped: logrotate copies, then
        truncates, and lines written in between were read from the original but are in no copy.
        Then the bytes before an earlier position, remembered for that purpose, must match.
        """
        size = os.fstat(self.fd).st_size
        if size >= stop.position:
            return self.continues(stop.position, stop.tail)
        for mark in reversed(stop.marks):
            if mark.offset <= stop.head:
                break  # bytes within the first line prove nothing: every candidate has them
            if mark.offset <= size:
                return mark.found_in(self.fd)
        return False

    def continues(self, position: int, tail: bytes) -> bool:
        """Whether this file holds `tail` just before `position`: the same content as the one
        read up to there (a copy of it), not merely one with the same first line."""
        if not tail:
            return True
        return os.pread(self.fd, len(tail), position - len(tail)) == tail

    def is_line_boundary(self, position: int) -> bool:
        """Whether a line can start at `position`: the byte before it is a newline."""
        if position == 0:
            return True
        if position > self.size:
            return False
        return os.pread(self.fd, 1, position - 1) == b"\n"

    def last_line_end(self) -> int:
        """The offset just past the file's last newline: 'start at the end' without half a line."""
        end = self.size
        while end > 0:
            begin = max(0, end - self.chunk_bytes)
            newline = os.pread(self.fd, end - begin, begin).rfind(b"\n")
            if newline >= 0:
                return begin + newline + 1
            end = begin
        return 0

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1
        self.identity = None
        self.maybe_more = False


def _mtime(reader: FileTailer) -> int:
    return reader.last_stat[1]


def raise_open_files_limit() -> int:
    """Lift the soft limit on open descriptors to the hard one; returns the limit now in force.

    Every followed file is one open descriptor (that is what lets a renamed or deleted file be
    read to its end), and the usual soft limit of 1,024 is too few for a glob over many sites'
    logs; the hard limit (often 2^20 in containers) is not.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def _holds(fd: int, digest: str) -> bool:
    try:
        fingerprint = read_fingerprint(fd)
    except OSError:
        return False
    return fingerprint is not None and fingerprint.digest == digest


class GlobTailer:
    """Follows every file a path or glob matches; yields `LineBatch`es, each in file order.

    `saved` maps identity keys to checkpointed offsets; None means there is no checkpoint file at
    all (the agent's first run), the only case where `from_start=False` skips existing content.
    `saved_files` (key -> where that content was last read) tells a checkpoint's own file from
    another with the same first line, and lets a restart find contents that were rotated away
    while the agent was stopped.
    """

    def __init__(
        self,
        config: AgentConfig,
        saved: Mapping[str, int] | None = None,
        flow: FlowControl | None = None,
        progress: ProgressSink | None = None,
        saved_files: Mapping[str, SavedFile] | None = None,
    ) -> None:
        self.config = config
        self.stats = TailStats()
        self._saved = dict(saved) if saved is not None else {}
        self._saved_files = dict(saved_files or {})
        self._saved_inodes = {(f.device, f.inode) for f in self._saved_files.values()}
        self._first_run = saved is None
        self._flow: FlowControl = flow if flow is not None else _NoFlowControl()
        self._progress = progress
        self._backfill_left = 0
        # Open files by (device, inode); the reader currently reading each content, by key.
        self._files: dict[tuple[int, int], FileTailer] = {}
        self._holders: dict[str, FileTailer] = {}
        # Where reading stopped in contents no file holds right now (truncated away, closed).
        self._stops: dict[str, _Stop] = {}
        self._scanned_at = 0.0
        self._unreadable: set[str] = set()
        # One compiled pattern for all exclusions: a glob over many files checks every name.
        patterns = "|".join(f"(?:{fnmatch.translate(x)})" for x in config.exclude) or r"(?!)"
        self._excluded = re.compile(patterns).match
        # A scan found a rotation since the reading order was last made: make it again.
        self._rotation_seen = False
        self._turn = 0
        self._closed = False

    # Lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> GlobTailer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for reader in self._files.values():
            reader.close()
        self._files.clear()
        self._holders.clear()
        if self._progress is not None:
            self._progress.close()
        self._closed = True

    # Reading ---------------------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[LineBatch]:
        """Batches of new lines, forever (until `close()`); polls when every file is at its end."""
        interval = self.config.poll_interval_s
        self.scan(startup=True)
        while not self._closed:
            progressed = False
            scan_due = False
            for reader, to_the_end in self._reading_order():
                # An old file is read to its end before the others get a turn (finish the old
                # file, then the new); a file being written gives up its turn after one batch.
                while reader.maybe_more and reader.identity is not None and reader.fd >= 0:
                    if not self._flow.has_room():
                        identity = reader.identity
                        await self._wait_for_room()
                        if self._closed:
                            return
                        if self._files.get((reader.device, reader.inode)) is not reader:
                            break  # closed by a scan while waiting: its descriptor is gone
                        if reader.identity is not identity or self._rotation_seen:
                            break  # a scan while waiting changed what should be read first
                    batch = reader.read_batch(self.stats)
                    if batch is None:
                        if reader.busy:
                            progressed = True
                            await asyncio.sleep(0)
                            continue
                        reader.maybe_more = False
                        reader.eof_size = reader.size
                        break
                    progressed = True
                    self._issue(reader, batch)
                    if batch.has_lines:
                        yield batch
                    else:
                        await asyncio.sleep(0)
                    scan_due = time.monotonic() - self._scanned_at >= interval
                    if scan_due or not to_the_end:
                        break
                if scan_due:
                    break
            elapsed = time.monotonic() - self._scanned_at
            if not progressed and elapsed < interval:
                await asyncio.sleep(interval - elapsed)
            if time.monotonic() - self._scanned_at >= interval:
                self.scan()

    def _reading_order(self) -> list[tuple[FileTailer, bool]]:
        """Which files to read, in which order, and whether to read each to its end at once.

        Older content first: rotated files, then files nobody has written to for a while
        (yesterday's `access_log.1` in a backfill), each oldest first and each to its end. A
        consumer that closes windows on event time must not see last week's lines after
        today's. Then the files being written, from a different one each pass, so that a busy
        file cannot starve the rest.
        """
        self._rotation_seen = False
        readers = list(self._files.values())
        if not readers:
            return []
        self._turn = (self._turn + 1) % len(readers)
        readers = readers[self._turn :] + readers[: self._turn]
        idle_before = time.time_ns() - _IDLE_NS
        rotated = sorted((r for r in readers if r.rotated), key=_mtime)
        idle = sorted((r for r in readers if not r.rotated and _mtime(r) < idle_before), key=_mtime)
        busy = [r for r in readers if not r.rotated and _mtime(r) >= idle_before]
        return [(r, True) for r in rotated + idle] + [(r, False) for r in busy]

    async def _wait_for_room(self) -> None:
        """Wait for acknowledgements, still scanning meanwhile: files rotate during a stall too,
        and checkpoints of files that still exist must keep being reported as alive."""
        interval = self.config.poll_interval_s
        while not self._flow.has_room() and not self._closed:
            try:
                await asyncio.wait_for(self._flow.wait_for_room(), timeout=interval)
            except TimeoutError:
                self.scan()

    def poll(self) -> list[LineBatch]:
        """One scan, then every complete line readable now, ignoring flow control.

        The synchronous core of `batches()`, for deterministic tests and one-shot tools.
        """
        self.scan(startup=self._scanned_at == 0.0)
        batches: list[LineBatch] = []
        for reader, _ in self._reading_order():
            while reader.identity is not None and reader.maybe_more:
                batch = reader.read_batch(self.stats)
                if batch is None:
                    if reader.busy:
                        continue
                    reader.maybe_more = False
                    reader.eof_size = reader.size
                    break
                self._issue(reader, batch)
                if batch.has_lines:
                    batches.append(batch)
        return batches

    def _issue(self, reader: FileTailer, batch: LineBatch) -> None:
        self._flow.issued(batch)
        if self._progress is not None and batch.start < min(batch.end, reader.backfill_until):
            done = min(batch.end, reader.backfill_until) - batch.start
            self._backfill_left -= done
            self._progress.advance(done)
            if self._backfill_left <= 0:
                self._progress.close()
                self._progress = None

    # Scanning --------------------------------------------------------------------------------

    def scan(self, startup: bool = False) -> None:
        """Match the path or glob, follow renames and deletions, detect replaced content."""
        now = time.monotonic()
        if startup:
            raise_open_files_limit()
        self._scanned_at = now
        seen: set[tuple[int, int]] = set()
        for path in self._matching_paths():
            try:
                st = os.stat(path)
            except OSError:
                continue  # vanished between the listing and the stat: next scan
            if not stat.S_ISREG(st.st_mode):
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue  # a second name (hard link, symlink) of a file already followed
            seen.add(key)
            reader = self._files.get(key)
            if reader is None:
                reader = self._open(path, now, startup)
                if reader is None:
                    continue
                seen.add((reader.device, reader.inode))
            if reader.path != path:
                reader.rotated = self._rotation_seen = True
            reader.path = path
            reader.matched = True
        # Files already read first; then new files that a checkpoint names by device and inode, so
        # that a checkpointed file gets its content's key before a copy of it can.
        readers = sorted(
            self._files.items(),
            key=lambda item: (item[1].identity is None, item[0] not in self._saved_inodes),
        )
        for key, reader in readers:
            if key not in seen and reader.matched:
                reader.rotated = self._rotation_seen = True
                reader.matched = False
                reader.unmatched_since = now
                self.stats.rotations += 1
                log.info("%s was renamed or deleted; reading it to its end", reader.path)
            self._refresh(reader, now, startup)
        self._adopt_orphans()
        if startup and self._saved_files:
            self._recover_moved_contents()
        self._close_finished(now)
        self._flow.live(
            {r.fingerprint.digest for r in self._files.values() if r.fingerprint is not None}
        )
        if startup and self._progress is not None:
            self._backfill_left = sum(
                max(0, r.backfill_until - r.position) for r in self._files.values()
            )
            self._progress.set_total(self._backfill_left)
            if self._backfill_left == 0:
                self._progress.close()
                self._progress = None

    def _matching_paths(self) -> list[str]:
        pattern = self.config.path
        paths = glob.glob(pattern) if glob.has_magic(pattern) else [pattern]
        excluded = self._excluded
        return sorted(p for p in paths if not excluded(os.path.basename(p)))

    def _open(self, path: str, now: float, startup: bool) -> FileTailer | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and path not in self._unreadable:
                self._unreadable.add(path)  # say it once, not every poll
                log.warning("cannot open %s: %s", path, exc)
            return None
        self._unreadable.discard(path)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in self._files:  # the name now points to a file already followed
            os.close(fd)
            return self._files[key]
        reader = self._open_fd(path, fd, now)
        reader.found_at_startup = startup
        return reader

    def _refresh(self, reader: FileTailer, now: float, startup: bool) -> None:
        try:
            st = os.fstat(reader.fd)
            size, changed = st.st_size, (st.st_size, st.st_mtime_ns)
        except OSError:
            size, changed = 0, (0, 0)
        # Shrinking is a truncation; so is a file that grew back in between with other bytes at
        # its head or just before the reading position (a rewrite with the same first line). A
        # write changes the modification time, so an unchanged file needs no look at its bytes.
        # A copy still being written (adopted below its old position) only grows.
        if reader.fingerprint is not None and (
            size < reader.high
            or (
                changed != reader.last_stat
                and not (
                    still_holds(reader.fd, reader.fingerprint)
                    and (reader.identity is None or reader.continues(reader.position, reader.tail))
                )
            )
        ):
            self._content_replaced(reader, now)
        if (
            reader.identity is None
            and reader.fingerprint is not None
            and changed != reader.last_stat
        ):
            reader.fingerprint = None  # a standby that grew: is it still a copy?
        reader.last_stat = changed
        if size > reader.size:
            reader.last_growth = now
        reader.size = size
        if size > reader.high:
            reader.high = size
        if reader.fingerprint is None and size > 0:
            fingerprint = read_fingerprint(reader.fd)
            if fingerprint is not None:
                self._assign(reader, fingerprint, startup)
        if reader.identity is not None and size > reader.position and size != reader.eof_size:
            reader.maybe_more = True

    def _content_replaced(self, reader: FileTailer, now: float) -> None:
        """Truncation or copytruncate: the old content lives on (if at all) in a copy."""
        identity = reader.identity
        if identity is not None and self._holders.get(identity.key) is reader:
            assert reader.fingerprint is not None
            self.stats.truncations += 1
            log.info(
                "%s was truncated at byte %d; reading it again from 0",
                reader.path,
                reader.position,
            )
            del self._holders[identity.key]
            stop = self._stop(reader, now, truncated=True)
            if not self._find_copy(reader, stop):
                self.stats.unfinished_copies += 1
        reader.forget_content()

    def _stop(self, reader: FileTailer, now: float, *, truncated: bool) -> _Stop:
        assert reader.identity is not None and reader.fingerprint is not None
        stop = _Stop(
            reader.resume_position,
            now,
            reader.fingerprint.digest,
            reader.tail,
            tuple(reader.marks),
            reader.fingerprint.length,
            reader.device,
            reader.inode,
            truncated,
        )
        self._stops[reader.identity.key] = stop
        return stop

    def _find_copy(self, original: FileTailer, stop: _Stop) -> bool:
        """Look for the old content's copy next to the original (`access_log.1`, `-20240101`).

        A copy that the glob matches would be found anyway; this finds one it does not, so a
        single-path configuration loses nothing either.
        """

        def is_copy(reader: FileTailer) -> bool:
            return (
                reader is not original
                and _holds(reader.fd, stop.digest)
                and reader.holds_what_was_read(stop)
            )

        found = self._open_sibling(original.path, is_copy)
        if found is not None:
            log.info("continuing %s's old content in its copy %s", original.path, found)
            return True
        log.warning(
            "%s was truncated and no copy of its old content was found: lines written after the"
            " last read and before the truncation are lost",
            original.path,
        )
        return False

    def _recover_moved_contents(self) -> None:
        """Checkpointed contents that no matched file holds any more: rotated (renamed, or copied
        and truncated) while the agent was not running. Their unread end is read from where they
        are now, next to their old name, from the checkpoint on."""
        for key, where in self._saved_files.items():
            if key in self._holders or key not in self._saved:
                continue

            def holds_key(reader: FileTailer, key: str = key) -> bool:
                fingerprint = read_fingerprint(reader.fd)
                return fingerprint is not None and key in self._keys_for(fingerprint.digest, reader)

            found = self._open_sibling(where.path, holds_key, include_self=True)
            if found is not None:
                log.info(
                    "reading the rest of %s (rotated while stopped) from %s", where.path, found
                )

    def _open_sibling(
        self,
        path: str,
        accept: Callable[[FileTailer], bool],
        *,
        include_self: bool = False,
    ) -> str | None:
        """Find the file next to `path`, named like it, that `accept`s; open it (unmatched: read
        to its end, then closed) unless already open. Returns its path."""
        directory, name = os.path.split(path)
        try:
            siblings = sorted(os.listdir(directory or "."))
        except OSError:
            return None
        excluded = self._excluded
        now = time.monotonic()
        for sibling in siblings:
            if not sibling.startswith(name) or (sibling == name and not include_self):
                continue
            if excluded(sibling):
                continue
            candidate = os.path.join(directory, sibling)
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            known = self._files.get((st.st_dev, st.st_ino))
            if known is not None:
                # Already open (matched by the glob, maybe a standby): it takes over when `scan`
                # refreshes it or `_adopt_orphans` runs.
                if known.identity is None and accept(known):
                    return candidate
                continue
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            reader = self._open_fd(candidate, fd, now)
            reader.size = st.st_size
            if not accept(reader):
                reader.close()
                del self._files[(reader.device, reader.inode)]
                self.stats.files_opened -= 1
                continue
            reader.matched = False  # not ours to follow: read to its end, then close
            reader.unmatched_since = now
            reader.rotated = self._rotation_seen = True
            self._refresh(reader, now, startup=False)
            return candidate
        return None

    def _open_fd(self, path: str, fd: int, now: float) -> FileTailer:
        st = os.fstat(fd)
        config = self.config
        reader = FileTailer(
            path,
            fd,
            st.st_dev,
            st.st_ino,
            chunk_bytes=config.read_chunk_bytes,
            max_line_bytes=config.max_line_bytes,
            policy=config.oversize_policy,
            now=now,
        )
        self._files[(st.st_dev, st.st_ino)] = reader
        self.stats.files_opened += 1
        return reader

    def _assign(self, reader: FileTailer, fingerprint: Fingerprint, startup: bool) -> None:
        """Decide which content a file holds, under which key, and where reading it starts."""
        digest = fingerprint.digest
        key, position = self._continuation(reader, digest)
        if key is None:
            if self._twin_of(reader, digest) is not None:
                # The same bytes as a file being read (a copy not yet followed by a truncation,
                # a backup): read once. A standby, in case the other file's content is replaced.
                reader.fingerprint = fingerprint
                return
            key, position = self._resumption(reader, digest, startup)
        reader.start(fingerprint, file_identity(os.fstat(reader.fd), fingerprint, key), position)
        if startup and self.config.from_start:
            reader.backfill_until = reader.size
        self._holders[key] = reader
        assert reader.identity is not None
        self._issue(reader, LineBatch(reader.identity, reader.path, position, position, []))

    def _twin_of(self, reader: FileTailer, digest: str) -> FileTailer | None:
        """A file being read of which this one is a copy (as far as it goes), if any.

        A copy of a live file is never longer than it (logs only grow) and ends with the same
        bytes as the original holds at that offset. A file that is no longer than its first line
        cannot be told apart yet; it has nothing to read either, so it waits as a twin.
        """
        for holder in self._holders.values():
            if (
                holder is reader
                or holder.fingerprint is None
                or holder.fingerprint.digest != digest
            ):
                continue
            try:
                st = os.fstat(holder.fd)
            except OSError:
                continue
            if st.st_nlink == 0:
                continue  # deleted: a file that appears now is another one
            if reader.size > st.st_size:
                continue  # longer than the original: not a copy of it
            end = reader.size
            width = min(_TAIL_BYTES, end)
            if os.pread(reader.fd, width, end - width) == os.pread(holder.fd, width, end - width):
                return holder
        return None

    def _continuation(self, reader: FileTailer, digest: str) -> tuple[str | None, int]:
        """The content this file continues, if reading of it stopped in this process: a copy of a
        truncated content (copytruncate), or a file that went away and came back."""
        for key, stop in self._stops.items():
            if stop.digest != digest or key in self._holders:
                continue
            same_file = (stop.device, stop.inode) == (reader.device, reader.inode)
            if same_file == stop.truncated:
                continue  # the truncated file itself (new content), or another file after a close
            if reader.holds_what_was_read(stop):
                del self._stops[key]
                if not same_file:
                    reader.rotated = self._rotation_seen = True  # a copy: an old content's end
                return key, stop.position
        return None, 0

    def _resumption(self, reader: FileTailer, digest: str, startup: bool) -> tuple[str, int]:
        """The key and start of a content not read in this process: its checkpoint, if it has
        one that fits, otherwise a key of its own and the start rule."""
        for key in self._keys_for(digest, reader):
            if key not in self._saved or key in self._holders or key in self._stops:
                continue
            position = self._saved[key]
            if reader.is_line_boundary(position):
                return key, position
            # Not the checkpointed content after all (a different file whose first line is the
            # same, or one rewritten while the agent was stopped): read it all.
            log.warning(
                "%s does not match its checkpoint at byte %d (size %d); reading it from 0",
                reader.path,
                position,
                reader.size,
            )
        key = self._unused_key(digest, reader)
        if startup and self._first_run and not self.config.from_start:
            return key, reader.last_line_end()
        return key, 0

    def _keys_for(self, digest: str, reader: FileTailer) -> list[str]:
        """The keys a content with this first line may have in this file, newest first."""
        derived = [
            distinct_key(digest, reader.device, reader.inode, generation)
            for generation in range(_MAX_GENERATIONS, 0, -1)
        ]
        return [*derived, digest]

    def _unused_key(self, digest: str, reader: FileTailer) -> str:
        def used(key: str) -> bool:
            return key in self._holders or key in self._stops or key in self._saved

        if not used(digest):
            return digest
        for generation in range(1, _MAX_GENERATIONS + 1):
            key = distinct_key(digest, reader.device, reader.inode, generation)
            if not used(key):
                return key
        # Sixteen contents with one first line in one file: reuse the oldest generation.
        return distinct_key(digest, reader.device, reader.inode, 1)

    def _adopt_orphans(self) -> None:
        """Standbys are looked at again: one whose twin is gone continues or starts its content."""
        for reader in list(self._files.values()):
            fingerprint = reader.fingerprint
            if fingerprint is None or reader.identity is not None:
                continue
            reader.fingerprint = None
            self._assign(reader, fingerprint, startup=False)

    def _close_finished(self, now: float) -> None:
        """Close files that lost their name and were read to their end `rotate_wait_s` ago."""
        wait = self.config.rotate_wait_s
        for key, reader in list(self._files.items()):
            if reader.matched:
                continue
            if reader.identity is not None:
                if reader.maybe_more or now - reader.last_growth < wait:
                    continue
                if now - reader.unmatched_since < wait:
                    continue
                # maybe_more is False: read to the end. Anything left is an unterminated line.
                left = reader.size - reader.position
                if left > 0:
                    self.stats.unterminated_bytes += left
                    log.warning(
                        "%s ended with %d bytes without a newline; not shipped (never half a line)",
                        reader.path,
                        left,
                    )
                content = reader.identity.key
                if self._holders.get(content) is reader:
                    del self._holders[content]
                    self._stop(reader, now, truncated=False)
            reader.close()
            del self._files[key]
            self.stats.files_closed += 1
        # Positions of contents that are gone for good need not be remembered forever.
        forget = self.config.forget_after_s
        for key, stop in list(self._stops.items()):
            if now - stop.at > forget:
                del self._stops[key]

    # Introspection (tests, metrics) ----------------------------------------------------------

    def followed(self) -> dict[str, FollowedFile]:
        """Every content being read, by identity key: for health and the lag metric (the lag is
        `size` minus the acknowledged offset, `AckTracker.committed(key)`)."""
        return {
            key: FollowedFile(reader.path, reader.position, reader.size, not reader.matched)
            for key, reader in self._holders.items()
        }
