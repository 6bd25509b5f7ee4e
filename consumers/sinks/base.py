"""What every checkpointed sink offers the processor, and the errors sinks raise.

A sink has two verbs (quix-streams' shape): `add()` per record, cheap and synchronous, and
`flush()`, which returns only once everything added so far is durable. Only the checkpoint calls
`flush()`, and it writes the shard's position only after every checkpointed sink's flush
returned: "checkpoint only after the archive is durable" lives in that one place.

`pending` tells the processor how much is waiting (records, bytes, age) so it can decide when to
checkpoint; the decision is the processor's. The S3 archive tolerates any cut point, by size or
by time (see `consumers.sinks.s3_archive` for why), as long as a batch is flushed *and its
checkpoint written* before the next batch is flushed.

The CloudWatch sink is deliberately not a checkpointed sink: its durability is the counters'
publication cursor in the state snapshot, and an outage must never hold up a checkpoint (see
`consumers.sinks.cloudwatch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class SinkError(Exception):
    """A sink could not make its data durable; nothing was lost, but the shard must not be
    checkpointed past the records it holds."""


class ArchiveWriteError(SinkError):
    """S3 refused or could not be reached, after retries; the batch stays in the sink and the
    next `flush()` writes it again (under the same keys)."""


@dataclass(frozen=True, slots=True)
class Pending:
    """What a sink holds that is not durable yet."""

    records: int
    bytes: int
    """Raw line bytes: a proxy for the objects' size (the archive's Parquet is ~6x smaller)."""
    age_s: float
    """Seconds since the oldest record not yet flushed was added (0.0 when empty)."""


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one `flush()` made durable."""

    records: int
    objects: int
    bytes: int
    keys: tuple[str, ...]
    seconds: float


EMPTY_FLUSH = FlushResult(records=0, objects=0, bytes=0, keys=(), seconds=0.0)


class CheckpointedSink(Protocol):
    """The part of a sink the checkpoint drives; `add` differs per sink and is not in here."""

    @property
    def pending(self) -> Pending: ...

    async def flush(self) -> FlushResult: ...
