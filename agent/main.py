"""The running agent: tailer -> shipper -> acknowledgements -> checkpoint, and its operability.

The flow, and the one rule that holds it together:

    GlobTailer --LineBatch--> Shipper --PutRecords--> Kinesis
        ^  (waits while AckTracker          | Ack (only for lines Kinesis accepted)
        |   says the budget is spent)       v
        +----------------------------- AckTracker --every checkpoint_interval_s--> PositionStore

Reading reports each batch to the `AckTracker` (`issued`); only the shipper's `Ack`s move a
file's checkpoint, and only over the contiguous acknowledged prefix. So a saved position can
never run ahead of what Kinesis stored, whatever happens to this process: `kill -9` costs at most
a resend of what was in flight (and of what was acknowledged since the last save), recognisable
downstream by event id.

Shutdown (SIGTERM, SIGINT) is ordered for the same reason: stop reading, let the shipper drain
within a deadline, stop it, and only then write the checkpoint one last time, so that the final
save includes every acknowledgement and nothing else. A second signal, or the deadline, cuts the
drain short; what was not acknowledged by then is simply read again on the next start. Either way
the process exits 0 within `shutdown_timeout_s` plus one checkpoint write, inside systemd's
`TimeoutStopSec`.

Operability lives here too, because it needs every part: a Prometheus `/metrics` and a `/healthz`
on a loopback port (a plain `http.server` thread: the agent has no web framework and needs none),
the lag of each file behind its end, health transitions and a periodic summary as structured log
lines, and systemd's readiness notification when run under `Type=notify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.config import AgentConfig
from agent.metrics import AgentMetrics
from agent.positions import AckTracker, PositionStore, StateDirLocked
from agent.shardmap import ShardMapError
from agent.shipper import Shipper
from agent.tailer import GlobTailer, ProgressSink, TailStats

log = logging.getLogger("clickstream.agent")

# systemd's TimeoutStopSec in deploy/clickstream-agent.service is 30 s: the drain deadline leaves
# room for the last checkpoint write and the interpreter's exit.
DEFAULT_SHUTDOWN_TIMEOUT_S = 20.0
LAG_INTERVAL_S = 1.0
SUMMARY_INTERVAL_S = 60.0
# Errors that mean "the stream cannot be used as configured": retrying will not help, so the agent
# stops with a message instead of looping (systemd would restart it into the same error).
_FATAL_CODES = {
    "ResourceNotFoundException",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ValidationException",
}
_START_BACKOFF_CAP_S = 10.0


class AgentError(Exception):
    """The agent cannot run as configured; the message says why (no traceback for operators)."""


@dataclass(frozen=True, slots=True)
class MetricsAddress:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Shutdown:
    """Signals turned into two events: the first asks for a graceful stop, the second forces it."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.requested_at: float | None = None

    def request(self, reason: str) -> None:
        if self.requested.is_set():
            log.warning("%s again: stopping now, without waiting for the drain", reason)
            self.forced.set()
            return
        log.info("%s: stopping (drain, checkpoint, exit)", reason)
        self.requested_at = time.monotonic()
        self.requested.set()

    @contextlib.contextmanager
    def on_signals(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        installed = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self.request, signal.Signals(signum).name)
                installed.append(signum)
        try:
            yield
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)


class Health:
    """Healthy unless lines wait with no acknowledgement for the stall time (the shipper's rule),
    or the stream could not even be opened for that long (the lines then wait in the file)."""

    def __init__(self, shipper: Shipper, stall_s: float) -> None:
        self._shipper = shipper
        self._stall_s = stall_s
        self._created = time.monotonic()
        self.started = False

    def healthy(self) -> bool:
        if not self.started:
            return time.monotonic() - self._created < self._stall_s
        return self._shipper.healthy()


class _TailerCollector(Collector):
    """The tailer's counters, read at scrape time (plain ints: no cost on the reading path)."""

    def __init__(self, stats: TailStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        s = self._stats
        counters = (
            ("clickstream_agent_rotations", "Followed files that lost their name", s.rotations),
            ("clickstream_agent_truncations", "Followed files truncated", s.truncations),
            (
                "clickstream_agent_oversize_truncated_lines",
                "Lines over the length limit, shipped cut with a marker",
                s.truncated_lines,
            ),
            (
                "clickstream_agent_oversize_rejected_lines",
                "Lines over the length limit, not shipped (oversize policy: reject)",
                s.rejected_lines,
            ),
            (
                "clickstream_agent_unterminated_bytes",
                "Bytes after the last newline of a file closed for good (never shipped)",
                s.unterminated_bytes,
            ),
            (
                "clickstream_agent_unfinished_copies",
                "Truncations whose old content's copy was not found (copytruncate loss)",
                s.unfinished_copies,
            ),
        )
        for name, documentation, value in counters:
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], value)
            yield family
        open_files = GaugeMetricFamily("clickstream_agent_open_files", "Files held open")
        open_files.add_metric([], s.files_opened - s.files_closed)
        yield open_files


