"""The consumer in a child process of the service, so the web server never waits for it.

Measured (bench/healthz_load.py): with the worker on a thread of the web server's process,
/healthz's p99 under a 200k-line run was 95-360 ms. Python threads share one interpreter lock;
the consumer's batches hold it for long stretches in C code (Arrow conversions of thousands of
rows, protobuf parsing of 1 MB aggregated records, garbage collections of a large heap), and a
request needs it several times. A child process has its own interpreter, and it runs niced, so
when the CPUs are scarce the kernel too prefers the process that answers requests.

The child runs `ConsumerThread` exactly as before and answers three requests over a pipe:
`status` (a `ConsumerStatus` snapshot, taken on the child's main thread without touching the
consumer's loop), `summary` (computed on the consumer's loop, where the state lives) and `stop`
(the graceful stop). The parent keeps the newest status, refreshed every `STATUS_EVERY_S` by a
thread of its own, so /healthz, /readyz and /metrics read a snapshot and never wait for the
child; a snapshot that stops being refreshed is itself the liveness failure.

The child ignores SIGINT and SIGTERM: the parent decides when it stops (after the web server
has stopped taking requests), and a terminal's Ctrl-C reaches the whole process group. If the
parent dies, the pipe closes and the child stops gracefully by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from typing import Any, Final

from consumers.scheduler import WorkerConfig
from service.consumer_thread import ConsumerStatus, ConsumerThread
from service.settings import Settings

log = logging.getLogger(__name__)

STATUS_EVERY_S: Final = 0.25
STALE_STATUS_S: Final = 10.0
"""A status older than this means the child stopped answering: /healthz fails."""
SUMMARY_TIMEOUT_S: Final = 30.0
CHILD_NICENESS: Final = 5
START_TIMEOUT_S: Final = 60.0


class ConsumerProcess:
    """The parent's handle on the consumer child (module notes)."""

    def __init__(self, settings: Settings, config: WorkerConfig, *, metrics: bool = True) -> None:
        self.settings = settings
        self.config = config
        self.metrics_enabled = metrics
        self.status: ConsumerStatus | None = None
        self.exit_error: str | None = None
        self._context = multiprocessing.get_context("spawn")
        self._connection: multiprocessing.connection.Connection | None = None
        self._process: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_status, name="consumer-status", daemon=True
        )

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the child; return once its consumer made its first start attempt."""
        parent_end, child_end = self._context.Pipe()
        self._process = self._context.Process(
            target=_child_main,
            args=(child_end, self.settings, self.config, self.metrics_enabled),
            name="clickstream-consumer",
        )
        self._process.start()
        child_end.close()
        self._connection = parent_end
        if not parent_end.poll(START_TIMEOUT_S):
            raise RuntimeError("the consumer process did not start")
        self.status = parent_end.recv()
        self._poller.start()

    def stop(self) -> None:
        """The graceful stop (drain, commit, evict); the child exits afterwards."""
        self._stopping.set()
        if self._process is None:
            return
        # The worker's own deadline (25 s), closing its clients, the reply: within ECS's 30 s
        # together with the web server's 2 s for requests in flight.
        wait_s = self.config.stop_timeout_s + 2.5
        try:
            self.status = self._request(("stop", None), wait_s)
        except Exception as error:
            self.exit_error = f"the consumer did not stop cleanly: {error}"
            log.error("%s", self.exit_error)
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        if self._poller.is_alive():
            self._poller.join(1)

    # ---- what the web side asks ---------------------------------------------------------------

    @property
    def process_alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | str:
        """The child's process id, or a name no process has while there is none."""
        return self._process.pid if self._process is not None else "no-consumer-process"

    def status_age(self) -> float:
        return float("inf") if self.status is None else time.monotonic() - self.status.at

    @property
    def running(self) -> bool:
        status = self.status
        return self.process_alive and status is not None and status.running

    async def summary(
        self, window: str, limit: int | None, sort: str = "visitors"
    ) -> dict[str, Any]:
        """The summary body (`ConsumerThread.summary`), computed in the child."""
        loop = asyncio.get_running_loop()
        result: dict[str, Any] = await loop.run_in_executor(
            None, self._request, ("summary", (window, limit, sort)), SUMMARY_TIMEOUT_S
        )
        return result

    # ---- the pipe -----------------------------------------------------------------------------

    def _request(self, message: tuple[str, Any], timeout: float) -> Any:
        connection = self._connection
        if connection is None:
            raise RuntimeError("the consumer process is not running")
        with self._lock:
            connection.send(message)
            if not connection.poll(timeout):
                raise TimeoutError(f"the consumer did not answer {message[0]!r} in {timeout} s")
            kind, value = connection.recv()
        if kind == "error":
            raise RuntimeError(value)
        return value

    def _poll_status(self) -> None:
        while not self._stopping.wait(STATUS_EVERY_S):
            try:
                self.status = self._request(("status", None), STALE_STATUS_S)
            except (OSError, EOFError, TimeoutError, RuntimeError) as error:
                if not self._stopping.is_set():
                    log.warning("consumer status unavailable: %s", error)
                if not self.process_alive:
                    return


def _child_main(
    connection: multiprocessing.connection.Connection,
    settings: Settings,
    config: WorkerConfig,
    metrics: bool,
) -> None:
    """The child: the consumer thread, and this thread answering the parent's requests."""
    from service.logs import configure_logging
    from service.process_tuning import tune_garbage_collector

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    configure_logging(settings.log_level, settings.log_format)
    consumer = ConsumerThread(settings, config, metrics=metrics)
    consumer.start()
    tune_garbage_collector()
    connection.send(consumer.status())
    try:
        while True:
            try:
                kind, argument = connection.recv()
            except (EOFError, OSError):
                log.warning("the service went away; stopping the consumer")
                break
            if kind == "stop":
                consumer.stop()
                connection.send(("ok", consumer.status()))
                return
            try:
                if kind == "status":
                    reply: Any = consumer.status()
                elif kind == "summary":
                    reply = consumer.call_blocking(
                        functools.partial(consumer.summary, *argument), SUMMARY_TIMEOUT_S
                    )
                else:
                    raise ValueError(f"unknown request {kind!r}")
                connection.send(("ok", reply))
            except Exception as error:
                connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        if consumer.thread_alive:
            consumer.stop()
