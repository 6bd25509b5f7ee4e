"""Idempotent creation of the pipeline's AWS resources (`clickstream setup`).

Setup must be safe to run at every deploy and every demo start: what exists is left alone and
reported, what is missing is created, and what exists but differs from the settings (a stream
with another shard count) is reported, never changed. Resharding a live stream reroutes
partition keys and costs money; that is an operator's decision, not a side effect of setup.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from service.aws import aws_client, region_name
from service.dashboard import dashboard_body
from service.settings import Settings

Status = Literal["created", "present", "differs", "updated"]

LEASE_KEY = "leaseKey"  # the KCL lease table's hash key (DESIGN.md §4)

# Real AWS takes ~30 s to make a stream ACTIVE and ~10 s for a table; the emulators, none.
WAIT_TIMEOUT_S = 300.0
_POLL_FIRST_S = 0.2
_POLL_MAX_S = 5.0


@dataclass(frozen=True)
class ResourceStatus:
    kind: str
    name: str
    status: Status
    detail: str = ""


class ResourceError(Exception):
    """One resource could not be checked or created; says which, where, and why."""

    def __init__(
        self, message: str, cause: BaseException | None = None, endpoint: str | None = None
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.endpoint = endpoint


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc) or type(exc).__name__


async def _poll(
    check: Callable[[], Awaitable[bool]], what: str, limit_s: float = WAIT_TIMEOUT_S
) -> None:
    """Poll soon at first (emulators are instant), then back off to spare the control plane."""
    deadline = time.monotonic() + limit_s
    delay = _POLL_FIRST_S
    while not await check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not become ready within {limit_s:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_S)


async def ensure_stream(kinesis: Any, name: str, shards: int) -> ResourceStatus:
    created = False
    try:
        summary = (await kinesis.describe_stream_summary(StreamName=name))[
            "StreamDescriptionSummary"
        ]
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        try:
            await kinesis.create_stream(StreamName=name, ShardCount=shards)
            created = True
        except ClientError as create_exc:  # created by someone else in the meantime
            if _error_code(create_exc) != "ResourceInUseException":
                raise
        summary = None

    async def active() -> bool:
        nonlocal summary
        described = await kinesis.describe_stream_summary(StreamName=name)
        summary = described["StreamDescriptionSummary"]
        return summary["StreamStatus"] == "ACTIVE"

    if summary is None or summary["StreamStatus"] != "ACTIVE":
        await _poll(active, f"stream {name}")
    assert summary is not None
    open_shards = int(summary.get("OpenShardCount", 0))
    mode = summary.get("StreamModeDetails", {}).get("StreamMode", "PROVISIONED")
    if created:
        return ResourceStatus("stream", name, "created", f"{open_shards} shards")
    if mode == "ON_DEMAND":
        # AWS scales on-demand streams itself; the configured count does not apply.
        return ResourceStatus("stream", name, "present", f"on-demand, {open_shards} open shards")
    if open_shards != shards:
        return ResourceStatus(
            "stream",
            name,
            "differs",
            f"{open_shards} open shards, settings say {shards} (CLICKSTREAM_SHARDS); "
            "left unchanged",
        )
    return ResourceStatus("stream", name, "present", f"{open_shards} shards")


async def ensure_bucket(s3: Any, name: str, region: str) -> ResourceStatus:
    try:
        await s3.head_bucket(Bucket=name)
        return ResourceStatus("bucket", name, "present", region)
    except ClientError as exc:
        if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
            if _error_code(exc) == "403":
                raise ResourceError(
                    f"bucket {name} exists but this account may not access it (HTTP 403); "
                    "bucket names are global: choose another with CLICKSTREAM_BUCKET",
                    exc,
                ) from exc
            raise
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":  # S3 rejects an explicit us-east-1 constraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        await s3.create_bucket(**kwargs)
    except ClientError as exc:
        if _error_code(exc) == "BucketAlreadyOwnedByYou":
            return ResourceStatus("bucket", name, "present", region)
        if _error_code(exc) == "BucketAlreadyExists":
            raise ResourceError(
                f"bucket {name} is taken by another AWS account; bucket names are global: "
                "choose another with CLICKSTREAM_BUCKET",
                exc,
            ) from exc
        raise
    return ResourceStatus("bucket", name, "created", region)


def _lease_key_schema_ok(table: dict[str, Any]) -> bool:
    keys = {(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])}
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    return keys == {(LEASE_KEY, "HASH")} and types.get(LEASE_KEY) == "S"


async def ensure_lease_table(dynamodb: Any, name: str) -> ResourceStatus:
    created = False
    try:
        table = (await dynamodb.describe_table(TableName=name))["Table"]
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        try:
            # The KCL's own layout, so KCL tooling (and a KCL fleet) can use the same table.
            table = (
                await dynamodb.create_table(
                    TableName=name,
                    KeySchema=[{"AttributeName": LEASE_KEY, "KeyType": "HASH"}],
                    AttributeDefinitions=[{"AttributeName": LEASE_KEY, "AttributeType": "S"}],
                    BillingMode="PAY_PER_REQUEST",
                )
            )["TableDescription"]
            created = True
        except ClientError as create_exc:
            if _error_code(create_exc) != "ResourceInUseException":
                raise
            table = {"TableStatus": "CREATING"}

    async def active() -> bool:
        nonlocal table
        table = (await dynamodb.describe_table(TableName=name))["Table"]
        return table["TableStatus"] == "ACTIVE"

    if table.get("TableStatus") != "ACTIVE":
        await _poll(active, f"table {name}")
    if not _lease_key_schema_ok(table):
        found = ", ".join(f"{k['AttributeName']} {k['KeyType']}" for k in table["KeySchema"])
        return ResourceStatus(
            "table",
            name,
            "differs",
            f"key is {found}, a KCL lease table needs {LEASE_KEY} HASH (S)",
        )
    billing = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    detail = f"{LEASE_KEY} HASH, {'on-demand' if billing == 'PAY_PER_REQUEST' else 'provisioned'}"
    return ResourceStatus("table", name, "created" if created else "present", detail)


async def ensure_dashboard(cloudwatch: Any, name: str, body: dict[str, Any]) -> ResourceStatus:
    current: Any = None
    try:
        response = await cloudwatch.get_dashboard(DashboardName=name)
        current = json.loads(response.get("DashboardBody") or "null")
    except ClientError as exc:
        if _error_code(exc) not in {"ResourceNotFound", "ResourceNotFoundException"}:
            raise
        status: Status = "created"
    except ValueError:  # not JSON: edited by hand into something broken; replace it
        status = "updated"
    else:
        if current == body:
            return ResourceStatus("dashboard", name, "present", f"{len(body['widgets'])} widgets")
        status = "updated"
    response = await cloudwatch.put_dashboard(DashboardName=name, DashboardBody=json.dumps(body))
    problems = [m.get("Message", "") for m in response.get("DashboardValidationMessages", [])]
    detail = f"{len(body['widgets'])} widgets"
    if problems:
        detail += "; CloudWatch warns: " + "; ".join(problems)
    return ResourceStatus("dashboard", name, status, detail)


async def _guarded(
    kind: str, name: str, client: Any, step: Awaitable[ResourceStatus]
) -> ResourceStatus:
    """Turn any failure into one sentence: which resource, which endpoint, what went wrong."""
    try:
        return await step
    except ResourceError:
        raise
    except (BotoCoreError, ClientError, TimeoutError, OSError) as exc:
        endpoint = str(getattr(client.meta, "endpoint_url", "?"))
        raise ResourceError(
            f"{kind} {name}: {_describe(exc)} (endpoint {endpoint})", exc, endpoint
        ) from exc


async def ensure_resources(settings: Settings) -> list[ResourceStatus]:
    """Create what is missing, concurrently (on AWS the stream and table each take a while).

    Raises `ResourceError` (the first failure, in report order) when any step fails.
    """
    region = region_name()
    async with AsyncExitStack() as stack:
        kinesis = await stack.enter_async_context(aws_client("kinesis"))
        s3 = await stack.enter_async_context(aws_client("s3"))
        dynamodb = await stack.enter_async_context(aws_client("dynamodb"))
        cloudwatch = await stack.enter_async_context(aws_client("cloudwatch"))
        results = await asyncio.gather(
            _guarded(
                "stream",
                settings.stream,
                kinesis,
                ensure_stream(kinesis, settings.stream, settings.shards),
            ),
            _guarded("bucket", settings.bucket, s3, ensure_bucket(s3, settings.bucket, region)),
            _guarded(
                "table",
                settings.lease_table,
                dynamodb,
                ensure_lease_table(dynamodb, settings.lease_table),
            ),
            _guarded(
                "dashboard",
                settings.dashboard,
                cloudwatch,
                ensure_dashboard(cloudwatch, settings.dashboard, dashboard_body(settings, region)),
            ),
            return_exceptions=True,
        )
    statuses: list[ResourceStatus] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        statuses.append(result)
    return statuses


def format_report(statuses: list[ResourceStatus]) -> str:
    """Aligned columns, one resource per line: kind, name, status, detail."""
    if not statuses:
        return ""
    kind_w = max(len(s.kind) for s in statuses)
    name_w = max(len(s.name) for s in statuses)
    status_w = max(len(s.status) for s in statuses)
    lines = [
        f"{s.kind:<{kind_w}}  {s.name:<{name_w}}  {s.status:<{status_w}}  {s.detail}".rstrip()
        for s in statuses
    ]
    return "\n".join(lines)
