"""`clickstream setup` and `ensure_resources` against moto; the dashboard body on its own."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from consumers import metric_names as m
from service.aws import aws_client
from service.cli import main as clickstream
from service.dashboard import ATTRIBUTION, LAB_WIDGET_TITLES, dashboard_body
from service.local_stack import MotoServer, write_discovery
from service.resources import ResourceStatus, ensure_resources, format_report
from service.settings import Settings, load_settings

KINDS = ["stream", "bucket", "table", "dashboard"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _report(out: str) -> dict[str, list[str]]:
    """kind -> [name, status, detail words...] from the printed report."""
    rows = [line.split() for line in out.strip().splitlines()]
    return {row[0]: row[1:] for row in rows}


@pytest.mark.integration
async def test_ensure_resources_creates_then_finds(aws: str) -> None:
    settings = load_settings()
    first = await ensure_resources(settings)
    assert [s.kind for s in first] == KINDS
    assert [s.status for s in first] == ["created"] * 4
    assert [s.name for s in first] == [
        settings.stream,
        settings.bucket,
        settings.lease_table,
        settings.dashboard,
    ]
    second = await ensure_resources(settings)
    assert [s.status for s in second] == ["present"] * 4
    assert second[0].detail == "2 shards"


@pytest.mark.integration
def test_setup_command_twice(aws: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert clickstream(["setup"]) == 0
    first = _report(capsys.readouterr().out)
    assert list(first) == KINDS
    assert {row[1] for row in first.values()} == {"created"}
    assert first["stream"][:4] == ["cafe-clickstream", "created", "2", "shards"]

    assert clickstream(["setup"]) == 0
    second = _report(capsys.readouterr().out)
    assert {row[1] for row in second.values()} == {"present"}
    assert second["stream"][:4] == ["cafe-clickstream", "present", "2", "shards"]


@pytest.mark.integration
async def test_resources_exist_as_the_pipeline_needs_them(aws: str) -> None:
    settings = load_settings()
    await ensure_resources(settings)
    async with aws_client("kinesis") as kinesis:
        summary = (await kinesis.describe_stream_summary(StreamName=settings.stream))[
            "StreamDescriptionSummary"
        ]
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["OpenShardCount"] == 2
    async with aws_client("s3") as s3:
        await s3.head_bucket(Bucket=settings.bucket)
    async with aws_client("dynamodb") as dynamodb:
        table = (await dynamodb.describe_table(TableName=settings.lease_table))["Table"]
    assert table["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "leaseKey", "AttributeType": "S"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TableStatus"] == "ACTIVE"
    async with aws_client("cloudwatch") as cloudwatch:
        stored = await cloudwatch.get_dashboard(DashboardName=settings.dashboard)
    body = json.loads(stored["DashboardBody"])
    titles = {w["properties"].get("title") for w in body["widgets"]}
    assert set(LAB_WIDGET_TITLES) <= titles
    assert body == dashboard_body(settings, "us-east-1")


@pytest.mark.integration
def test_stream_with_other_shard_count_differs_and_is_left_alone(
    aws: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def create(shards: int) -> None:
        async with aws_client("kinesis") as kinesis:
            await kinesis.create_stream(StreamName="cafe-clickstream", ShardCount=shards)

    async def open_shards() -> int:
        async with aws_client("kinesis") as kinesis:
            shards = (await kinesis.list_shards(StreamName="cafe-clickstream"))["Shards"]
        return sum("EndingSequenceNumber" not in s["SequenceNumberRange"] for s in shards)

    asyncio.run(create(3))
    monkeypatch.setenv("CLICKSTREAM_SHARDS", "2")
    assert clickstream(["setup"]) == 1
    report = _report(capsys.readouterr().out)
    assert report["stream"][1] == "differs"
    detail = " ".join(report["stream"][2:])
    assert "3 open shards" in detail and "settings say 2" in detail
    assert {report[k][1] for k in ("bucket", "table", "dashboard")} == {"created"}
    assert asyncio.run(open_shards()) == 3


@pytest.mark.integration
async def test_lease_table_with_wrong_key_differs(aws: str) -> None:
    settings = load_settings()
    async with aws_client("dynamodb") as dynamodb:
        await dynamodb.create_table(
            TableName=settings.lease_table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    statuses = {s.kind: s for s in await ensure_resources(settings)}
    assert statuses["table"].status == "differs"
    assert "leaseKey" in statuses["table"].detail


@pytest.mark.integration
async def test_changed_dashboard_is_updated(aws: str) -> None:
    settings = load_settings()
    async with aws_client("cloudwatch") as cloudwatch:
        await cloudwatch.put_dashboard(
            DashboardName=settings.dashboard, DashboardBody=json.dumps({"widgets": []})
        )
    statuses = {s.kind: s for s in await ensure_resources(settings)}
    assert statuses["dashboard"].status == "updated"
    statuses = {s.kind: s for s in await ensure_resources(settings)}
    assert statuses["dashboard"].status == "present"


@pytest.mark.integration
async def test_setup_honours_resource_names_from_settings(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLICKSTREAM_STREAM", "other-stream")
    monkeypatch.setenv("CLICKSTREAM_BUCKET", "other-bucket")
    monkeypatch.setenv("CLICKSTREAM_LEASE_TABLE", "other-leases")
    monkeypatch.setenv("CLICKSTREAM_SHARDS", "1")
    statuses = await ensure_resources(load_settings())
    assert [s.name for s in statuses][:3] == ["other-stream", "other-bucket", "other-leases"]
    async with aws_client("kinesis") as kinesis:
        assert (await kinesis.list_streams())["StreamNames"] == ["other-stream"]


@pytest.mark.integration
def test_setup_finds_a_running_local_stack_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No AWS_* set at all: the discovery file alone leads setup to the local stack."""
    state = tmp_path / "state"
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", str(state))
    with MotoServer() as server:
        write_discovery(state, server.endpoint)
        assert clickstream(["setup"]) == 0
    assert {row[1] for row in _report(capsys.readouterr().out).values()} == {"created"}


