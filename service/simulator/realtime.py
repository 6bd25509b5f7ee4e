"""Real-time mode: lines appear in the file when their requests complete, at R lines a second.

This is the input for exercising the agent as it runs on a web server: whole lines appended
(every write ends with a newline, and nothing waits in a buffer while the writer sleeps), and
optional rotation every K lines in either of logrotate's styles:

- `create`: rename `out` to `out.1` (older ones shift up to `out.<keep>`) and start a new `out`,
  which is what Apache does after a graceful restart;
- `copytruncate`: copy `out` to `out.1` and truncate `out` in place; the writer keeps its
  append-mode descriptor, so its next line lands at offset 0.

Like Apache, the writer reopens its path on SIGHUP (`request_reopen`), so an external logrotate
in `create` mode, whose postrotate sends that signal, works as it does on a web server.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from service.simulator.engine import TrafficEngine
from service.simulator.logformat import LineFormatter
from service.simulator.truth import GroundTruth

RotateMode = Literal["create", "copytruncate"]
_MAX_PENDING = 1000  # lines gathered before a write when catching up
_MAX_SLEEP_S = 0.2  # a stop request is noticed within this long


class RotatingLog:
    """An append-only log file that rotates itself after every `every` lines (None: never)."""

    def __init__(
        self, path: Path, every: int | None = None, mode: RotateMode = "create", keep: int = 3
    ) -> None:
        self.path = path
        self.every = every
        self.mode = mode
        self.keep = keep
        self.rotations = 0
        self._fd = self._open()
        self._in_file = 0  # lines written since the last rotation
        self._reopen = False

    def request_reopen(self) -> None:
        """Safe to call from a signal handler: the reopen happens before the next write."""
        self._reopen = True

    def _reopen_if_requested(self) -> None:
        if self._reopen:
            self._reopen = False
            os.close(self._fd)
            self._fd = self._open()
            self._in_file = 0

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, lines: list[str]) -> None:
        """Append `lines`; a file that already holds `every` lines is rotated before the next.

        Rotating only when another line is due means a run that stops on a multiple of `every`
        leaves a full file behind, not an empty one.
        """
        self._reopen_if_requested()
        start = 0
        while start < len(lines):
            if self.every is not None and self._in_file >= self.every:
                self.rotate()
            room = len(lines) - start
            if self.every is not None:
                room = min(room, self.every - self._in_file)
            data = "".join(lines[start : start + room]).encode("utf-8", "surrogateescape")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            start += room
            self._in_file += room

    def _rotated(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")

    def _shift(self) -> None:
        for number in range(self.keep - 1, 0, -1):
            older = self._rotated(number)
            if older.exists():
                os.replace(older, self._rotated(number + 1))

    def rotate(self) -> None:
        self._shift()
        if self.mode == "create":
            os.close(self._fd)
            os.replace(self.path, self._rotated(1))
            self._fd = self._open()
        else:
            shutil.copyfile(self.path, self._rotated(1))
            os.ftruncate(self._fd, 0)
        self._in_file = 0
        self.rotations += 1

    def close(self) -> None:
        os.close(self._fd)


def run_realtime(
    log: RotatingLog,
    engine: TrafficEngine,
    truth: GroundTruth,
    *,
    limit: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write lines as the clock reaches their completion times; return how many were written.

    Stops after `limit` lines, or when `should_stop()` turns true (a signal handler sets it);
    either way every line counted in `truth` is in the file. `clock` and `sleep` are injectable
    so tests can run real-time mode on simulated time.
    """
    line_of = LineFormatter().line
    pending: list[str] = []
    written = 0
    due = 0
    for event in engine.events():
        if type(event) is not str:
            due = event.done
        now = int(clock() * 1000)
        if due > now:
            if pending:
                log.write(pending)
                pending.clear()
            while due > now and not should_stop():
                sleep(min((due - now) / 1000.0, _MAX_SLEEP_S))
                now = int(clock() * 1000)
        if should_stop():
            break
        if type(event) is str:
            pending.append(event)
            truth.add_malformed()
        else:
            pending.append(line_of(event))
            truth.add(event)
        written += 1
        if limit is not None and written >= limit:
            break
        if len(pending) >= _MAX_PENDING:
            log.write(pending)
            pending.clear()
    if pending:
        log.write(pending)
    return written
