"""`clickstream serve`: the always-on service (the ECS container's command).

uvicorn serves `service.app`; the app's lifespan runs the consumer worker in a child process
(`service.consumer_process`), so requests never wait for the consumer's CPU work.
SIGTERM (ECS stop) or SIGINT: open event streams end at once, uvicorn stops taking requests,
then the lifespan stops the consumer (drain, commit every shard, evict the leases, within its
25 s) and the process exits 0, inside ECS's 30 s stopTimeout.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any, Final

import uvicorn

from service.app import ServiceState, create_app
from service.cli.arguments import port
from service.local_stack import use_local_stack_if_running
from service.process_tuning import tune_garbage_collector
from service.settings import Settings

HELP = "run the service: consumer, health, metrics, API, dashboard"

URL_PREFIX: Final = "SERVICE_URL="
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
GRACEFUL_HTTP_S: Final = 2.0
"""Requests in flight at shutdown get this long before their connections are closed."""

log = logging.getLogger("clickstream.serve")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}. GET /healthz, /readyz, /metrics, /api/summary, /api/stream and the dashboard "
        "at /. SIGTERM drains and checkpoints the consumer, then exits 0."
    )
    parser.epilog = (
        "Defaults come from the settings: CLICKSTREAM_SERVE_HOST, CLICKSTREAM_SERVE_PORT, "
        "CLICKSTREAM_READY_FETCH_SECONDS, CLICKSTREAM_READY_SINK_SECONDS, "
        "CLICKSTREAM_PUSH_SECONDS, and the consumer's (see clickstream consume --help)."
    )
    parser.add_argument("--host", metavar="ADDR", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=port, metavar="P", help="listen port (default 8000)")
    parser.add_argument(
        "--no-metrics", action="store_true", help="publish nothing to CloudWatch (archive only)"
    )


class _Server(uvicorn.Server):
    """uvicorn's server, which also ends the app's event streams when told to exit: otherwise
    it would wait for every open dashboard to disconnect before stopping the consumer."""

    def __init__(self, config: uvicorn.Config, state: Any) -> None:
        super().__init__(config)
        self._app_state = state

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            host, bound_port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            # One line that scripts (the demo, tests) read, like local-aws's endpoint line.
            print(f"{URL_PREFIX}http://{shown}:{bound_port}/", flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's own version raises the signal again once it has stopped, so the process
        would die of SIGTERM (exit 143) after a clean drain; a stop that went well is exit 0,
        as for `clickstream consume`."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        service: ServiceState | None = getattr(self._app_state, "service", None)
        if service is not None:
            service.begin_draining()
        super().handle_exit(sig, frame)


def run(args: argparse.Namespace, settings: Settings) -> int:
    use_local_stack_if_running(settings.state_dir)
    host = args.host or settings.serve_host
    listen_port = settings.serve_port if args.port is None else args.port
    app = create_app(settings, cloudwatch=not args.no_metrics)
    tune_garbage_collector()
    config = uvicorn.Config(
        app,
        host=host,
        port=listen_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(GRACEFUL_HTTP_S),
        loop="asyncio",
    )
    server = _Server(config, app.state)
    server.run()
    if not server.started:
        return 1
    return 0
