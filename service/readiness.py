"""`/readyz`: can this container do its job right now, and if not, why.

Each check gives a name, ok or not, and a reason an operator can act on:

- `consumer`: the worker started (its last start error otherwise);
- `geo`: the geolocation database is loaded;
- `aws`: every endpoint the consumer needs answers (one cheap call each: DescribeStreamSummary,
  HeadBucket, DescribeTable, ListDashboards), probed at most every `PROBE_TTL_S` so a tight
  load-balancer poll does not turn into AWS traffic;
- `shards`: every shard this worker holds got a successful GetRecords within
  `ready_fetch_seconds` (a held shard not fetched yet counts from when it was first seen held);
- `archive` and `metrics`: the sink's writes (S3 PutObject, CloudWatch PutMetricData) have not
  been failing for longer than `ready_sink_seconds`. A short failing spell is what retries are
  for; a long one means data are piling up.

The probes use clients of their own, on the web server's loop, with short timeouts and one
attempt: a stopped endpoint must make `/readyz` say so within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from service.aws import aws_client
from service.call_watch import ARCHIVE_OPERATION, METRICS_OPERATION, OperationHealth
from service.consumer_process import ConsumerProcess
from service.settings import Settings

PROBE_TTL_S: Final = 5.0
PROBE_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


class Readiness:
    """The checks of the module notes; `open()` the probe clients first, `close()` at the end."""

    def __init__(
        self,
        settings: Settings,
        consumer: ConsumerProcess,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self._clock = clock
        self._clients: dict[str, Any] = {}
        self._exit = contextlib.AsyncExitStack()
        self._probe: tuple[float, list[Check]] | None = None
        self._probe_lock = asyncio.Lock()
        self._held_since: dict[str, float] = {}

    async def open(self) -> None:
        settings = dict(
            connect_timeout=PROBE_TIMEOUT_S,
            read_timeout=PROBE_TIMEOUT_S,
            retries={"mode": "standard", "max_attempts": 1},
        )
        names = ["kinesis", "s3", "dynamodb"]
        if self.consumer.metrics_enabled:
            names.append("cloudwatch")
        for name in names:
            self._clients[name] = await self._exit.enter_async_context(aws_client(name, **settings))

    async def close(self) -> None:
        await self._exit.aclose()

    async def checks(self) -> list[Check]:
        now = self._clock()
        return [
            self._consumer_check(),
            self._geo_check(),
            *await self._aws_checks(now),
            self._shards_check(now),
            self._leases_check(),
            self._sink_check("archive", ARCHIVE_OPERATION, now),
            *([self._sink_check("metrics", METRICS_OPERATION, now)] if self._metrics else []),
        ]

    @property
    def _metrics(self) -> bool:
        return self.consumer.metrics_enabled

    # ---- the checks ---------------------------------------------------------------------------

    def _consumer_check(self) -> Check:
        status = self.consumer.status
        if self.consumer.running:
            return Check("consumer", True, "running")
        if not self.consumer.process_alive or status is None:
            return Check("consumer", False, "the consumer process has ended")
        if not status.thread_alive:
            return Check("consumer", False, "the consumer thread has ended")
        return Check("consumer", False, status.start_error or "starting")

    def _geo_check(self) -> Check:
        status = self.consumer.status
        if status is None or status.geo_loaded is None:
            error = status.geo_error if status is not None else None
            return Check("geo", False, error or "not loaded yet")
        return Check("geo", True, f"{status.geo_loaded} loaded")

    async def _aws_checks(self, now: float) -> list[Check]:
        async with self._probe_lock:
            if self._probe is not None and now - self._probe[0] < PROBE_TTL_S:
                return self._probe[1]
            results = list(await asyncio.gather(*(self._probe_one(n) for n in self._clients)))
            self._probe = (self._clock(), results)
            return results

    async def _probe_one(self, name: str) -> Check:
        client = self._clients[name]
        s = self.settings
        calls = {
            "kinesis": lambda: client.describe_stream_summary(StreamName=s.stream),
            "s3": lambda: client.head_bucket(Bucket=s.bucket),
            "dynamodb": lambda: client.describe_table(TableName=s.lease_table),
            "cloudwatch": lambda: client.list_dashboards(DashboardNamePrefix=s.dashboard),
        }
        endpoint = client.meta.endpoint_url
        try:
            await asyncio.wait_for(calls[name](), PROBE_TIMEOUT_S * 2)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code") or exc.response.get("ResponseMetadata", {}).get(
                "HTTPStatusCode"
            )
            return Check(
                f"aws.{name}", False, f"{endpoint} answered {code}: {error.get('Message', '')}"
            )
        except (BotoCoreError, OSError, TimeoutError) as exc:
            return Check(f"aws.{name}", False, f"{endpoint} unreachable: {exc}")
        return Check(f"aws.{name}", True, f"{endpoint} reachable")

    def _leases_check(self) -> Check:
        """Lease health (`ConsumerWorker.leases_healthy`): the table answers and every lease
        held is inside its fence. Unhealthy, this worker may be doing work another will redo."""
        status = self.consumer.status
        report = status.leases if status is not None else None
        if report is None:
            return Check("leases", False, "no lease round yet")
        stats = report.stats
        detail = (
            f"{len(report.held)} held, {len(report.pending)} pending; taken {stats.taken}, "
            f"stolen {stats.stolen}, lost {stats.lost}, renewal errors {stats.renew_errors}"
        )
        if not report.healthy:
            return Check("leases", False, f"lease table unreachable or leases fenced: {detail}")
        return Check("leases", True, detail)

    def _shards_check(self, now: float) -> Check:
        status = self.consumer.status
        held = sorted(status.shards) if status is not None else []
        for shard in [s for s in self._held_since if s not in held]:
            del self._held_since[shard]
        limit = self.settings.ready_fetch_seconds
        fetched = status.last_fetches if status is not None else {}
        stale = []
        for shard in held:
            since = self._held_since.setdefault(shard, now)
            last = max(fetched.get(shard, since), since)
            if now - last > limit:
                stale.append(f"{shard} not read for {now - last:.0f} s (limit {limit:.0f} s)")
        if stale:
            return Check("shards", False, "; ".join(stale))
        return Check("shards", True, f"{len(held)} held, each read within {limit:.0f} s")

    def _sink_check(self, name: str, operation: tuple[str, str], now: float) -> Check:
        status = self.consumer.status
        operations = status.operations if status is not None else {}
        health = operations.get(operation, OperationHealth())
        limit = self.settings.ready_sink_seconds
        failing = health.failing_for(now)
        if failing > limit:
            return Check(
                name,
                False,
                f"{operation[0]} {operation[1]} failing for {failing:.0f} s "
                f"(limit {limit:.0f} s): {health.last_error}",
            )
        if failing:
            return Check(name, True, f"failing for {failing:.0f} s, retrying: {health.last_error}")
        return Check(name, True, "ok" if health.calls else "no writes yet")
