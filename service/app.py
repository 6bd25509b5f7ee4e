"""The FastAPI app: `create_app(settings)`; its lifespan starts and stops the consumer worker.

Routes (schemas in `service.api_models`, served at `/docs`):

- `GET /healthz` liveness: the event loop answers, and so does the consumer (a child process,
  `service.consumer_process`), whose worker, once started, is alive. No AWS call: a restart
  cannot fix an unreachable AWS, so liveness must not depend on it.
- `GET /readyz` readiness with reasons (`service.readiness`), 503 when any check fails.
- `GET /metrics` Prometheus text (`service.pipeline_metrics`).
- `GET /api/summary?window=5m|1h|24h&limit=N&sort=visitors|menu_viewers|purchasers` the
  counters' summary, computed on request.
- `GET /api/stream?window=...&limit=N` server-sent events: the summary every `push_seconds`.
- `GET /` the live dashboard (`service/web/`), which listens to `/api/stream`.

One push loop has the consumer compute the three windows' summaries every `push_seconds`; the
stream's clients, however many, and `/metrics` share those, so neither a dozen open
dashboards nor a Prometheus scrape adds work for the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumers.windows import WINDOW_MINUTES
from service.api_models import Liveness, Problem, ReadinessReport, Summary, Window
from service.cli.consume import build_config
from service.consumer_process import STALE_STATUS_S, ConsumerProcess
from service.pipeline_metrics import PipelineCollector, build_registry
from service.readiness import Readiness
from service.settings import Settings

log = logging.getLogger(__name__)

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
PUSH_LIMIT: Final = 100
"""Cities and regions each pushed summary carries (the map and the charts show fewer)."""

LimitParam = Annotated[
    int | None,
    Query(ge=1, le=100_000, description="keep the first N cities and regions (default: all)"),
]
WindowParam = Annotated[Window, Query(description="rolling window: 5m, 1h or 24h")]
SortParam = Annotated[
    Literal["visitors", "menu_viewers", "purchasers"],
    Query(description="order of cities and regions, most first (before `limit`)"),
]


@dataclass
class ServiceState:
    """What the routes share; built by the lifespan, handed to routes as a dependency."""

    settings: Settings
    consumer: ConsumerProcess
    readiness: Readiness
    registry: CollectorRegistry
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Window -> the last pushed summary (at most PUSH_LIMIT cities)."""
    version: int = 0
    pushed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (and replaced) at every push: what stream clients wait on."""
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def begin_draining(self) -> None:
        """Streams end at once so the server can close their connections and stop. Safe from a
        signal handler or another thread."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self.loop.call_soon_threadsafe(self.draining.set)


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(service_state)]


def create_app(
    settings: Settings, *, consumer: ConsumerProcess | None = None, cloudwatch: bool = True
) -> FastAPI:
    """The app; `consumer` is built from `settings` unless a test hands one in."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        child = consumer or ConsumerProcess(settings, build_config(settings), metrics=cloudwatch)
        readiness = Readiness(settings, child)
        service: ServiceState | None = None

        def summaries() -> dict[str, dict[str, Any]]:
            return service.latest if service is not None else {}

        collector = PipelineCollector(child, summaries, settings.top_cities)
        service = ServiceState(settings, child, readiness, build_registry(collector))
        app.state.service = service
        await asyncio.to_thread(child.start)
        await readiness.open()
        pusher = asyncio.create_task(_push_loop(service), name="service:push")
        try:
            yield
        finally:
            service.begin_draining()
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher
            await readiness.close()
            started = time.monotonic()
            await asyncio.to_thread(child.stop)
            log.info("service stopped (consumer stop took %.1f s)", time.monotonic() - started)

    app = FastAPI(
        title="Clickstream",
        summary="AnyCompany Café's live clickstream: health, metrics, summaries, dashboard.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    _routes(app)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with FastAPI's usual `detail` list plus one sentence a person can read."""
    errors = exc.errors()
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "query")
        parts.append(f"query parameter '{where}': {error.get('msg', 'is invalid')}")
    return JSONResponse({"message": "; ".join(parts), "detail": _jsonable(errors)}, status_code=422)


