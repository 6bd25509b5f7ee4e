"""The agent's knobs, in one frozen object that every agent module reads.

The tailer, the checkpoint and the shipper all take their settings from here, so an operator's
choice (say, a larger in-flight budget) cannot be applied to one part and forgotten in another.
It is a plain dataclass rather than pydantic: the agent package stays free of `service/`, and the
CLI builds it from the validated `Settings` plus its own options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB

# Rotated-and-compressed siblings that a glob such as `access_log*` would otherwise match: their
# bytes are not log lines, and their content was already read before compression.
DEFAULT_EXCLUDE: tuple[str, ...] = ("*.gz", "*.bz2", "*.xz", "*.zst", "*.zip", "*.lz4")


def default_state_dir() -> Path:
    """Durable by default (XDG state home), like `service.settings`: not /tmp or /run, which a
    reboot empties, taking every checkpoint with it."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clickstream"


class OversizePolicy(StrEnum):
    """What happens to a line longer than `max_line_bytes`."""

    TRUNCATE = "truncate"  # ship the first bytes followed by a marker, count it
    REJECT = "reject"  # ship nothing, count it; its bytes still count as done for the checkpoint


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything `clickstream agent` can be told. Defaults are the production choices."""

    # What to follow: one path or a glob (`/var/log/apache2/access_log*`).
    path: str
    # Where a file never seen before starts on the agent's first run: at its end (only new lines,
    # the default) or at its beginning (backfill, with a progress bar). A file with a checkpoint
    # resumes there; files that appear later, and on later runs every file the checkpoint does
    # not know, start at 0, so nothing written while the agent was not looking is lost.
    from_start: bool = False
    state_dir: Path = field(default_factory=default_state_dir)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    # Tailing.
    poll_interval_s: float = 0.2
    read_chunk_bytes: int = 256 * KIB
    max_line_bytes: int = 64 * KIB
    oversize_policy: OversizePolicy = OversizePolicy.TRUNCATE
    # A file renamed away (rotation) or deleted stays open this long after it stopped growing, so
    # lines the web server writes before it reopens its log are still read.
    rotate_wait_s: float = 5.0
    # Checkpoints of files that have not been seen for this long (and are fully acknowledged) are
    # dropped; a file that comes back later than this is read again from its start.
    forget_after_s: float = 3600.0

    # Flow control and shipping.
    max_in_flight_bytes: int = 16 * MIB
    linger_ms: int = 250
    aggregate: bool = True
    # How often acknowledged positions are written (temp file, fsync, rename, fsync): lines
    # acknowledged since the last write are sent again after a crash, so keep this short.
    checkpoint_interval_s: float = 0.25
    # No acknowledgement for this long while lines are in flight: report the agent as stalled.
    stall_timeout_s: float = 60.0
    metrics_port: int | None = 9108

    def __post_init__(self) -> None:
        problems = []
        if not self.path:
            problems.append("path must not be empty")
        if self.poll_interval_s <= 0:
            problems.append(f"poll_interval_s must be > 0, got {self.poll_interval_s}")
        if self.max_line_bytes < 64:
            problems.append(f"max_line_bytes must be >= 64, got {self.max_line_bytes}")
        if self.read_chunk_bytes < 4 * KIB:
            problems.append(f"read_chunk_bytes must be >= 4096, got {self.read_chunk_bytes}")
        if self.max_in_flight_bytes < self.read_chunk_bytes:
            problems.append(
                f"max_in_flight_bytes must be >= read_chunk_bytes ({self.read_chunk_bytes}),"
                f" got {self.max_in_flight_bytes}"
            )
        if self.checkpoint_interval_s <= 0:
            problems.append(f"checkpoint_interval_s must be > 0, got {self.checkpoint_interval_s}")
        if self.rotate_wait_s < 0:
            problems.append(f"rotate_wait_s must be >= 0, got {self.rotate_wait_s}")
        if self.linger_ms < 0:
            problems.append(f"linger_ms must be >= 0, got {self.linger_ms}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            problems.append(f"metrics_port must be 0-65535, got {self.metrics_port}")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "oversize_policy", OversizePolicy(self.oversize_policy))
        object.__setattr__(self, "state_dir", Path(self.state_dir))

    @property
    def positions_file(self) -> Path:
        return self.state_dir / "agent-positions.json"
