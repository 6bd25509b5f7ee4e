"""CloudWatch custom metrics: closed buckets in, batched PutMetricData out, outages ridden out.

The hand-over contract (why a CloudWatch outage neither blocks nor loses anything)
---------------------------------------------------------------------------------
The counters own the truth: a shard's `ShardState` keeps every closed minute's increments until
told they were published, and its publication cursor (`published_through`) is part of the
checkpointed state snapshot. This sink never holds the only copy of anything that matters.

1. Every cycle the processor turns the counters' unpublished closed buckets into
   `MetricBatch`es (one per source and bucket: `source` is the cursor's owner, e.g. the shard
   id; `cursor` increases per source, e.g. the minute) and calls `add()` with all of them,
   oldest first. The sink takes, per source, the batches after the last one it already holds,
   in order, while its queue has room; a batch it already holds is ignored, so handing the same
   pending list over every cycle is correct and cheap.
2. `flush()` (the publish loop, `run()`, calls it every interval) sends the queue in order, in
   PutMetricData calls within the API limits (1,000 data and 1 MB per call), retrying each
   call with backoff. When CloudWatch stays unreachable it gives up for this cycle and keeps
   the rest queued, in order, with their original timestamps (CloudWatch accepts data up to
   two weeks old), and never raises: a metrics outage shows up as a growing queue and the
   `MetricFailures` count, not as an exception in the processor.
3. `acknowledged(source)` is the newest cursor of that source whose data, and all before it,
   CloudWatch accepted. The processor calls `ShardState.mark_published(acknowledged)` before
   its next snapshot, so the cursor in the snapshot only ever covers published minutes.
4. After a crash the restored counters hand over everything after the snapshotted cursor
   again. Nothing is lost; minutes published after the last snapshot are published twice (a
   PutMetricData cannot be made idempotent: CloudWatch sums same-timestamp values), so
   metrics are at-least-once with a duplicate window of one snapshot interval; the archive and
   the API's counts are exactly once.

5. When a shard's lease is lost, the processor calls `forget(shard)`: the new owner publishes
   from the snapshot, so this worker must not send the same minutes as well.

6. Cancelling a flush (the worker stops the publish loop before its final flush) never sends
   a call twice: a PutMetricData in flight is shielded and remembered, and the next `flush()`
   waits for its answer before deciding whether those data are still to be sent.

The archive flush and the checkpoint never await this sink; only the publish loop does. It is
therefore not a `CheckpointedSink`.

Bounds: the queue holds at most `max_queued` data. When full, `add()` refuses further batches
(logged, counted in `stats.refused` and the `MetricFailures` metric). Refusing is not losing:
a refused batch stays unpublished in the counters and is offered again next cycle. The one
loss CloudWatch forces is age: data older than two weeks can no longer be put; such data is
dropped at send time, logged as an error and counted (`stats.expired`), and acknowledged so
the cursor can move on. Likewise a datum CloudWatch refuses outright (HTTP 400 other than
throttling: a NaN, a bad dimension) would block every later one forever: the call is split
until the refused datum is alone, which is then dropped, logged and counted (`stats.invalid`).

Cardinality (DESIGN.md §8): `bucket_metric_data` publishes per-city and per-region series only
for the top N places; every other place is folded into one series whose every dimension is
`Other` (`consumers.metric_names`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from botocore.exceptions import ClientError

from consumers import metric_names as names

log = logging.getLogger(__name__)

MAX_DATA_PER_CALL: Final = 1_000
MAX_PAYLOAD_BYTES: Final = 1_000_000
PAYLOAD_BUDGET_BYTES: Final = 900_000
"""Our estimate of a call's size is conservative, and this keeps a margin below the limit."""
MAX_AGE_S: Final = 14 * 24 * 3600 - 3600
"""CloudWatch accepts timestamps up to two weeks old; an hour's margin for clock skew."""
MAX_INVALID_PER_CYCLE: Final = 10
"""Refused data dropped per publish cycle at most: past that, CloudWatch is refusing our setup
(an invalid namespace), not a datum, and dropping everything would lose the counts."""
DEFAULT_MAX_QUEUED: Final = 200_000
DEFAULT_INTERVAL_S: Final = 60.0
DEFAULT_TOP_N: Final = 20

METRIC_FAILURES: Final = "MetricFailures"
"""Count: data refused (queue full), expired, or PutMetricData calls that failed after retries.
(Belongs in `consumers.metric_names` next to ARCHIVE_FAILURES.)"""

Place = tuple[str, str, str]
"""(city, region, country): a city, as its dimensions name it."""


