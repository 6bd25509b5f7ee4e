"""Bulk mode: exactly N lines, as fast as the machine allows, streamed to disk.

Lines are formatted into chunks and written a chunk at a time, so memory stays flat however
large N is (only the sessions in flight and the truth's per-visitor flags grow, and those with
the number of visitors, not lines).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from service.simulator.engine import TrafficEngine
from service.simulator.logformat import LineFormatter
from service.simulator.truth import GroundTruth

_CHUNK_LINES = 8192


def write_bulk(
    path: Path,
    engine: TrafficEngine,
    lines: int,
    truth: GroundTruth,
    *,
    progress: bool | None = None,
) -> None:
    """Write the first `lines` lines of `engine` to `path` (replacing it), counting into `truth`.

    `progress`: True shows a bar on stderr, False hides it, None shows it only on a terminal.
    """
    line_of = LineFormatter().line
    add, add_malformed = truth.add, truth.add_malformed
    chunk: list[str] = []
    written = 0
    with (
        path.open("wb") as out,
        tqdm(
            total=lines,
            unit=" lines",
            unit_scale=True,
            file=sys.stderr,
            disable=None if progress is None else not progress,
            mininterval=0.5,
            desc=path.name,
        ) as bar,
    ):
        for event in engine.events():
            if type(event) is str:
                chunk.append(event)
                add_malformed()
            else:
                chunk.append(line_of(event))
                add(event)
            written += 1
            if written >= lines or len(chunk) >= _CHUNK_LINES:
                out.write("".join(chunk).encode("utf-8", "surrogateescape"))
                bar.update(len(chunk))
                chunk.clear()
                if written >= lines:
                    break
