"""The S3 archive of one shard: accepted events and rejected lines as Parquet objects.

Where the data goes (keys, partitions, PUTs, retries) lives here; what a file contains is
`consumers.archive_format`. The S3 client is handed in (aiobotocore), never created here.

Layout
------
::

    <prefix>/events/dt=YYYY-MM-DD/hour=HH/shard=<shard id>/<sequence>-<sub-sequence>.parquet
    <prefix>/rejects/dt=YYYY-MM-DD/hour=HH/shard=<shard id>/<sequence>-<sub-sequence>.parquet

`dt`/`hour` are the UTC hour of `event_time` (events) or `arrival_time` (rejects: a line that
did not parse has no time we can trust). One flush writes one object per (kind, hour) it has
rows for: a checkpoint's worth of records per shard, so objects are few and large (DESIGN §8).

Why a replay overwrites instead of adding (the key rule)
--------------------------------------------------------
The object name is the position (sequence number, sub-sequence number) of the *first row of
that object*: the first record, in shard order, of this flush that falls in that hour. Not the
first record of the whole flush: a flush spans hours, and the objects of hours a replayed flush
no longer reaches would otherwise survive beside the replay's and duplicate their rows.

The processor must keep one rule: **a batch is flushed, and its checkpoint written, before the
next batch is flushed** (only the checkpoint calls `flush()`; a failed checkpoint is retried,
or the lease given up, before anything else is flushed). Then after a crash:

- The last checkpoint is at C; every object written since holds rows of the one batch after C,
  and each is named by X, the first record after C in its hour.
- The replay reads from C again. Whatever its cut points (sooner, later: a size or time flush,
  a smaller GetRecords), the batch that contains X starts somewhere in (C, X], and no record of
  X's hour lies between C and X, so X is again the first row of its hour in that batch: the
  same key, and the object is overwritten with rows from X onwards. Rows the old object held
  beyond the new batch's end are re-read (they are after the checkpoint) and land in a later
  object of their own.
- So nothing cut differently needs to be found and deleted, and archive rows stay unique by
  event id after any number of crashes. The same rows from the same checkpoint give the same
  keys and, the encoder being deterministic, the same bytes.

Two un-checkpointed flushes in a row would break it: rows of the first batch's hour could come
before X in the replayed batch, which would then be named after them and leave X's object.

A failed flush keeps its rows, ahead of those added since, and raises `ArchiveWriteError`; the
next flush writes them again under the same keys (nothing was checkpointed in between).

`add()` expects records in shard order, each once: the processor drops records at or below the
shard's high-water mark (re-fetched after an iterator expired) before any sink sees them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Final, Literal

import pyarrow as pa

from consumers.archive_format import (
    EVENT_TIME_COLUMN,
    REJECT_TIME_COLUMN,
    EventColumns,
    IpPrivacy,
    parquet_bytes,
    rejects_table,
    split_by_hour,
)
from consumers.models import EnrichedHit, Rejection, UserRecord
from consumers.sinks.base import EMPTY_FLUSH, ArchiveWriteError, FlushResult, Pending

log = logging.getLogger(__name__)

_line_of = attrgetter("line")

ArchiveKind = Literal["events", "rejects"]
PARQUET_CONTENT_TYPE: Final = "application/vnd.apache.parquet"
DEFAULT_MAX_ATTEMPTS: Final = 5
DEFAULT_BACKOFF_S: Final = 0.2
MAX_BACKOFF_S: Final = 5.0
MAX_CONCURRENT_PUTS: Final = 4


def archive_key(
    prefix: str,
    kind: ArchiveKind,
    hour_start_ms: int,
    shard_id: str,
    sequence_number: str,
    sub_sequence_number: int,
) -> str:
    """The object key for the rows of one hour whose first row is at the given position."""
    hour = datetime.fromtimestamp(hour_start_ms / 1000, UTC)
    parts = [
        kind,
        f"dt={hour:%Y-%m-%d}",
        f"hour={hour:%H}",
        f"shard={shard_id}",
        f"{sequence_number}-{sub_sequence_number:05d}.parquet",
    ]
    if prefix.strip("/"):
        parts.insert(0, prefix.strip("/"))
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class ArchiveObject:
    key: str
    body: bytes
    rows: int


def archive_objects(
    prefix: str, kind: ArchiveKind, shard_id: str, table: pa.Table, time_column: str
) -> list[ArchiveObject]:
    """A flushed table cut into one object per hour, each named by its first row (pure)."""
    objects = []
    for piece in split_by_hour(table, time_column):
        sequence = table.column("sequence_number")[piece.first_row].as_py()
        sub_sequence = table.column("sub_sequence_number")[piece.first_row].as_py()
        key = archive_key(prefix, kind, piece.hour_start_ms, shard_id, sequence, sub_sequence)
        objects.append(ArchiveObject(key, parquet_bytes(piece.table), piece.table.num_rows))
    return objects


STAGED_ROWS: Final = 256
"""Rows `add()` collects before copying them into columns (see `EventColumns`): enough to make
the copy a few C-level passes, few enough that the objects are still in the CPU caches."""


@dataclass(slots=True)
class _Batch:
    """What was added since the last successful flush, in shard order."""

    events: EventColumns = field(default_factory=EventColumns)
    staged_records: list[UserRecord] = field(default_factory=list)
    staged_hits: list[EnrichedHit] = field(default_factory=list)
    staged_sessions: list[str | None] = field(default_factory=list)
    rejected: list[UserRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    line_bytes: int = 0
    first_added: float | None = None

    def __len__(self) -> int:
        return len(self.events) + len(self.staged_records) + len(self.rejected)

    def unstage(self) -> None:
        if self.staged_records:
            self.events.extend(self.staged_records, self.staged_hits, self.staged_sessions)
            self.staged_records, self.staged_hits, self.staged_sessions = [], [], []

    def extend(self, later: _Batch) -> None:
        self.unstage()
        later.unstage()
        self.events.absorb(later.events)
        self.rejected += later.rejected
        self.rejections += later.rejections
        self.line_bytes += later.line_bytes
        if self.first_added is None:
            self.first_added = later.first_added


@dataclass(slots=True)
class ArchiveStats:
    """Lifetime figures, for /metrics and the ArchiveFailures health metric."""

    flushes: int = 0
    rows: int = 0
    rejects: int = 0
    objects: int = 0
    bytes: int = 0
    failed_puts: int = 0
    failed_flushes: int = 0


class S3ArchiveSink:
    """The archive of one shard (the shard id is in every key); see the module docstring.

    `encode_in_thread`: Parquet encoding of a checkpoint's rows takes a good fraction of a
    second; in a worker thread it keeps the event loop (lease renewals, other shards) running,
    and pyarrow's writer releases the GIL for most of it.
    """

    def __init__(
        self,
        s3: Any,
        bucket: str,
        shard_id: str,
        privacy: IpPrivacy | None = None,
        *,
        prefix: str = "",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
        encode_in_thread: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._s3 = s3
        self.bucket = bucket
        self.shard_id = shard_id
        self.prefix = prefix
        self.privacy = privacy if privacy is not None else IpPrivacy()
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.encode_in_thread = encode_in_thread
        self._clock = clock
        self._batch = _Batch()
        self._flushing = asyncio.Lock()
        self.stats = ArchiveStats()

    # ------------------------------------------------------------------ add (hot path)

    def add(self, record: UserRecord, hit: EnrichedHit, session_id: str | None = None) -> None:
        batch = self._batch
        if batch.first_added is None:
            batch.first_added = self._clock()
        batch.staged_records.append(record)
        batch.staged_hits.append(hit)
        batch.staged_sessions.append(session_id)
        batch.line_bytes += len(record.line)
        if len(batch.staged_records) >= STAGED_ROWS:
            batch.unstage()

    def add_batch(
        self,
        records: Sequence[UserRecord],
        hits: Sequence[EnrichedHit],
        session_ids: Sequence[str | None],
    ) -> None:
        """`add` for a Kinesis record's worth of lines at once (parallel sequences): the
        processor's hot path. The fields are copied into columns now, while the objects are
        fresh, and the objects are not kept."""
        if not records and not hits and not session_ids:
            return
        batch = self._batch
        batch.unstage()
        batch.events.extend(records, hits, session_ids)
        if batch.first_added is None:
            batch.first_added = self._clock()
        batch.line_bytes += sum(map(len, map(_line_of, records)))

    def add_columns(
        self,
        records: Sequence[UserRecord],
        hit_columns: Sequence[list[Any]],
        enriched_columns: Mapping[str, list[Any]],
        session_ids: Sequence[str | None],
    ) -> None:
        """`add_batch` for hits already in columns (`EventColumns.extend_columns`): the
        processor's hot path, with no object per hit in between."""
        if not records:
            return
        batch = self._batch
        batch.unstage()
        batch.events.extend_columns(records, hit_columns, enriched_columns, session_ids)
        if batch.first_added is None:
            batch.first_added = self._clock()
        batch.line_bytes += sum(map(len, map(_line_of, records)))

    def add_rejected(self, record: UserRecord, rejection: Rejection) -> None:
        batch = self._batch
        if batch.first_added is None:
            batch.first_added = self._clock()
        batch.rejected.append(record)
        batch.rejections.append(rejection)
        batch.line_bytes += len(record.line)

    @property
    def pending(self) -> Pending:
        batch = self._batch
        age = 0.0 if batch.first_added is None else self._clock() - batch.first_added
        return Pending(records=len(batch), bytes=batch.line_bytes, age_s=age)

    # ------------------------------------------------------------------ flush

    async def flush(self) -> FlushResult:
        """Write everything added so far; return once every object is in S3.

        Rows added while this runs belong to the next batch. On failure the rows are kept
        (ahead of newer ones) and `ArchiveWriteError` is raised: do not checkpoint.
        """
        async with self._flushing:  # one batch in flight, ever (the key rule)
            return await self._flush()

    async def _flush(self) -> FlushResult:
        batch, self._batch = self._batch, _Batch()
        if not len(batch):
            return EMPTY_FLUSH
        started = time.perf_counter()
        try:
            if self.encode_in_thread:
                objects = await asyncio.to_thread(self._encode, batch)
            else:
                objects = self._encode(batch)
            await self._put_all(objects)
        except BaseException:
            self.stats.failed_flushes += 1
            batch.extend(self._batch)
            self._batch = batch
            raise
        size = sum(len(o.body) for o in objects)
        self.stats.flushes += 1
        self.stats.rows += len(batch.events)
        self.stats.rejects += len(batch.rejected)
        self.stats.objects += len(objects)
        self.stats.bytes += size
        return FlushResult(
            records=len(batch),
            objects=len(objects),
            bytes=size,
            keys=tuple(o.key for o in objects),
            seconds=time.perf_counter() - started,
        )

    def _encode(self, batch: _Batch) -> list[ArchiveObject]:
        objects: list[ArchiveObject] = []
        batch.unstage()
        if len(batch.events):
            table = batch.events.table(self.privacy)
            objects += archive_objects(
                self.prefix, "events", self.shard_id, table, EVENT_TIME_COLUMN
            )
        if batch.rejected:
            table = rejects_table(batch.rejected, batch.rejections, self.privacy)
            objects += archive_objects(
                self.prefix, "rejects", self.shard_id, table, REJECT_TIME_COLUMN
            )
        return objects

    async def _put_all(self, objects: list[ArchiveObject]) -> None:
        limit = asyncio.Semaphore(MAX_CONCURRENT_PUTS)

        async def put(obj: ArchiveObject) -> None:
            async with limit:
                await self._put(obj)

        results = await asyncio.gather(*(put(o) for o in objects), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise ArchiveWriteError(
                f"{len(errors)} of {len(objects)} archive objects not written "
                f"(bucket {self.bucket}, shard {self.shard_id}): {errors[0]}"
            ) from errors[0]

    async def _put(self, obj: ArchiveObject) -> None:
        """PUT with jittered exponential backoff on top of botocore's own retries: an S3
        hiccup should cost seconds, not the checkpoint."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._s3.put_object(
                    Bucket=self.bucket,
                    Key=obj.key,
                    Body=obj.body,
                    ContentType=PARQUET_CONTENT_TYPE,
                    Metadata={"rows": str(obj.rows)},
                )
                return
            except Exception as error:  # botocore raises many unrelated types; all are retried
                self.stats.failed_puts += 1
                if attempt == self.max_attempts:
                    raise
                delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                log.warning(
                    "archive PUT s3://%s/%s failed (attempt %d of %d), retrying in %.1f s: %s",
                    self.bucket,
                    obj.key,
                    attempt,
                    self.max_attempts,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