def _jsonable(errors: Any) -> Any:
    return orjson.loads(orjson.dumps(errors, default=str))


async def _push_loop(service: ServiceState) -> None:
    interval = service.settings.push_seconds
    limit = max(PUSH_LIMIT, min(service.settings.top_cities, 1000))
    consumer = service.consumer
    while True:
        if consumer.running:
            try:
                latest = {}
                for window in WINDOW_MINUTES:
                    latest[window] = await consumer.summary(window, limit)
                service.latest = latest
                service.version += 1
                pushed, service.pushed = service.pushed, asyncio.Event()
                pushed.set()
            except Exception:
                log.exception("computing the pushed summary failed")
        await asyncio.sleep(interval)


def _routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Liveness, responses={503: {"model": Liveness}})
    async def healthz(service: State) -> JSONResponse:
        """Liveness: answers from the event loop; 503 when the consumer process stopped
        answering, or its thread or worker died (a restart helps). Waiting for AWS at start-up
        is not a liveness failure."""
        consumer = service.consumer
        status = consumer.status
        if not consumer.process_alive or status is None:
            return JSONResponse({"status": "failing", "consumer": "process ended"}, 503)
        if consumer.status_age() > STALE_STATUS_S:
            return JSONResponse({"status": "failing", "consumer": "not answering"}, 503)
        if not status.thread_alive:
            return JSONResponse({"status": "failing", "consumer": "thread ended"}, 503)
        if status.worker_started and not status.running:
            return JSONResponse({"status": "failing", "consumer": "worker stopped"}, 503)
        state = "running" if status.worker_started else "starting"
        return JSONResponse({"status": "ok", "consumer": state})

    @app.get("/readyz", response_model=ReadinessReport, responses={503: {"model": ReadinessReport}})
    async def readyz(service: State) -> JSONResponse:
        """Readiness: every check's result; 503 listing the failing ones."""
        checks = await service.readiness.checks()
        failing = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
        body = {
            "ready": not failing,
            "reasons": failing,
            "checks": {c.name: c.as_json() for c in checks},
        }
        return JSONResponse(body, status_code=503 if failing else 200)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(service: State) -> Response:
        """Prometheus text exposition: pipeline and process metrics."""
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/api/summary",
        response_model=None,
        responses={200: {"model": Summary}, 503: {"model": Problem}},
    )
    async def summary(
        service: State,
        window: WindowParam = "24h",
        limit: LimitParam = None,
        sort: SortParam = "visitors",
    ) -> Response:
        """Top cities and regions by visitors, menu viewers and purchasers, conversion rates,
        totals and the per-minute trend for a rolling window (the `Summary` schema)."""
        consumer = service.consumer
        if not consumer.running:
            return JSONResponse({"detail": "the consumer is not running yet"}, 503)
        body = await consumer.summary(window, limit, sort)
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get(
        "/api/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream(
        service: State,
        window: WindowParam = "24h",
        limit: Annotated[int, Query(ge=1, le=PUSH_LIMIT)] = PUSH_LIMIT,
    ) -> StreamingResponse:
        """Server-sent events: `event: summary` with a `Summary` (at most `limit` cities and
        regions) now and every `push_seconds` after."""
        return StreamingResponse(
            _events(service, window, limit),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _events(service: ServiceState, window: str, limit: int) -> AsyncIterator[bytes]:
    retry_ms = int(service.settings.push_seconds * 1000)
    yield f"retry: {retry_ms}\n\n".encode()
    sent = -1
    while not service.draining.is_set():
        if service.version != sent and window in service.latest:
            sent = service.version
            body = dict(service.latest[window])
            body["cities"] = body["cities"][:limit]
            body["regions"] = body["regions"][:limit]
            yield b"id: %d\nevent: summary\ndata: %s\n\n" % (sent, orjson.dumps(body))
        pushed = asyncio.ensure_future(service.pushed.wait())
        draining = asyncio.ensure_future(service.draining.wait())
        try:
            await asyncio.wait(
                {pushed, draining},
                timeout=max(1.0, service.settings.push_seconds * 2),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            pushed.cancel()
            draining.cancel()
