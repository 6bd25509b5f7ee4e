"""Records -> Kinesis PutRecords, with retries that never lose or repeat an accepted record.

The rules, each for a reason:

- **One PutRecords in flight per shard.** A visitor's lines go to one shard; one call at a time
  keeps them in order there, and moto loses records under concurrent puts (DESIGN.md §5). Shards
  are independent, so each has its own call.
- **Flush on size or linger.** A shard sends as soon as it has a full call's worth (or a full
  aggregated record), otherwise once its oldest waiting line is `linger_s` old. `drain()` sends
  everything at once.
- **Partial failures resend exactly the failed entries**, matched by index in the response, ahead
  of newer records for that shard. Accepted entries are acknowledged at once and never resent.
- **Throttling, 5xx and connection errors back off** exponentially with full jitter (AWS's
  recommendation for competing clients), per shard, without a limit on attempts: the records
  stay queued, the tailer stops reading when the in-flight budget is spent (the file is the
  buffer), and health turns red if it lasts. Other errors (a deleted stream, denied access) are
  retried the same way after a shard map reload, and logged as errors, because dropping lines is
  never the answer.
- **Resharding:** a put whose entries land on another shard than predicted, an error, or the
  periodic timer reloads the shard map; records waiting for a closed shard are re-packed for its
  children (`RecordBuilder.reroute`).
- **Acknowledgements** (`Ack`, one per batch of lines) are emitted only when Kinesis has accepted
  every record carrying that batch's lines; positions move only on them.

The Kinesis client is created by the caller (an aiobotocore client, real or pointed at the local
stack); give it botocore retries off (``total_max_attempts=1``) so this module decides what is
retried. The constructor does no I/O: `start()` loads the shard map and starts the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from agent.backoff import backoff_delay
from agent.metrics import AgentMetrics, is_healthy
from agent.models import Ack, FileIdentity, Line
from agent.records import (
    MAX_PUT_BYTES,
    MAX_PUT_RECORDS,
    MAX_RECORD_BYTES,
    Batch,
    OutRecord,
    RecordBuilder,
)
from agent.shardmap import ShardMap, ShardMapError

log = logging.getLogger(__name__)


class TailedBatch(Protocol):
    """What the shipper reads of `agent.tailer.LineBatch` (complete lines of one file)."""

    file: FileIdentity
    start: int
    data: bytes | None

    @property
    def lines(self) -> Sequence[Line]: ...


MIB = 1024 * 1024

_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "KMSThrottlingException",
    "RequestLimitExceeded",
    "SlowDown",
}
_SERVER = {"InternalFailure", "InternalFailureException", "ServiceUnavailable", "InternalError"}


def classify(code: str | None, status: int | None = None) -> str:
    """The retry cause of an error code (whole call or one entry): see metrics.RETRY_CAUSES."""
    if code in _THROTTLING:
        return "throttled"
    if code in _SERVER or (status is not None and status >= 500):
        return "server_error"
    return "rejected"


async def load_shard_map(client: Any, stream_name: str) -> ShardMap:
    """ListShards (all pages) -> ShardMap of the open shards."""
    shards: list[Mapping[str, Any]] = []
    response = await client.list_shards(StreamName=stream_name)
    shards.extend(response["Shards"])
    while token := response.get("NextToken"):
        response = await client.list_shards(NextToken=token)
        shards.extend(response["Shards"])
    return ShardMap.from_list_shards(shards)


@dataclass(slots=True)
class _Shard:
    """Sending state of one shard: its call in flight and the records to send again first."""

    task: asyncio.Task[None] | None = None
    retry: list[OutRecord] = field(default_factory=list)
    attempts: int = 0
    not_before: float = 0.0


class Shipper:
    """Takes lines, sends them to Kinesis, reports back which are safely stored."""

    def __init__(
        self,
        client: Any,
        stream_name: str,
        on_ack: Callable[[Ack], None],
        *,
        aggregate: bool = True,
        linger_s: float = 0.25,
        max_in_flight_bytes: int = 16 * MIB,
        max_record_bytes: int = MAX_RECORD_BYTES,
        max_put_records: int = MAX_PUT_RECORDS,
        max_put_bytes: int = MAX_PUT_BYTES,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 10.0,
        refresh_interval_s: float = 60.0,
        stall_seconds: float = 60.0,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if linger_s < 0:
            raise ValueError("linger_s must be >= 0")
        if not 1 <= max_put_records <= MAX_PUT_RECORDS:
            raise ValueError(f"max_put_records must be 1..{MAX_PUT_RECORDS}")
        if not max_record_bytes <= max_put_bytes <= MAX_PUT_BYTES:
            raise ValueError(f"max_put_bytes must be max_record_bytes..{MAX_PUT_BYTES}")
        self._client = client
        self.stream_name = stream_name
        self._on_ack = on_ack
        self.aggregate = aggregate
        self.linger_s = linger_s
        self.max_in_flight_bytes = max_in_flight_bytes
        self.max_record_bytes = max_record_bytes
        self.max_put_records = max_put_records
        self.max_put_bytes = max_put_bytes
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.refresh_interval_s = refresh_interval_s
        self.stall_seconds = stall_seconds
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self._clock = clock
        self._rng = rng

        self._builder: RecordBuilder | None = None
        self._shards: dict[str, _Shard] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_at = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flushing = False
        self._stopping = False
        self._truncated_seen = 0

        self.in_flight_bytes = 0
        self.pending_lines = 0
        self.pending_batches = 0
        self.waiting_since: float | None = None
        self.last_ack: float | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the shard map (errors propagate: a wrong stream name should stop the agent)."""
        if self._dispatcher is not None:
            return
        shard_map = await load_shard_map(self._client, self.stream_name)
        self._builder = RecordBuilder(
            shard_map, aggregate=self.aggregate, max_record_bytes=self.max_record_bytes
        )
        self._refresh_at = self._clock() + self.refresh_interval_s
        # Evaluated at each scrape, so the gauge is current without anyone polling healthy().
        self.metrics.healthy.set_function(lambda: 1.0 if self.healthy() else 0.0)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="shipper-dispatch")
        log.info("shipping to %s: %s", self.stream_name, shard_map)

    async def drain(self, timeout_s: float) -> bool:
        """Send everything now and wait until all of it is acknowledged; False on timeout.

        For SIGTERM: what is not acknowledged by then is simply read again on the next start.
        """
        self._flushing = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._flushing = False

    async def stop(self) -> None:
        """Cancel the dispatcher and calls in flight. Unacknowledged lines are not lost: their
        positions were never saved, so they are read again."""
        self._stopping = True
        self._wake.set()
        tasks = [self._dispatcher, self._refresher]
        tasks += [s.task for s in self._shards.values()]
        self._dispatcher = self._refresher = None
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def __aenter__(self) -> Shipper:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- input -------------------------------------------------------------------------------

    async def wait_for_room(self) -> None:
        """Block while the in-flight budget is spent (back-pressure on the tailer)."""
        while self.in_flight_bytes >= self.max_in_flight_bytes:
            self._room.clear()
            await self._room.wait()

    async def submit(self, lines: Sequence[Line]) -> None:
        """Queue lines (file order; each contiguous run of one file is acknowledged as one Ack)."""
        await self.wait_for_room()
        if lines:
            self._accept(self._require_builder().add_lines(lines, self._clock()))

    async def submit_chunk(self, file: FileIdentity, offset: int, chunk: bytes) -> None:
        """Queue complete lines read from `file` at `offset` (the bytes, no `Line` objects)."""
        await self.wait_for_room()
        if chunk:
            self._accept([self._require_builder().add_chunk(file, offset, chunk, self._clock())])

    async def submit_batch(self, batch: TailedBatch) -> None:
        """Queue one batch from the tailer: its bytes whole when it has them, else its lines."""
        if batch.data is not None:
            await self.submit_chunk(batch.file, batch.start, batch.data)
        else:
            await self.submit(batch.lines)

    def _require_builder(self) -> RecordBuilder:
        if self._builder is None:
            raise RuntimeError("Shipper.start() was not called")
        return self._builder

    def _accept(self, batches: list[Batch]) -> None:
        lines = nbytes = 0
        for batch in batches:
            lines += batch.lines
            nbytes += batch.nbytes
        if self.pending_lines == 0:
            self.waiting_since = self._clock()
        self.pending_lines += lines
        self.pending_batches += len(batches)
        self.in_flight_bytes += nbytes
        self._idle.clear()
        m = self.metrics
        m.lines_read.inc(lines)
        m.pending_lines.set(self.pending_lines)
        m.in_flight_bytes.set(self.in_flight_bytes)
        builder = self._builder
        assert builder is not None
        if builder.truncated_lines != self._truncated_seen:
            m.truncated_lines.inc(builder.truncated_lines - self._truncated_seen)
            self._truncated_seen = builder.truncated_lines
        if self.in_flight_bytes >= self.max_in_flight_bytes:
            self._room.clear()
        self._wake.set()

    # ---- health ------------------------------------------------------------------------------

    def healthy(self) -> bool:
        """False when lines wait and nothing was acknowledged for `stall_seconds` (for /healthz)."""
        return is_healthy(
            pending_lines=self.pending_lines,
            waiting_since=self.waiting_since,
            last_ack=self.last_ack,
            now=self._clock(),
            stall_seconds=self.stall_seconds,
        )

    # ---- dispatch ----------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Start a put for every idle shard that is due; sleep until the next one is due."""
        builder = self._require_builder()
        while not self._stopping:
            now = self._clock()
            next_at = self._refresh_at
            if now >= self._refresh_at:
                self._request_refresh()
                next_at = self._refresh_at = now + self.refresh_interval_s
            current = builder.shard_ids()
            for shard_id in {*current, *self._shards}:
                state = self._shards.get(shard_id)
                if state is None:
                    state = self._shards[shard_id] = _Shard()
                if state.task is not None:
                    continue
                if not state.retry and shard_id not in current:
                    del self._shards[shard_id]  # a closed shard with nothing left to send
                    continue
                if state.retry and now < state.not_before:
                    next_at = min(next_at, state.not_before)
                    continue
                due = self._due(shard_id, state, now)
                if due is not None and due > now:
                    next_at = min(next_at, due)
                elif due is not None:
                    records = self._take(shard_id, state)
                    if records:
                        state.task = asyncio.create_task(
                            self._put(shard_id, state, records), name=f"put-{shard_id}"
                        )
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the event being set, and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_at - self._clock())):
                    await self._wake.wait()

    def _due(self, shard_id: str, state: _Shard, now: float) -> float | None:
        """When this shard should send: now (full, retrying, draining), later (linger), or never."""
        if state.retry:
            return now
        assert self._builder is not None
        count, size, since = self._builder.waiting(shard_id)
        if not count or since is None:
            return None
        full = size >= self.max_record_bytes or count >= self.max_put_records
        if self._flushing or full:
            return now
        return since + self.linger_s

    def _take(self, shard_id: str, state: _Shard) -> list[OutRecord]:
        """The next call's records: those to retry first, then new ones, within the call limits."""
        assert self._builder is not None
        records, size = [], 0
        while state.retry and len(records) < self.max_put_records:
            nxt = state.retry[0]
            if records and size + nxt.size > self.max_put_bytes:
                return records
            records.append(state.retry.pop(0))
            size += nxt.size
        room = self.max_put_records - len(records)
        if room and not state.retry and self.max_put_bytes - size >= self.max_record_bytes:
            records += self._builder.take(shard_id, room, self.max_put_bytes - size)
        return records

    async def _put(self, shard_id: str, state: _Shard, records: list[OutRecord]) -> None:
        try:
            await self._put_once(shard_id, state, records)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not strand the records: keep them for the next attempt
            log.exception("unexpected error while putting to %s", shard_id)
            self._retry(state, records, "rejected")
        finally:
            state.task = None
            self._wake.set()

    async def _put_once(self, shard_id: str, state: _Shard, records: list[OutRecord]) -> None:
        started = self._clock()
        log.debug("PutRecords to %s: %d records", shard_id, len(records))
        try:
            response = await self._client.put_records(
                StreamName=self.stream_name, Records=[r.entry() for r in records]
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            cause = classify(error.get("Code"), status)
            self._log_failure(shard_id, cause, f"{error.get('Code')}: {error.get('Message')}")
            if cause == "rejected":
                self._request_refresh()
            self._retry(state, records, cause)
            return
        except (BotoCoreError, OSError) as exc:
            self._log_failure(shard_id, "connection", repr(exc))
            self._retry(state, records, "connection")
            return
        self.metrics.put_seconds.observe(self._clock() - started)
        log.debug("PutRecords to %s: answered in %.3fs", shard_id, self._clock() - started)
        results = response["Records"]
        if len(results) != len(records):  # never trust a malformed answer with our data
            self._log_failure(shard_id, "server_error", "response and request sizes differ")
            self._retry(state, records, "server_error")
            return
        failed: list[OutRecord] = []
        cause = "throttled"
        moved = False
        for record, result in zip(records, results, strict=True):
            code = result.get("ErrorCode")
            if code:
                failed.append(record)
                cause = classify(code)
            else:
                moved = moved or result.get("ShardId", record.shard_id) != record.shard_id
                self._accepted(record)
        if moved:  # Kinesis stored a record elsewhere than predicted: the map is stale
            self._request_refresh()
        if len(failed) < len(records):
            self.metrics.last_put.set(time.time())
        if failed:
            self._log_failure(shard_id, cause, f"{len(failed)} of {len(records)} entries failed")
            self._retry(state, failed, cause)
        else:
            state.attempts = 0

    def _log_failure(self, shard_id: str, cause: str, detail: str) -> None:
        level = logging.ERROR if cause == "rejected" else logging.WARNING
        log.log(level, "PutRecords to %s: %s (%s); will retry", shard_id, detail, cause)

    def _retry(self, state: _Shard, records: list[OutRecord], cause: str) -> None:
        """Queue `records` to be sent again, first, after a jittered backoff."""
        self.metrics.retries.labels(cause).inc(len(records))
        assert self._builder is not None
        builder = self._builder
        current = [r for r in records if builder.is_current(r)]
        stale = [r for r in records if not builder.is_current(r)]
        state.retry[:0] = current
        for record in stale:
            for moved in builder.reroute(record):
                self._shards.setdefault(moved.shard_id, _Shard()).retry.append(moved)
        state.attempts += 1
        state.not_before = self._clock() + backoff_delay(
            state.attempts, self.backoff_base_s, self.backoff_cap_s, self._rng
        )

    def _accepted(self, record: OutRecord) -> None:
        m = self.metrics
        m.records_sent.inc()
        m.bytes_sent.inc(record.size)
        m.lines_sent.inc(record.lines)
        self.last_ack = self._clock()
        for batch in record.batches:
            batch.pending -= 1
            if batch.pending == 0:
                self._batch_done(batch)

    def _batch_done(self, batch: Batch) -> None:
        self.pending_lines -= batch.lines
        self.pending_batches -= 1
        self.in_flight_bytes -= batch.nbytes
        m = self.metrics
        m.pending_lines.set(self.pending_lines)
        m.in_flight_bytes.set(self.in_flight_bytes)
        if self.in_flight_bytes < self.max_in_flight_bytes:
            self._room.set()
        if self.pending_batches == 0:
            self.waiting_since = None
            self._idle.set()
        self._on_ack(batch.ack())

    # ---- shard map ---------------------------------------------------------------------------

    def _request_refresh(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh(), name="shipper-refresh")

    async def _refresh(self) -> None:
        builder = self._require_builder()
        try:
            shard_map = await load_shard_map(self._client, self.stream_name)
        except (ClientError, BotoCoreError, OSError, ShardMapError) as exc:
            # A half-done reshard or a network error: try again soon, keep using the old map.
            log.warning("ListShards failed (%r); keeping the current shard map", exc)
            self._refresh_at = min(self._refresh_at, self._clock() + self.backoff_cap_s)
            return
        if shard_map == builder.shard_map:
            return
        log.info("shard map changed: %s -> %s", builder.shard_map, shard_map)
        builder.set_shard_map(shard_map)
        for shard_id, state in list(self._shards.items()):
            if shard_id in shard_map.shard_ids:
                continue
            stale, state.retry = state.retry, []
            for record in stale:
                for moved in builder.reroute(record):
                    self._shards.setdefault(moved.shard_id, _Shard()).retry.append(moved)
            if state.task is None:
                del self._shards[shard_id]
        self._wake.set()