def test_unreachable_endpoint_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert clickstream(["setup"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.startswith("clickstream setup:")]
    assert len(lines) == 1, captured.err
    assert endpoint in lines[0] and "cannot reach" in lines[0]
    assert "Traceback" not in captured.err


def test_missing_credentials_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # never reached: signing fails first
    assert clickstream(["setup"]) == 2
    err = capsys.readouterr().err
    assert "credentials" in err and endpoint in err
    assert "Traceback" not in err


def test_format_report_aligns_columns() -> None:
    report = format_report(
        [
            ResourceStatus("stream", "cafe-clickstream", "present", "2 shards"),
            ResourceStatus("dashboard", "d", "created", ""),
        ]
    )
    assert report.splitlines() == [
        "stream     cafe-clickstream  present  2 shards",
        "dashboard  d                 created",
    ]


# ----------------------------------------------------------------------------- dashboard body


def _expressions(body: dict[str, object]) -> list[str]:
    found = []
    for widget in body["widgets"]:  # type: ignore[attr-defined]
        for row in widget["properties"].get("metrics", []):
            found += [
                item["expression"]
                for item in row
                if isinstance(item, dict) and "expression" in item
            ]
    return found


def test_dashboard_body_is_json_with_the_lab_widgets() -> None:
    settings = Settings(metrics_namespace="CafeTest")
    body = dashboard_body(settings, "eu-west-1")
    assert json.loads(json.dumps(body)) == body
    widgets = body["widgets"]
    titles = [w["properties"].get("title") for w in widgets]
    for title in LAB_WIDGET_TITLES:
        assert titles.count(title) == 1
    for widget in widgets:
        assert {"type", "x", "y", "width", "height", "properties"} <= set(widget)
        assert widget["x"] + widget["width"] <= 24
        if widget["type"] == "metric":
            assert widget["properties"]["region"] == "eu-west-1"
    rankings = [e for e in _expressions(body) if e.startswith("SORT(SEARCH(")]
    assert len(rankings) == 4
    assert all("{CafeTest," in e and ", SUM, DESC, " in e for e in rankings)
    assert any(f'MetricName="{m.MENU_VIEWERS}"' in e and m.CITY in e for e in rankings)
    assert any(f'MetricName="{m.VISITORS}"' in e and m.REGION in e for e in rankings)
    footer = [w for w in widgets if w["type"] == "text"]
    assert footer and ATTRIBUTION in footer[-1]["properties"]["markdown"]
    text = json.dumps(body)
    for name in (m.VISITORS, m.MENU_VIEWERS, m.PURCHASERS, m.PAGE_VIEWS, m.REJECTED_LINES):
        assert f'"{name}"' in text
    assert m.ITERATOR_AGE in text and m.RECORDS_PROCESSED in text


def test_dashboard_quotes_unusual_namespaces() -> None:
    body = dashboard_body(Settings(metrics_namespace="Café Clicks"), "us-east-1")
    assert all('{"Café Clicks",' in e for e in _expressions(body) if "SEARCH" in e)


@pytest.mark.integration
async def test_bucket_outside_us_east_1_gets_a_location_constraint(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    settings = load_settings()
    statuses = {s.kind: s for s in await ensure_resources(settings)}
    assert statuses["bucket"].status == "created"
    assert statuses["bucket"].detail == "eu-west-1"
    async with aws_client("s3") as s3:
        location = await s3.get_bucket_location(Bucket=settings.bucket)
    assert location["LocationConstraint"] == "eu-west-1"
    async with aws_client("cloudwatch") as cloudwatch:
        stored = await cloudwatch.get_dashboard(DashboardName=settings.dashboard)
    widgets = json.loads(stored["DashboardBody"])["widgets"]
    assert {w["properties"]["region"] for w in widgets if w["type"] == "metric"} == {"eu-west-1"}
