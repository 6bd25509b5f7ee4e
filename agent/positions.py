"""The durable checkpoint: per file content, the byte up to which every line is acknowledged.

Two parts. `PositionStore` is the file: a JSON map written atomically (temporary file in the same
directory, fsync, rename, fsync of the directory), so a crash at any instant leaves either the old
or the new checkpoint, never a torn one. `AckTracker` is the arithmetic: acknowledgements arrive
out of order (each shard's PutRecords completes on its own schedule) and a checkpoint may only
cover the *contiguous* acknowledged prefix of a file; bytes acknowledged beyond a hole wait until
the hole is filled. Reading never moves a checkpoint, only acknowledgements do (the top complaint
about the Kinesis Agent and Fluent Bit is the opposite). The same tracker counts the bytes read
but not acknowledged, and makes the tailer wait while they exceed the in-flight budget.

File format (version 1):

    {"version": 1, "positions": {"<identity key>": {"device": 2049, "inode": 1234,
     "offset": 5678, "path": "/var/log/apache2/access_log", "updated": 1732230000.5,
     "seen": 1732230001.0}}}

`updated` is when the offset last moved, `seen` when the file was last found on disk (both Unix
time); a checkpoint whose file has been gone for `forget_after_s` and that has nothing in flight is
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from agent.config import AgentConfig
from agent.models import Ack
from agent.tailer import LineBatch, SavedFile

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class StateDirLocked(Exception):
    """Another agent already uses this state directory; two would overwrite each other."""


@dataclass(slots=True)
class Checkpoint:
    device: int
    inode: int
    offset: int
    path: str
    updated: float
    seen: float


class PositionStore:
    """The checkpoint file in the state directory. Only `save` writes it, atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the state directory for this process (released when the process exits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.parent / ".agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirLocked(f"another agent is using {self.path.parent}") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> dict[str, Checkpoint] | None:
        """The saved checkpoints, or None when there is no checkpoint file (a first run).

        An unreadable file is moved aside and treated as an empty one, not as a first run: every
        file is then read from its start. Duplicates are recoverable downstream (event ids), lines
        skipped by starting at the end are not.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = orjson.loads(raw)
            if document.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown version {document.get('version')!r}")
            return {
                key: Checkpoint(
                    device=int(entry["device"]),
                    inode=int(entry["inode"]),
                    offset=int(entry["offset"]),
                    path=str(entry["path"]),
                    updated=float(entry["updated"]),
                    seen=float(entry.get("seen", entry["updated"])),
                )
                for key, entry in document["positions"].items()
            }
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "checkpoint file %s is unreadable (%s); moved to %s, reading files from the start",
                self.path,
                exc,
                aside,
            )
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return {}

    def save(self, checkpoints: Mapping[str, Checkpoint]) -> None:
        """Replace the checkpoint file: temp file, fsync, rename over, fsync the directory."""
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        document = {
            "version": FORMAT_VERSION,
            "positions": {
                key: {
                    "device": c.device,
                    "inode": c.inode,
                    "offset": c.offset,
                    "path": c.path,
                    "updated": c.updated,
                    "seen": c.seen,
                }
                for key, c in checkpoints.items()
            },
        }
        data = orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
        temporary = directory / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(slots=True)
class _FileProgress:
    """One content's acknowledgement state. Invariant: every `pending` range starts > frontier."""

    checkpoint: Checkpoint
    issued_end: int
    pending: list[tuple[int, int]] = field(default_factory=list)

    @property
    def frontier(self) -> int:
        return self.checkpoint.offset


def add_range(progress: _FileProgress, start: int, end: int) -> int:
    """Record [start, end) as acknowledged; returns how many bytes were not acknowledged before.

    Pure arithmetic on the frontier and the sorted, disjoint pending ranges (few: about one per
    shard with a put in flight), so a linear merge is the simple and fast choice.
    """
    frontier = progress.checkpoint.offset
    start = max(start, frontier)
    end = min(end, progress.issued_end)
    if end <= start:
        return 0
    new_start, new_end = start, end
    covered = 0
    before: list[tuple[int, int]] = []
    after: list[tuple[int, int]] = []
    for low, high in progress.pending:
        if high < start:
            before.append((low, high))
        elif low > end:
            after.append((low, high))
        else:
            covered += max(0, min(high, end) - max(low, start))
            new_start = min(new_start, low)
            new_end = max(new_end, high)
    pending = [*before, (new_start, new_end), *after]
    if pending[0][0] <= frontier:
        progress.checkpoint.offset = pending[0][1]
        pending.pop(0)
    progress.pending = pending
    return (end - start) - covered


class AckTracker:
    """Turns acknowledgements into checkpoints and read-ahead into back-pressure.

    The tailer reports what it read (`issued`); the shipper reports what Kinesis accepted
    (`ack`). A file's checkpoint is the end of its contiguous acknowledged prefix. The tailer
    waits in `wait_for_room` while read-but-unacknowledged bytes exceed `max_in_flight_bytes`.
    """

    def __init__(
        self,
        store: PositionStore,
        config: AgentConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self._files: dict[str, _FileProgress] = {}
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._dirty = False
        # No checkpoint is forgotten before the tailer has said which files exist: after a long
        # downtime every `seen` is old, and forgetting would mean reading those files again.
        self._live_reported = False
        self.last_ack_at = time.monotonic()

    def load(self) -> dict[str, int] | None:
        """Read the checkpoint file; returns key -> offset for the tailer (None: first run)."""
        saved = self.store.load()
        if saved is None:
            # Write the (empty) file soon, so the next start is not taken for a first run again:
            # only a first run may start files at their end.
            self._dirty = True
            return None
        for key, checkpoint in saved.items():
            self._files[key] = _FileProgress(checkpoint, issued_end=checkpoint.offset)
        return {key: checkpoint.offset for key, checkpoint in saved.items()}

    def saved_files(self) -> dict[str, SavedFile]:
        """Key -> where each checkpointed content was last read (for `GlobTailer`)."""
        return {
            key: SavedFile(p.checkpoint.path, p.checkpoint.device, p.checkpoint.inode)
            for key, p in self._files.items()
        }

    # What the tailer calls (agent.tailer.FlowControl) ----------------------------------------

    def issued(self, batch: LineBatch) -> None:
        identity = batch.file
        progress = self._files.get(identity.key)
        now = self._clock()
        if progress is None:
            checkpoint = Checkpoint(
                identity.device, identity.inode, batch.start, batch.path, now, now
            )
            progress = self._files[identity.key] = _FileProgress(checkpoint, batch.start)
            self._dirty = True
        elif batch.start < progress.issued_end and batch.start == batch.end:
            # Reading starts again below what was read: the content at this key is not what was
            # checkpointed (the tailer found the checkpoint not to fit). The checkpoint follows
            # reading down; nothing above it counts as acknowledged any more.
            log.warning(
                "reading of %s restarts at %d, below %d",
                batch.path,
                batch.start,
                progress.issued_end,
            )
            progress.checkpoint.offset = batch.start
            progress.issued_end = batch.start
            progress.pending = []
            progress.checkpoint.updated = now
            self._dirty = True
            self._recount()
        checkpoint = progress.checkpoint
        if (checkpoint.device, checkpoint.inode, checkpoint.path) != (
            identity.device,
            identity.inode,
            batch.path,
        ):
            checkpoint.device, checkpoint.inode, checkpoint.path = (
                identity.device,
                identity.inode,
                batch.path,
            )
            self._dirty = True
        if batch.start > progress.issued_end:
            # Reading jumped ahead of what was issued (it should not): count the jumped-over
            # bytes as done rather than wait forever for an acknowledgement that cannot come.
            log.warning(
                "reading of %s jumped from %d to %d", batch.path, progress.issued_end, batch.start
            )
            gap = progress.issued_end
            self._in_flight += batch.start - gap
            progress.issued_end = batch.start
            self._acknowledge(identity.key, gap, batch.start)
        if batch.end > progress.issued_end:
            self._in_flight += batch.end - max(batch.start, progress.issued_end)
            progress.issued_end = batch.end
            if self._in_flight >= self.config.max_in_flight_bytes:
                self._room.clear()
        for start, end in batch.skipped:
            self._acknowledge(identity.key, start, end)

    def has_room(self) -> bool:
        return self._in_flight < self.config.max_in_flight_bytes

    async def wait_for_room(self) -> None:
        while self._in_flight >= self.config.max_in_flight_bytes:
            self._room.clear()
            await self._room.wait()

    def live(self, keys: Iterable[str]) -> None:
        self._live_reported = True
        now = self._clock()
        for key in keys:
            progress = self._files.get(key)
            if progress is not None:
                progress.checkpoint.seen = now

    # What the shipper calls ------------------------------------------------------------------

    def ack(self, ack: Ack) -> None:
        """Kinesis accepted [ack.offset, ack.end) of `ack.file`; in any order, repeats are fine."""
        self.last_ack_at = time.monotonic()
        self._acknowledge(ack.file.key, ack.offset, ack.end)

    def _acknowledge(self, key: str, start: int, end: int) -> None:
        progress = self._files.get(key)
        if progress is None:
            log.warning("acknowledgement for unknown file identity %s ignored", key)
            return
        before = progress.checkpoint.offset
        self._in_flight -= add_range(progress, start, end)
        if progress.checkpoint.offset != before:
            progress.checkpoint.updated = self._clock()
            self._dirty = True
        if self._in_flight < self.config.max_in_flight_bytes:
            self._room.set()

    def _recount(self) -> None:
        self._in_flight = sum(
            p.issued_end - p.checkpoint.offset - sum(high - low for low, high in p.pending)
            for p in self._files.values()
        )
        if self._in_flight < self.config.max_in_flight_bytes:
            self._room.set()

    # State -----------------------------------------------------------------------------------

    @property
    def in_flight_bytes(self) -> int:
        return self._in_flight

    def stalled(self) -> bool:
        """Lines are in flight and nothing was acknowledged for `stall_timeout_s`."""
        idle = time.monotonic() - self.last_ack_at
        return self._in_flight > 0 and idle > self.config.stall_timeout_s

    def committed(self, key: str) -> int | None:
        progress = self._files.get(key)
        return None if progress is None else progress.checkpoint.offset

    def checkpoints(self) -> dict[str, Checkpoint]:
        return {key: progress.checkpoint for key, progress in self._files.items()}

    def collect_garbage(self) -> list[str]:
        """Drop checkpoints of files gone for `forget_after_s` with nothing left in flight."""
        if not self._live_reported:
            return []
        now = self._clock()
        gone = [
            key
            for key, p in self._files.items()
            if now - p.checkpoint.seen > self.config.forget_after_s
            and p.issued_end == p.checkpoint.offset
        ]
        for key in gone:
            del self._files[key]
        if gone:
            self._dirty = True
        return gone

    def save(self, force: bool = False) -> bool:
        """Write the checkpoint file if anything changed; returns whether it wrote."""
        self.collect_garbage()
        if not (self._dirty or force):
            return False
        self._dirty = False
        try:
            self.store.save(self.checkpoints())
        except BaseException:
            self._dirty = True
            raise
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Save every `checkpoint_interval_s` until `stop` is set, then save once more."""
        interval = self.config.checkpoint_interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            self.collect_garbage()
            if self._dirty:
                snapshot = {
                    key: Checkpoint(c.device, c.inode, c.offset, c.path, c.updated, c.seen)
                    for key, c in self.checkpoints().items()
                }
                self._dirty = False
                try:
                    await asyncio.to_thread(self.store.save, snapshot)
                except OSError as exc:
                    self._dirty = True
                    log.error("cannot write checkpoint %s: %s", self.store.path, exc)
        self.save()
