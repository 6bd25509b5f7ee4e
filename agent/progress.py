"""A progress bar over bytes for `--from-start` backfill: how much of the existing logs is read.

Counted in bytes, not lines, because the total is known up front from the files' sizes without
reading them. Drawn on stderr only when it is a terminal (a service's journal gets log lines, not
carriage returns), unless forced.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class BackfillProgress:
    """`agent.tailer.ProgressSink` as a tqdm bar, drawn once the total is known."""

    def __init__(self, *, enabled: bool | None = None, description: str = "backfill") -> None:
        self._enabled = sys.stderr.isatty() if enabled is None else enabled
        self._description = description
        self._bar: tqdm | None = None
        self.done = 0
        self.total = 0

    def set_total(self, total_bytes: int) -> None:
        self.total = total_bytes
        if self._enabled and self._bar is None:
            self._bar = tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self._description,
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self._bar is not None:
            self._bar.update(nbytes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