class MetricsServer:
    """`/metrics` (Prometheus text) and `/healthz` (200 ok / 503 stalled) in a daemon thread."""

    def __init__(self, metrics: AgentMetrics, healthy: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._healthy = healthy
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> MetricsAddress:
        registry, healthy = self._metrics.registry, self._healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = healthy()
                    body = b"ok\n" if ok else b"stalled: lines wait and nothing is acknowledged\n"
                    self._answer(200 if ok else 503, body, "text/plain; charset=utf-8")
                else:
                    self._answer(404, b"try /metrics or /healthz\n", "text/plain; charset=utf-8")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not news

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True, name="metrics"
        )
        self._thread.start()
        return MetricsAddress(host, int(server.server_address[1]))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (Type=notify units)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


async def run_agent(
    config: AgentConfig,
    kinesis_client: Any,
    stream: str,
    *,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    metrics_host: str = "127.0.0.1",
    progress: ProgressSink | None = None,
    handle_signals: bool = True,
    shutdown: Shutdown | None = None,
    metrics: AgentMetrics | None = None,
) -> int:
    """Run until a signal (or `shutdown.request`); returns the exit code.

    0 after a stop, whether or not the drain finished in time (nothing is lost either way); 1 when
    reading failed. Raises `AgentError` when the agent cannot start (state directory taken, stream
    missing): there is nothing to drain then.

    `kinesis_client` is an aiobotocore Kinesis client with botocore's retries off
    (``total_max_attempts=1``): the shipper decides what is retried.
    """
    loop = asyncio.get_running_loop()
    shutdown = shutdown if shutdown is not None else Shutdown()
    metrics = metrics if metrics is not None else AgentMetrics()
    store = PositionStore(config.positions_file)
    try:
        store.lock()
    except StateDirLocked as exc:
        raise AgentError(
            f"{exc}; stop it first, or give this one its own state directory"
        ) from None
    server: MetricsServer | None = None
    tailer: GlobTailer | None = None
    try:
        tracker = AckTracker(store, config)
        saved = tracker.load()
        shipper = Shipper(
            kinesis_client,
            stream,
            tracker.ack,
            aggregate=config.aggregate,
            linger_s=config.linger_ms / 1000,
            max_in_flight_bytes=config.max_in_flight_bytes,
            stall_seconds=config.stall_timeout_s,
            metrics=metrics,
        )
        health = Health(shipper, config.stall_timeout_s)
        tailer = GlobTailer(
            config,
            saved=saved,
            flow=tracker,
            progress=progress if config.from_start else None,
            saved_files=tracker.saved_files(),
        )
        metrics.registry.register(_TailerCollector(tailer.stats))
        signals = shutdown.on_signals(loop) if handle_signals else contextlib.nullcontext()
        with signals:
            if config.metrics_port is not None:
                server = MetricsServer(metrics, health.healthy)
                try:
                    address = server.start(metrics_host, config.metrics_port)
                except OSError as exc:
                    raise AgentError(
                        f"cannot serve metrics on {metrics_host}:{config.metrics_port}: {exc}"
                    ) from None
                log.info(
                    "metrics on %s/metrics, health on %s/healthz",
                    address.url,
                    address.url,
                    extra={"metrics_port": address.port},
                )
            if not await _start_shipper(shipper, stream, shutdown):
                log.info("stopped before the stream could be opened; nothing was read")
                return 0
            health.started = True
            log.info(
                "agent running: %s -> %s",
                config.path,
                stream,
                extra={
                    "path": config.path,
                    "stream": stream,
                    "from_start": config.from_start,
                    "first_run": saved is None,
                    "checkpoints": 0 if saved is None else len(saved),
                    "state_dir": str(config.state_dir),
                },
            )
            notify_systemd("READY=1")
            return await _run(tailer, shipper, tracker, health, shutdown, shutdown_timeout_s)
    finally:
        if tailer is not None:
            tailer.close()
        if server is not None:
            server.stop()
        store.unlock()


