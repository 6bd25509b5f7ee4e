"""Value types that flow through the agent: tailer -> records -> shipper -> positions.

They are the contract between the agent's modules; each module owns one step and passes these on.
Acknowledgements flow back in the opposite direction as `Ack`s, and only they move a saved
position (Vector's lesson: positions follow acknowledgements, never reading).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file a line came from, stable across rename (rotation) and distinct across inode reuse.

    `fingerprint` is a hash of the file's first bytes, so a new file that happens to get a
    recycled inode number is still recognised as new.
    """

    device: int
    inode: int
    fingerprint: str

    @property
    def key(self) -> str:
        """The checkpoint-file key and the event-id prefix."""
        return self.fingerprint


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line (without its newline) and where it sits in its file.

    `offset` is the byte offset of the line's first byte; `end` the offset just past its newline,
    which is what a checkpoint records once the line is acknowledged.
    """

    file: FileIdentity
    offset: int
    end: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """Kinesis accepted the lines [offset, end) of `file` (possibly several lines at once)."""

    file: FileIdentity
    offset: int
    end: int
