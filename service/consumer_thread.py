"""The consumer worker on an event loop of its own, in a thread of the consumer process.

`service.consumer_process` runs this in the service's child process: the worker's loop on this
thread, and the process's main thread answering the service (status snapshots, summaries). The
two meet in two ways only:

- `call_blocking(fn)`: run `fn` on the worker's loop and wait for its result:
  anything that reads the counters (a summary), since the state must not be read while a
  batch is being added;
- `status()`: plain reads of whole values (`worker.stats` integers, `CallWatch` records), which
  are safe across threads in Python.

Starting never gives up: when AWS is unreachable or the stream is missing, the thread keeps
trying (the service stays up, `/readyz` says why it is not ready), as a container that came up
before its network should. Stopping is the consumer's own graceful stop (drain, commit, evict),
bounded by its 25 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from consumers.client_address import TrustedProxies
from consumers.counters import FIELD_MASK, ShardState
from consumers.enrich import Enricher
from consumers.geo.locator import Location, city_catalog_path
from consumers.geo.reloading import ReloadingGeoLocator
from consumers.scheduler import ConsumerWorker, LeaseReport, WorkerConfig
from consumers.windows import minute_start, window_first_minute, window_minutes
from service.aws import aws_client
from service.call_watch import CallWatch, OperationHealth
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_START_S: Final = (0.5, 1.0, 2.0, 5.0)
"""Waits between start attempts: quick at first (the demo starts the service while setup is
still creating the stream), then every 5 s."""
STOP_MARGIN_S: Final = 1.5
"""Time beyond the worker's own stop deadline for closing clients before the thread is left."""

CityName = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """What the web side knows of the consumer between two snapshots (`ConsumerThread.status`).
    Times are `time.monotonic()`, which on Linux is one clock for every process."""

    at: float
    thread_alive: bool
    worker_started: bool
    running: bool
    start_error: str | None
    geo_loaded: str | None
    """The loaded database's type; None while none is loaded (`geo_error` says why)."""
    geo_error: str | None
    records: int
    commits: int
    shard_failures: int
    shards: dict[str, int]
    """Held shard -> milliseconds behind the stream's tip."""
    operations: dict[tuple[str, str], OperationHealth]
    last_fetches: dict[str, float]
    stopped_cleanly: bool
    leases: LeaseReport | None = None
    """The lease coordinator's view (held, pending, counters, health); None before the worker."""


class PlaceCoordinates:
    """A geolocator that remembers where each city it answered lies, for the dashboard's map.

    The counters keep places by name only; the map needs a latitude and a longitude. Wrapping
    the enricher's locator records them as hits are geolocated (one dictionary look-up a hit),
    so every city the service has seen this run can be drawn. The shipped city catalog's
    cities are known from the start, so a state restored from a snapshot is drawn at once.
    """

    def __init__(self, inner: ReloadingGeoLocator) -> None:
        self.inner = inner
        self.known: dict[CityName, tuple[float, float]] = catalog_coordinates()

    def lookup(self, ip: str) -> Location:
        location = self.inner.lookup(ip)
        key = (location.city, location.region, location.country)
        if key not in self.known and location.latitude is not None:
            self.known[key] = (location.latitude, location.longitude or 0.0)
        return location