async def _start_shipper(shipper: Shipper, stream: str, shutdown: Shutdown) -> bool:
    """Open the stream (ListShards), retrying while Kinesis cannot be reached; False if a stop
    came first. A stream that does not exist, or access denied, stops the agent."""
    attempt = 0
    while not shutdown.requested.is_set():
        try:
            await shipper.start()
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code in _FATAL_CODES:
                raise AgentError(f"cannot use stream {stream!r}: {code}: {message}") from None
            problem = f"{code}: {message}"
        except (BotoCoreError, OSError, ShardMapError) as exc:
            problem = str(exc)  # unreachable, or a stream still being created or resharded
        attempt += 1
        delay = min(_START_BACKOFF_CAP_S, 0.5 * 2**attempt)
        log.warning("cannot open stream %s (%s); trying again in %.1fs", stream, problem, delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await shutdown.requested.wait()
    return False


async def _run(
    tailer: GlobTailer,
    shipper: Shipper,
    tracker: AckTracker,
    health: Health,
    shutdown: Shutdown,
    shutdown_timeout_s: float,
) -> int:
    checkpoint_stop = asyncio.Event()
    reader = asyncio.create_task(_read(tailer, shipper), name="agent-read")
    checkpointer = asyncio.create_task(tracker.run(checkpoint_stop), name="agent-checkpoint")
    watcher = asyncio.create_task(_watch(tailer, shipper, tracker, health), name="agent-watch")
    stop_wait = asyncio.create_task(shutdown.requested.wait(), name="agent-stop-wait")
    exit_code = 0
    try:
        done, _ = await asyncio.wait(
            {reader, checkpointer, stop_wait}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (reader, checkpointer):
            if task in done and task.exception() is not None:
                log.error("%s failed; stopping", task.get_name(), exc_info=task.exception())
                exit_code = 1
    finally:
        notify_systemd("STOPPING=1")
        started = time.monotonic()
        # 1. Stop reading. A batch that was read but not handed over is simply not acknowledged.
        for task in (reader, stop_wait, watcher):
            task.cancel()
        for task in (reader, stop_wait, watcher):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        tailer.close()
        # 2. Drain: send what is queued, wait for acknowledgements, until the deadline or a
        #    second signal.
        drained = await _drain(shipper, shutdown, shutdown_timeout_s)
        # 3. Stop the shipper: no acknowledgement can arrive after this point.
        await shipper.stop()
        # 4. Write the checkpoint one last time, with every acknowledgement and nothing more.
        checkpoint_stop.set()
        try:
            await checkpointer
        except Exception:
            log.exception("the last checkpoint could not be written")
            exit_code = 1
        m = shipper.metrics
        log.info(
            "agent stopped in %.2fs (%s)",
            time.monotonic() - started,
            "drained" if drained else "not drained: unacknowledged lines are read again next start",
            extra={
                "drained": drained,
                "lines_sent": _count(m, "lines_sent"),
                "records_sent": _count(m, "records_sent"),
                "unacknowledged_bytes": tracker.in_flight_bytes,
                "checkpoint": {c.path: c.offset for c in tracker.checkpoints().values()},
            },
        )
    return exit_code


async def _read(tailer: GlobTailer, shipper: Shipper) -> None:
    async for batch in tailer.batches():
        await shipper.submit_batch(batch)


async def _drain(shipper: Shipper, shutdown: Shutdown, timeout_s: float) -> bool:
    if shutdown.forced.is_set():
        return False
    drain = asyncio.create_task(shipper.drain(timeout_s), name="agent-drain")
    forced = asyncio.create_task(shutdown.forced.wait(), name="agent-forced")
    try:
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
        if not drain.done():
            drain.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        return await drain
    return False


async def _watch(tailer: GlobTailer, shipper: Shipper, tracker: AckTracker, health: Health) -> None:
    """Every second: each file's lag behind its end, and health transitions as log lines;
    every minute a summary line (structured: the fields are queryable in JSON logs)."""
    metrics = shipper.metrics
    lagging: set[str] = set()
    was_healthy = True
    next_summary = time.monotonic() + SUMMARY_INTERVAL_S
    while True:
        await asyncio.sleep(LAG_INTERVAL_S)
        lag_by_path: dict[str, int] = {}
        for key, followed in tailer.followed().items():
            committed = tracker.committed(key) or 0
            lag = max(0, followed.size - committed)
            lag_by_path[followed.path] = lag_by_path.get(followed.path, 0) + lag
        for path, lag in lag_by_path.items():
            metrics.set_lag(path, lag)
        for path in lagging - lag_by_path.keys():
            metrics.forget_file(path)
        lagging = set(lag_by_path)
        healthy = health.healthy()
        if healthy != was_healthy:
            if healthy:
                log.info("healthy again: Kinesis acknowledges lines")
            else:
                log.warning(
                    "unhealthy: %d lines wait and nothing was acknowledged for %.0fs",
                    shipper.pending_lines,
                    shipper.stall_seconds,
                    extra={"pending_lines": shipper.pending_lines},
                )
            was_healthy = healthy
        if time.monotonic() >= next_summary:
            next_summary += SUMMARY_INTERVAL_S
            log.info(
                "shipping",
                extra={
                    "lines_read": _count(metrics, "lines_read"),
                    "lines_sent": _count(metrics, "lines_sent"),
                    "records_sent": _count(metrics, "records_sent"),
                    "bytes_sent": _count(metrics, "bytes_sent"),
                    "in_flight_bytes": tracker.in_flight_bytes,
                    "lag_bytes": sum(lag_by_path.values()),
                    "healthy": healthy,
                },
            )


def _count(metrics: AgentMetrics, name: str) -> int:
    """A counter's value through the registry's public API."""
    value = metrics.registry.get_sample_value(f"clickstream_agent_{name}_total")
    return int(value or 0)