@dataclass(frozen=True, slots=True)
class MetricDatum:
    """One value of one series at one time (the bucket's start, epoch seconds)."""

    name: str
    dimensions: tuple[tuple[str, str], ...]
    timestamp: float
    value: float
    unit: str = "Count"

    def to_api(self) -> dict[str, Any]:
        return {
            "MetricName": self.name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions],
            "Timestamp": datetime.fromtimestamp(self.timestamp, UTC),
            "Value": float(self.value),
            "Unit": self.unit,
        }

    def payload_estimate(self) -> int:
        """An upper bound of this datum's share of a request body in any of CloudWatch's
        protocols: the query protocol (the largest: member keys, every byte of a name or
        value possibly percent-encoded as three), JSON, or CBOR (current botocore)."""
        size = 250 + 3 * len(self.name.encode())
        for key, value in self.dimensions:
            size += 110 + 3 * (len(key.encode()) + len(value.encode()))
        return size


@dataclass(frozen=True, slots=True)
class MetricBatch:
    """The data of one closed bucket of one cursor owner."""

    source: str
    cursor: int
    data: tuple[MetricDatum, ...]


@dataclass(frozen=True, slots=True)
class PublishResult:
    sent: int
    calls: int
    failed_calls: int
    expired: int
    queued: int
    invalid: int = 0


@dataclass(slots=True)
class PublishStats:
    """Lifetime figures; `failures` feeds the MetricFailures health metric."""

    sent: int = 0
    calls: int = 0
    failed_calls: int = 0
    refused: int = 0
    expired: int = 0
    invalid: int = 0

    @property
    def failures(self) -> int:
        return self.failed_calls + self.refused + self.expired + self.invalid


class _Outcome(enum.Enum):
    SENT = "sent"
    FAILED = "failed"  # unreachable, throttled, 5xx: the data are fine, try later
    INVALID = "invalid"  # CloudWatch refuses the data themselves: retrying cannot help


_THROTTLING_CODES: Final = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded"})


def _refuses_the_data(error: ClientError) -> bool:
    """A 400 that is not throttling: a datum is invalid (NaN, too many dimensions, a value
    out of range...). Kept, it would block every later metric for good."""
    response = error.response
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code", "")
    return status == 400 and code not in _THROTTLING_CODES


@dataclass(slots=True)
class _Entry:
    source: str
    cursor: int
    datum: MetricDatum