class ConsumerThread:
    """Runs `ConsumerWorker` on its own loop; see the module notes for how to talk to it."""

    def __init__(self, settings: Settings, config: WorkerConfig, *, metrics: bool = True) -> None:
        self.settings = settings
        self.config = config
        self.metrics_enabled = metrics
        self.calls = CallWatch()
        self.worker: ConsumerWorker | None = None
        self.geo: ReloadingGeoLocator | None = None
        self.coordinates: PlaceCoordinates | None = None
        self.start_error: str | None = None
        self.geo_error: str | None = None
        self.stopped_cleanly = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._first_attempt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consumer", daemon=True)

    # ---- lifecycle (called from the web server's side) ----------------------------------------

    def start(self, wait_s: float = 30.0) -> None:
        """Start the thread; return after the first start attempt (success or not)."""
        self._thread.start()
        self._first_attempt.wait(wait_s)

    def stop(self) -> None:
        """Graceful stop; blocks until the worker committed and the thread ended (or gave up)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(self.config.stop_timeout_s + STOP_MARGIN_S)
        if self._thread.is_alive():
            log.error("the consumer did not stop in time; exiting without it")

    @property
    def thread_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def running(self) -> bool:
        """The thread lives and the worker's own coordination task too."""
        worker = self.worker
        return self._thread.is_alive() and worker is not None and worker.is_running

    def call_blocking(self, fn: Callable[[], T], timeout: float) -> T:
        """`fn()` on the worker's loop, waited for from another (non-asyncio) thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the consumer is not running")

        async def invoke() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(invoke(), loop).result(timeout)

    def status(self) -> ConsumerStatus:
        """A snapshot of everything health, readiness and /metrics read; plain values only
        (it crosses a process boundary), safe to take from another thread."""
        worker = self.worker
        geo = self.geo
        geo_loaded: str | None = None
        if geo is not None:
            with contextlib.suppress(Exception):  # a reader closed under us
                geo_loaded = geo.database_type
        processors = list(worker.processors.values()) if worker is not None else []
        return ConsumerStatus(
            at=time.monotonic(),
            thread_alive=self.thread_alive,
            worker_started=worker is not None,
            running=self.running,
            start_error=self.start_error,
            geo_loaded=geo_loaded,
            geo_error=self.geo_error,
            records=worker.stats.records if worker is not None else 0,
            commits=worker.stats.commits if worker is not None else 0,
            shard_failures=worker.stats.shard_failures if worker is not None else 0,
            shards={p.shard_id: p.stats.millis_behind_latest or 0 for p in processors},
            operations=self.calls.operations(),
            last_fetches=self.calls.last_fetches(),
            stopped_cleanly=self.stopped_cleanly,
            leases=worker.lease_report if worker is not None else None,
        )

    # ---- queries (run on the worker's loop through `call`) ------------------------------------

    def summary(self, window: str, limit: int | None, sort: str = "visitors") -> dict[str, Any]:
        """The counters' summary plus the per-minute trend, map coordinates and pipeline
        figures the dashboard shows. Cities and regions come by visitors (the contract's
        order), or by `sort` (`menu_viewers`, `purchasers`), most first, ties by name."""
        worker = self.worker
        if worker is None:
            raise RuntimeError("the consumer is not running")
        states = worker.states()
        if sort == "visitors":
            body = worker.summary(window, limit)
        else:
            body = worker.summary(window, None)
            for rows in ("cities", "regions"):
                # Stable sort: rows already come by visitors, then name.
                ranked = sorted(body[rows], key=lambda row: -row[sort])
                body[rows] = ranked if limit is None else ranked[:limit]
        coordinates = self.coordinates.known if self.coordinates is not None else {}
        for row in body["cities"]:
            where = coordinates.get((row["city"], row["region"], row["country"]))
            row["latitude"], row["longitude"] = where if where else (None, None)
        body["trend"] = page_views_by_minute(states, window_minutes(window))
        body["pipeline"] = {
            "lines_processed": worker.stats.records,
            "commits": worker.stats.commits,
            "shards": len(worker.processors),
            "millis_behind_latest": worker.millis_behind_latest,
        }
        return body

    # ---- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("the consumer thread failed")
        finally:
            self._first_attempt.set()
            if self.geo is not None:
                self.geo.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as clients:
            kinesis = await clients.enter_async_context(aws_client("kinesis"))
            dynamodb = await clients.enter_async_context(aws_client("dynamodb"))
            s3 = await clients.enter_async_context(aws_client("s3", read_timeout=60))
            cloudwatch: Any = None
            if self.metrics_enabled:
                cloudwatch = await clients.enter_async_context(aws_client("cloudwatch"))
            for client in (kinesis, dynamodb, s3, cloudwatch):
                if client is not None:
                    self.calls.attach(client)
            attempt = 0
            while not self._stop.is_set():
                if await self._try_start(kinesis, dynamodb, s3, cloudwatch):
                    break
                self._first_attempt.set()
                wait_s = RETRY_START_S[min(attempt, len(RETRY_START_S) - 1)]
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait_s)
            self._first_attempt.set()
            await self._stop.wait()
            if self.worker is not None and self.worker.is_running:
                started = time.monotonic()
                # Nothing is read after this stop (as in `clickstream consume`), so the open
                # minutes are published too; a later run adds late hits to the next minute.
                await self.worker.stop(close_open_minutes=True)
                self.stopped_cleanly = True
                log.info("consumer drained and checkpointed in %.1f s", time.monotonic() - started)

    async def _try_start(self, kinesis: Any, dynamodb: Any, s3: Any, cloudwatch: Any) -> bool:
        if self.coordinates is None:
            try:
                self.geo = ReloadingGeoLocator(self.settings.geoip_db)
            except (OSError, ValueError) as exc:
                self.geo_error = f"cannot load the geolocation database: {exc}"
                self.start_error = self.geo_error
                log.error("%s", self.geo_error)
                return False
            self.geo_error = None
            self.coordinates = PlaceCoordinates(self.geo)
        proxies = TrustedProxies(
            p.strip() for p in self.settings.trusted_proxies.split(",") if p.strip()
        )
        worker = ConsumerWorker(
            self.config,
            kinesis=kinesis,
            dynamodb=dynamodb,
            s3=s3,
            cloudwatch=cloudwatch,
            lease_table=self.settings.lease_table,
            enricher=Enricher(
                self.coordinates, rules=self.settings.site_rules, trusted_proxies=proxies
            ),
        )
        try:
            await worker.start()
        except Exception as exc:
            self.start_error = f"consumer cannot start: {type(exc).__name__}: {exc}"[:500]
            log.warning("%s; trying again", self.start_error)
            with contextlib.suppress(Exception):
                await worker.stop()
            return False
        self.worker = worker
        self.start_error = None
        log.info("consumer %s reading %s", self.config.worker_id, self.config.stream)
        return True


def catalog_coordinates(path: Path | None = None) -> dict[CityName, tuple[float, float]]:
    """(city, region, country) -> (latitude, longitude) of the shipped city catalog; empty
    when it is not there (a custom database needs none: its cities are learnt from hits)."""
    try:
        document = json.loads((path or city_catalog_path()).read_text())
        return {
            (c["city"], c["region"], c["country"]): (float(c["latitude"]), float(c["longitude"]))
            for c in document["cities"]
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def page_views_by_minute(states: list[ShardState], span: int) -> list[dict[str, Any]]:
    """Page views of each minute of the window ending with the newest minute any shard saw,
    oldest first, zeros included (a chart needs the gaps)."""
    newest = [s.newest_minute for s in states if s.newest_minute is not None]
    if not newest:
        return []
    end = max(newest)
    first = window_first_minute(end, span)
    views = dict.fromkeys(range(first, end + 1), 0)
    for state in states:
        for minute, cells in state.buckets.items():
            if minute in views:
                views[minute] += sum(cells.values()) & FIELD_MASK
    return [{"minute": _iso_minute(minute), "page_views": count} for minute, count in views.items()]


def _iso_minute(minute: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(minute_start(minute)))
