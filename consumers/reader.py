"""Reading one shard: GetRecords polling, iterator recovery, the shard's end. One reader per shard.

A `ShardReader` is an async iterator of `ReadBatch`es (the user records of one GetRecords call,
decoded, and the position of the last one) ending with one `ShardEnded` (the shard was closed by
a reshard and read to its end; its children are named). Its fetch task hands batches over through a
small bounded queue: a consumer that stops pulling (a slow sink) leaves the task waiting on the
queue, so reading pauses; nothing is ever dropped or skipped to make room.

Where reading starts (the checkpoint rules, DESIGN.md §4):

- no checkpoint, or TRIM_HORIZON: TRIM_HORIZON. LATEST: LATEST.
- a checkpoint (sequence, sub): AT_SEQUENCE_NUMBER sequence, and the user records of that one
  Kinesis record at or below sub are dropped (they were processed; a KPL record holds many lines,
  and a checkpoint may fall in its middle). This is the KCL's own rule. It is used even when the
  checkpoint was at the record's last sub-record or at a plain record (sub 0), where
  AFTER_SEQUENCE_NUMBER would do: the lease row does not say whether the sub-record was the last
  one, and guessing wrong would skip the rest of the record. The price of always being exact is
  reading that one record again.
- SHARD_END: nothing to read; the caller starts the children instead (a reader refuses it).

While reading:

- The position moves past a Kinesis record once all its user records are in a batch on the queue
  (a record is never split across batches). ExpiredIteratorException (an iterator lives five
  minutes: a long stall of the sink expires it) and repeated 5xx (moto answers a malformed or
  stale iterator with HTTP 500) get a new iterator AFTER_SEQUENCE_NUMBER of that last record, or
  the start rule above if none was read yet: no gap, no duplicate.
- Throttling (ProvisionedThroughputExceededException and kin), 5xx and connection errors back off
  exponentially with full jitter, then retry the same iterator; any other error ends the reader
  and is raised to the consumer.
- Pacing: at most `max_calls_per_second` GetRecords calls (Kinesis allows 5 per shard, shared by
  every consumer of the stream); when a call returns nothing, or says the reader is at the tip
  (MillisBehindLatest 0), the next one waits `poll_interval_s`. The default 0.5 s adds 0.25 s on
  average to a line's way to the dashboard (target: ~1 s p50) and spends 2 of the shard's 5 calls/s.
- A null NextShardIterator means the shard is closed and fully read. The children come from the
  response's ChildShards, or from ListShards where the endpoint does not send them (kinesalite).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from agent.backoff import backoff_delay
from consumers.decode import decode_records
from consumers.leases import LATEST, TRIM_HORIZON, Checkpoint
from consumers.models import UserRecord
from consumers.shard_graph import ShardInfo, children_of, shard_infos

log = logging.getLogger(__name__)

MAX_GET_RECORDS_LIMIT: Final = 10_000
KINESIS_CALLS_PER_SECOND: Final = 5.0
# Consecutive 5xx after which the iterator itself is suspected and fetched again.
_REFRESH_AFTER_SERVER_ERRORS: Final = 2

_THROTTLING: Final = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
        "RequestLimitExceeded",
    }
)
_SERVER: Final = frozenset(
    {"InternalFailure", "InternalFailureException", "ServiceUnavailable", "InternalError"}
)


@dataclass(frozen=True, slots=True)
class ReadBatch:
    """The user records of one GetRecords call, in shard order.

    `position` is the last user record's (sequence, sub-sequence): what a checkpoint written once
    this batch is durable records. `millis_behind_latest` is what Kinesis said with it.
    """

    shard_id: str
    records: list[UserRecord]
    position: Checkpoint
    millis_behind_latest: int | None


@dataclass(frozen=True, slots=True)
class ShardEnded:
    """The shard is closed and every record in it was handed out in earlier batches.

    `children` carry their own parents (both, for a merge) and hash ranges, which is what a child
    lease row needs; the caller creates those rows, then checkpoints SHARD_END.
    """

    shard_id: str
    children: tuple[ShardInfo, ...]

    @property
    def child_shard_ids(self) -> tuple[str, ...]:
        return tuple(c.shard_id for c in self.children)


ReaderEvent = ReadBatch | ShardEnded


@dataclass(slots=True)
class ReaderStats:
    """Counters for metrics and tests (plain ints: the reader is one task)."""

    get_records_calls: int = 0
    records: int = 0
    user_records: int = 0
    throttled: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    expired_iterators: int = 0
    iterators_requested: int = 0


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class ShardReader:
    """Reads one shard from a starting checkpoint to its end (or until stopped).

    The Kinesis client is injected (an aiobotocore client the caller owns); the constructor does
    no I/O. Use as ``async with reader: async for event in reader: ...``.
    """

    def __init__(
        self,
        kinesis: Any,
        stream_name: str,
        shard_id: str,
        start: Checkpoint | None = None,
        *,
        poll_interval_s: float = 0.5,
        max_calls_per_second: float = KINESIS_CALLS_PER_SECOND,
        limit: int = MAX_GET_RECORDS_LIMIT,
        queue_batches: int = 2,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 10.0,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        start = start or Checkpoint(TRIM_HORIZON)
        if start.is_shard_end:
            raise ValueError(f"{shard_id} is at SHARD_END: start its children instead")
        if start.is_sentinel and start.sequence_number not in (TRIM_HORIZON, LATEST):
            raise ValueError(f"unsupported start {start.sequence_number} for {shard_id}")
        if not 1 <= limit <= MAX_GET_RECORDS_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_GET_RECORDS_LIMIT}")
        if max_calls_per_second <= 0 or poll_interval_s < 0 or queue_batches < 1:
            raise ValueError("rates, intervals and queue size must be positive")
        self.kinesis = kinesis
        self.stream_name = stream_name
        self.shard_id = shard_id
        self.start_at = start
        self.poll_interval_s = poll_interval_s
        self.min_call_spacing_s = 1.0 / max_calls_per_second
        self.limit = limit
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stats = ReaderStats()
        self.millis_behind_latest: int | None = None
        self._rng = rng
        self._clock = clock
        self._queue: asyncio.Queue[ReaderEvent | _Failed] = asyncio.Queue(queue_batches)
        self._task: asyncio.Task[None] | None = None
        self._last_sequence: str | None = None  # last Kinesis record fully handed to the queue
        self._skip_through = None if start.is_sentinel else start
        self._last_call = float("-inf")
        self._finished = False

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"read:{self.shard_id}")

    async def stop(self) -> None:
        """Stop fetching. Batches already on the queue are dropped with the reader; their records
        were never checkpointed, so the next reader of the shard reads them again."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
        self._finished = True

    async def __aenter__(self) -> ShardReader:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def __aiter__(self) -> AsyncIterator[ReaderEvent]:
        """Events until ShardEnded (or the error that stopped reading). Iterate inside
        ``async with``, which stops the fetch task when the caller leaves early."""
        return self._events()

    async def _events(self) -> AsyncIterator[ReaderEvent]:
        await self.start()
        while not self._finished:
            event = await self._queue.get()
            if isinstance(event, _Failed):
                self._finished = True
                raise event.error
            if isinstance(event, ShardEnded):
                self._finished = True
            yield event

    @property
    def last_read(self) -> str | None:
        """Sequence number of the last Kinesis record handed out (None before the first)."""
        return self._last_sequence

    # ---- the fetch task -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._fetch_loop()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # handed to the consumer, who decides
            log.warning("reader of %s stopped: %r", self.shard_id, error)
            await self._queue.put(_Failed(error))

    async def _fetch_loop(self) -> None:
        iterator = await self._new_iterator()
        attempts = 0
        server_errors = 0
        while True:
            await self._pace()
            try:
                self.stats.get_records_calls += 1
                response = await self.kinesis.get_records(ShardIterator=iterator, Limit=self.limit)
            except ClientError as error:
                code = _error_code(error)
                if code == "ExpiredIteratorException":
                    self.stats.expired_iterators += 1
                    iterator = await self._new_iterator()
                    continue
                if code in _THROTTLING:
                    self.stats.throttled += 1
                elif code in _SERVER or _status(error) >= 500:
                    self.stats.server_errors += 1
                    server_errors += 1
                else:
                    raise
                await self._back_off(attempts, code)
                attempts += 1
                if server_errors >= _REFRESH_AFTER_SERVER_ERRORS:
                    server_errors = 0
                    iterator = await self._new_iterator()
                continue
            except (BotoConnectionError, HTTPClientError, TimeoutError) as error:
                self.stats.connection_errors += 1
                await self._back_off(attempts, type(error).__name__)
                attempts += 1
                continue
            attempts = server_errors = 0
            next_iterator = await self._hand_out(response)
            if next_iterator is None:
                children = await self._children(response)
                await self._queue.put(ShardEnded(self.shard_id, children))
                return
            iterator = next_iterator
            records = len(response["Records"])
            at_tip = response.get("MillisBehindLatest") == 0 and records < self.limit
            if not records or at_tip:
                await asyncio.sleep(self.poll_interval_s)

    async def _hand_out(self, response: Mapping[str, Any]) -> str | None:
        """Decode one response and queue its batch (waiting while the queue is full)."""
        records = response["Records"]
        self.millis_behind_latest = response.get("MillisBehindLatest")
        if records:
            users = decode_records(self.shard_id, records)
            if self._skip_through is not None:
                users = self._drop_checkpointed(users, self._skip_through)
                self._skip_through = None
            self.stats.records += len(records)
            self.stats.user_records += len(users)
            if users:
                last = users[-1]
                position = Checkpoint(last.sequence_number, last.sub_sequence_number)
                batch = ReadBatch(self.shard_id, users, position, self.millis_behind_latest)
                await self._queue.put(batch)
            self._last_sequence = records[-1]["SequenceNumber"]
        return response.get("NextShardIterator")

    @staticmethod
    def _drop_checkpointed(users: list[UserRecord], checkpoint: Checkpoint) -> list[UserRecord]:
        """AT_SEQUENCE_NUMBER re-reads the checkpointed Kinesis record: drop its processed part."""
        seq, sub = int(checkpoint.sequence_number), checkpoint.sub_sequence_number
        return [
            u for u in users if not (int(u.sequence_number) == seq and u.sub_sequence_number <= sub)
        ]

    async def _new_iterator(self) -> str:
        """An iterator at the reader's position: just after the last record handed out, or the
        start rule (module notes) when nothing was handed out yet."""
        kwargs: dict[str, Any] = {"StreamName": self.stream_name, "ShardId": self.shard_id}
        if self._last_sequence is not None:
            kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["StartingSequenceNumber"] = self._last_sequence
        elif self.start_at.is_sentinel:
            kwargs["ShardIteratorType"] = self.start_at.sequence_number
        else:
            kwargs["ShardIteratorType"] = "AT_SEQUENCE_NUMBER"
            kwargs["StartingSequenceNumber"] = self.start_at.sequence_number
        self.stats.iterators_requested += 1
        response = await self._retrying(self.kinesis.get_shard_iterator, **kwargs)
        return str(response["ShardIterator"])

    async def _retrying(self, call: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
        """`call(**kwargs)`, paced, retried with backoff on throttling, 5xx and connection
        errors (the control-plane calls around GetRecords: never the reason a reader dies)."""
        attempts = 0
        while True:
            await self._pace()
            try:
                return await call(**kwargs)
            except ClientError as error:
                code = _error_code(error)
                if code in _THROTTLING:
                    self.stats.throttled += 1
                elif code in _SERVER or _status(error) >= 500:
                    self.stats.server_errors += 1
                else:
                    raise
            except (BotoConnectionError, HTTPClientError, TimeoutError):
                self.stats.connection_errors += 1
            await self._back_off(attempts, getattr(call, "__name__", "call"))
            attempts += 1

    async def _children(self, response: Mapping[str, Any]) -> tuple[ShardInfo, ...]:
        child_shards = response.get("ChildShards")
        if child_shards:
            return tuple(
                sorted(
                    (
                        ShardInfo(
                            shard_id=c["ShardId"],
                            parent_shard_ids=tuple(sorted(c.get("ParentShards", ()))),
                            starting_hash_key=str(c["HashKeyRange"]["StartingHashKey"]),
                            ending_hash_key=str(c["HashKeyRange"]["EndingHashKey"]),
                            closed=False,
                        )
                        for c in child_shards
                    ),
                    key=lambda info: info.shard_id,
                )
            )
        shards: list[Mapping[str, Any]] = []
        page = await self._retrying(self.kinesis.list_shards, StreamName=self.stream_name)
        shards.extend(page["Shards"])
        while token := page.get("NextToken"):
            page = await self._retrying(self.kinesis.list_shards, NextToken=token)
            shards.extend(page["Shards"])
        infos = shard_infos(shards)
        return tuple(infos[child] for child in children_of(infos, self.shard_id))

    async def _pace(self) -> None:
        """At most `max_calls_per_second` calls of ours to this shard (GetRecords and
        GetShardIterator alike)."""
        wait = self._last_call + self.min_call_spacing_s - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_call = self._clock()

    async def _back_off(self, attempt: int, cause: str) -> None:
        delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s, self._rng)
        log.debug("%s: %s, retrying in %.3f s", self.shard_id, cause, delay)
        await asyncio.sleep(delay)