class CloudWatchSink:
    """Publishes `MetricBatch`es to one namespace; see the module docstring for the contract."""

    def __init__(
        self,
        cloudwatch: Any,
        namespace: str,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_queued < 1 or max_attempts < 1:
            raise ValueError("max_queued and max_attempts must be >= 1")
        self._cloudwatch = cloudwatch
        self.namespace = namespace
        self.max_queued = max_queued
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._queue: deque[_Entry] = deque()
        self._held_through: dict[str, int] = {}
        self._acknowledged: dict[str, int] = {}
        self._outstanding: dict[str, deque[list[int]]] = {}
        """Per source, [cursor, data not yet accepted] for each held batch, oldest first."""
        self._lock = asyncio.Lock()
        self._orphan: tuple[asyncio.Future[Any], list[_Entry]] | None = None
        """A PutMetricData whose caller was cancelled (shutdown) while it was in flight: it may
        still land, so its data must not be sent again before its outcome is known."""
        self.stats = PublishStats()

    # ------------------------------------------------------------------ hand-over

    def add(self, batches: Iterable[MetricBatch]) -> int:
        """Take the batches after those already held, per source in cursor order, while the
        queue has room; return how many were taken. Never raises, never blocks."""
        taken = 0
        refused_sources: set[str] = set()
        for batch in batches:
            source = batch.source
            held = self._held_through.get(source)
            if held is not None and batch.cursor <= held:
                continue
            full = self._queue and len(self._queue) + len(batch.data) > self.max_queued
            if source in refused_sources or full:
                refused_sources.add(source)  # later ones too: cursors must stay contiguous
                self.stats.refused += len(batch.data)
                continue
            self._hold(batch)
            taken += 1
        if refused_sources:
            log.warning(
                "metrics queue full (%d data, limit %d): batches of %s left with the counters "
                "until CloudWatch catches up",
                len(self._queue),
                self.max_queued,
                ", ".join(sorted(refused_sources)),
            )
        return taken

    def _hold(self, batch: MetricBatch) -> None:
        source = batch.source
        self._held_through[source] = batch.cursor
        outstanding = self._outstanding.setdefault(source, deque())
        if not batch.data and not outstanding:
            self._acknowledged[source] = batch.cursor
            return
        outstanding.append([batch.cursor, len(batch.data)])
        self._queue.extend(_Entry(source, batch.cursor, datum) for datum in batch.data)

    def forget(self, source: str) -> int:
        """Drop what is queued for `source` (its lease was lost: the shard's new owner restores
        the snapshot and publishes those minutes itself; sending them here too would count
        them twice). Returns how many data were dropped."""
        kept = deque(entry for entry in self._queue if entry.source != source)
        dropped = len(self._queue) - len(kept)
        self._queue = kept
        self._held_through.pop(source, None)
        self._acknowledged.pop(source, None)
        self._outstanding.pop(source, None)
        return dropped

    def held_through(self, source: str) -> int | None:
        """The newest cursor of `source` taken by `add` (queued, in flight or acknowledged)."""
        return self._held_through.get(source)

    def acknowledged(self, source: str) -> int | None:
        """The newest cursor of `source` whose data, and all before it, reached CloudWatch."""
        return self._acknowledged.get(source)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _remove_sent(self, chunk: Sequence[_Entry]) -> None:
        """Take the chunk off the queue's head. By identity: `forget()` may have removed some
        of its entries while the call was in flight (the rest are still the head, in order)."""
        queue = self._queue
        for entry in chunk:
            if queue and queue[0] is entry:
                queue.popleft()

    def _settle(self, entries: Iterable[_Entry]) -> None:
        """These entries are done (accepted or expired): move the sources' acknowledgements."""
        for entry in entries:
            outstanding = self._outstanding.get(entry.source)
            if not outstanding:  # forgotten while in flight
                continue
            outstanding[0][1] -= 1
            while outstanding and outstanding[0][1] == 0:
                self._acknowledged[entry.source] = outstanding.popleft()[0]

    # ------------------------------------------------------------------ publish

    async def flush(self) -> PublishResult:
        """Send what is queued, oldest first; stop at a call that keeps failing. Never raises
        for CloudWatch's sake: the rest stays queued for the next cycle."""
        async with self._lock:
            sent = await self._settle_orphan()
            calls = failed = expired = invalid = 0
            limit = MAX_DATA_PER_CALL
            while self._queue:
                expired += self._drop_expired()
                chunk = self._next_chunk(limit)
                if not chunk:
                    break
                outcome = await self._put(chunk)
                calls += 1
                if outcome is _Outcome.FAILED:
                    failed += 1
                    break
                if outcome is _Outcome.INVALID:
                    if len(chunk) > 1:  # narrow down to the datum CloudWatch refuses
                        limit = max(1, len(chunk) // 2)
                        continue
                    if invalid == MAX_INVALID_PER_CYCLE:  # not the data: the setup (namespace)
                        log.error("CloudWatch refuses every datum; check the namespace")
                        failed += 1
                        break
                    invalid += 1
                    self.stats.invalid += 1
                    log.error("CloudWatch refuses %s; dropped", chunk[0].datum)
                self._remove_sent(chunk)
                self._settle(chunk)
                if outcome is _Outcome.SENT:
                    sent += len(chunk)
            self.stats.sent += sent
            self.stats.calls += calls
            return PublishResult(sent, calls, failed, expired, len(self._queue), invalid)

    async def _settle_orphan(self) -> int:
        """Wait for the call a cancelled flush left in flight; its data leave the queue only if
        it succeeded. Returns how many data it sent."""
        if self._orphan is None:
            return 0
        call, chunk = self._orphan
        try:
            await call
        except Exception:  # not stored: the data are still queued, and go out again
            return 0
        finally:
            self._orphan = None
        self._remove_sent(chunk)
        self._settle(chunk)
        return len(chunk)

    def _drop_expired(self) -> int:
        oldest_allowed = self._clock() - MAX_AGE_S
        dropped: list[_Entry] = []
        while self._queue and self._queue[0].datum.timestamp < oldest_allowed:
            dropped.append(self._queue.popleft())
        if dropped:
            self.stats.expired += len(dropped)
            log.error(
                "dropped %d metric data older than CloudWatch accepts (oldest %s); "
                "the archive still holds the events",
                len(dropped),
                datetime.fromtimestamp(dropped[0].datum.timestamp, UTC).isoformat(),
            )
            self._settle(dropped)
        return len(dropped)

    def _next_chunk(self, limit: int) -> list[_Entry]:
        chunk: list[_Entry] = []
        size = 0
        for entry in self._queue:
            estimate = entry.datum.payload_estimate()
            if chunk and (len(chunk) == limit or size + estimate > PAYLOAD_BUDGET_BYTES):
                break
            chunk.append(entry)
            size += estimate
        return chunk

    async def _put(self, chunk: Sequence[_Entry]) -> _Outcome:
        data = [entry.datum.to_api() for entry in chunk]
        for attempt in range(1, self.max_attempts + 1):
            call = asyncio.ensure_future(
                self._cloudwatch.put_metric_data(Namespace=self.namespace, MetricData=data)
            )
            try:
                # Shielded: cancelling the publisher (shutdown) must not forget a call that
                # may land; the next flush waits for it instead of sending its data twice.
                await asyncio.shield(call)
                return _Outcome.SENT
            except asyncio.CancelledError:
                self._orphan = (call, list(chunk))
                raise
            except ClientError as error:
                if _refuses_the_data(error):
                    return _Outcome.INVALID
                failure: Exception = error
            except Exception as error:  # any other failure: keep the data, try again later
                failure = error
            if attempt == self.max_attempts:
                self.stats.failed_calls += 1
                log.warning(
                    "PutMetricData failed %d times; %d data stay queued for the next cycle: %s",
                    attempt,
                    len(self._queue),
                    failure,
                )
                return _Outcome.FAILED
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
        return _Outcome.FAILED  # pragma: no cover - the loop always returns

    async def run(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        """Publish every `interval_s` until cancelled (the service's worker owns the task)."""
        while True:
            started = time.monotonic()
            try:
                await self.flush()
            except Exception:  # a bug must not end publishing for good; say so loudly
                log.exception("metrics publish cycle failed")
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


# ----------------------------------------------------------------------------- bucket -> data


def top_places(
    by_place: Mapping[Place, Sequence[int]], n: int, key_of: Callable[[Place], Any]
) -> set[Any]:
    """The `n` places (as `key_of` groups them) with most visitors, then page views, then name."""
    totals: dict[Any, list[int]] = {}
    for place, counts in by_place.items():
        key = key_of(place)
        total = totals.setdefault(key, [0, 0])
        total[0] += counts[1]
        total[1] += counts[0]
    ranked = sorted(totals, key=lambda k: (-totals[k][0], -totals[k][1], k))
    return set(ranked[:n])


def bucket_metric_data(
    timestamp: float,
    by_place: Mapping[Place, Sequence[int]],
    *,
    top_n: int = DEFAULT_TOP_N,
    top_cities: Collection[Place] | None = None,
    top_regions: Collection[tuple[str, str]] | None = None,
    rejected_lines: int = 0,
) -> list[MetricDatum]:
    """One closed bucket's data: totals, per-city and per-region series.

    `by_place` maps (city, region, country) to (page views, visitors, menu viewers,
    purchasers). Cities outside `top_cities` (by default this bucket's `top_n`) and regions
    outside `top_regions` are folded into the `Other` series. Callers that want a stable set
    (fewer distinct metrics per month, so a lower bill) pass the top N of a longer window, such
    as the last 24 hours' summary.
    """
    metrics = (names.PAGE_VIEWS, names.VISITORS, names.MENU_VIEWERS, names.PURCHASERS)
    if top_cities is None:
        top_cities = top_places(by_place, top_n, lambda p: p)
    if top_regions is None:
        top_regions = top_places(by_place, top_n, lambda p: (p[2], p[1]))

    totals = [0, 0, 0, 0]
    cities: dict[tuple[tuple[str, str], ...], list[int]] = {}
    regions: dict[tuple[tuple[str, str], ...], list[int]] = {}
    other_city = tuple((d, names.OTHER) for d in names.CITY_DIMENSIONS)
    other_region = tuple((d, names.OTHER) for d in names.REGION_DIMENSIONS)
    for place, counts in by_place.items():
        city, region, country = place
        if place in top_cities:
            city_key = ((names.COUNTRY, country), (names.REGION, region), (names.CITY, city))
        else:
            city_key = other_city
        if (country, region) in top_regions:
            region_key = ((names.COUNTRY, country), (names.REGION, region))
        else:
            region_key = other_region
        for series, key in ((cities, city_key), (regions, region_key)):
            into = series.setdefault(key, [0, 0, 0, 0])
            for i in range(4):
                into[i] += counts[i]
        for i in range(4):
            totals[i] += counts[i]

    data = [MetricDatum(m, (), timestamp, v) for m, v in zip(metrics, totals, strict=True)]
    data.append(MetricDatum(names.REJECTED_LINES, (), timestamp, rejected_lines))
    for series in (cities, regions):
        for dims in sorted(series):
            data += [
                MetricDatum(m, dims, timestamp, v)
                for m, v in zip(metrics, series[dims], strict=True)
            ]
    return data


def health_metric_data(
    timestamp: float,
    *,
    records: int,
    iterator_age_ms: float,
    archive_failures: int,
    metric_failures: int,
) -> list[MetricDatum]:
    """The pipeline-health series for one interval (no dimensions: one per deployment).
    Rejected lines are not here: they come with each closed bucket (`bucket_metric_data`),
    under the counters' cursor, so they are never published twice by a restart's replay."""
    return [
        MetricDatum(names.RECORDS_PROCESSED, (), timestamp, records),
        MetricDatum(names.ITERATOR_AGE, (), timestamp, iterator_age_ms, "Milliseconds"),
        MetricDatum(names.ARCHIVE_FAILURES, (), timestamp, archive_failures),
        MetricDatum(METRIC_FAILURES, (), timestamp, metric_failures),
    ]
