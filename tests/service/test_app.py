"""The service's endpoints through FastAPI's TestClient, with the app's real lifespan: the
consumer worker reads a real stream on moto (the `aws` fixture), fed with simulated lines whose
ground truth is known, so `/api/summary` is checked against the truth, not against itself.

Scenarios: the summary equals the truth (and fits the documented schema); bad parameters are
422s that name the parameter; health, readiness and Prometheus metrics of a working service;
readiness failing with the right reasons once the local stack is stopped.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import aws as service_aws
from service.api_models import ReadinessReport, Summary
from service.app import create_app
from service.aws import aws_client
from service.resources import ensure_resources
from service.settings import Settings, load_settings
from tests.conftest import ServerProcess, _clean_env
from tests.service.conftest import Geo, Run, simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CITY_FIELDS = ("city", "region", "country", "visitors", "menu_viewers", "purchasers")
TOTAL_FIELDS = ("page_views", "visitors", "menu_viewers", "purchasers", "rejected_lines")
FAST = {
    "CLICKSTREAM_POLL_SECONDS": "0.1",
    "CLICKSTREAM_FLUSH_SECONDS": "1",
    "CLICKSTREAM_METRICS_INTERVAL_SECONDS": "1",
    "CLICKSTREAM_PUSH_SECONDS": "0.5",
    "CLICKSTREAM_TOP_CITIES": "3",
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, shipped_geo: Geo) -> Run:
    """3,000 simulated lines on the shipped geo data, with their ground truth."""
    return simulate(tmp_path_factory.mktemp("app_run"), shipped_geo, lines=3_000, seed=5)


def _settings(monkeypatch: pytest.MonkeyPatch, **extra: str) -> Settings:
    for name, value in {**FAST, **extra}.items():
        monkeypatch.setenv(name, value)
    return load_settings()


async def _put_lines(stream: str, lines: list[bytes]) -> None:
    """Plain Kinesis records, one line each, keyed by client address as the agent keys them;
    one PutRecords at a time (moto loses records under concurrent puts), failures resent."""
    async with aws_client("kinesis") as kinesis:
        for start in range(0, len(lines), 500):
            entries = [
                {"Data": line, "PartitionKey": line.split(b" ", 1)[0].decode(errors="replace")}
                for line in lines[start : start + 500]
            ]
            while entries:
                answer = await kinesis.put_records(StreamName=stream, Records=entries)
                entries = [
                    entry
                    for entry, result in zip(entries, answer["Records"], strict=True)
                    if "ErrorCode" in result
                ]


def _wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


@pytest.fixture
def fed_client(
    aws: str, monkeypatch: pytest.MonkeyPatch, small_run: Run
) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """The app on moto after every simulated line went into the stream and was counted."""
    settings = _settings(monkeypatch)
    asyncio.run(ensure_resources(settings))
    lines = [line for line in small_run.log.read_bytes().split(b"\n") if line]
    asyncio.run(_put_lines(settings.stream, lines))
    truth = small_run.truth
    with TestClient(create_app(settings)) as client:

        def counted() -> bool:
            answer = client.get("/api/summary")
            return answer.status_code == 200 and answer.json()["pipeline"][
                "lines_processed"
            ] >= len(lines)

        _wait_for(counted, 60, "the consumer to count every line")
        yield client, truth


def test_summary_equals_the_ground_truth_and_fits_its_schema(
    fed_client: tuple[TestClient, dict[str, Any]],
) -> None:
    client, truth = fed_client
    answer = client.get("/api/summary", params={"window": "24h"})
    assert answer.status_code == 200
    body = answer.json()
    summary = Summary.model_validate(body)  # the documented schema
    assert summary.fleet is not None and summary.fleet.scope == "fleet"
    assert len(summary.fleet.local) == 2 and not summary.fleet.missing  # one worker, both shards
    assert (
        "fleet"
        in client.get("/openapi.json").json()["components"]["schemas"]["Summary"]["properties"]
    )
    assert {k: body["totals"][k] for k in TOTAL_FIELDS} == {
        k: truth["totals"][k] for k in TOTAL_FIELDS
    }
    assert [{k: c[k] for k in CITY_FIELDS} for c in body["cities"]] == [
        {k: c[k] for k in CITY_FIELDS} for c in truth["cities"]
    ]
    # The dashboard's extras agree with the totals.
    assert sum(point["page_views"] for point in body["trend"]) == body["totals"]["page_views"]
    assert all(c["latitude"] is not None for c in body["cities"] if c["city"] != "Unknown")
    visitors = body["totals"]["visitors"]
    assert body["conversion"]["purchase_rate"] == round(body["totals"]["purchasers"] / visitors, 4)

    top = client.get("/api/summary", params={"window": "24h", "limit": 3}).json()
    assert top["cities"] == body["cities"][:3]
    assert len(top["regions"]) == 3
    # The lab's "cities placing the most orders": the truth's cities ranked by purchasers.
    buyers = client.get("/api/summary", params={"sort": "purchasers", "limit": 5}).json()
    expected = sorted(truth["cities"], key=lambda c: -c["purchasers"])[:5]
    assert [{k: c[k] for k in CITY_FIELDS} for c in buyers["cities"]] == [
        {k: c[k] for k in CITY_FIELDS} for c in expected
    ]
    assert buyers["totals"] == body["totals"]
    # A shorter window never counts more than a longer one.
    short = client.get("/api/summary", params={"window": "5m"}).json()
    assert short["window"] == "5m"
    assert 0 < short["totals"]["visitors"] <= visitors


BAD_PARAMETERS = (
    ("/api/summary?window=2h", "window"),
    ("/api/summary?window=", "window"),
    ("/api/summary?limit=0", "limit"),
    ("/api/summary?limit=many", "limit"),
    ("/api/summary?sort=city", "sort"),
    ("/api/stream?window=1d", "window"),
    ("/api/stream?limit=1000", "limit"),
)


def test_bad_parameters_are_422_naming_the_parameter(
    fed_client: tuple[TestClient, dict[str, Any]],
) -> None:
    client, _ = fed_client
    for path, parameter in BAD_PARAMETERS:
        answer = client.get(path)
        assert answer.status_code == 422, path
        body = answer.json()
        assert f"query parameter '{parameter}'" in body["message"], (path, body)
        assert body["detail"][0]["loc"] == ["query", parameter], (path, body)


def test_health_readiness_and_metrics_of_a_working_service(
    fed_client: tuple[TestClient, dict[str, Any]],
) -> None:
    client, truth = fed_client
    assert client.get("/healthz").json() == {"status": "ok", "consumer": "running"}
    ready = client.get("/readyz")
    report = ReadinessReport.model_validate(ready.json())
    assert ready.status_code == 200, report.reasons
    assert report.ready and not report.reasons
    expected = {"consumer", "geo", "aws.kinesis", "aws.s3", "aws.dynamodb", "shards", "leases"}
    assert expected | {"archive"} <= set(report.checks)

    def scraped() -> str | None:
        """/metrics once it shows a pushed summary and the consumer's status after the count
        (both are snapshots, refreshed every fraction of a second)."""
        text = client.get("/metrics").text
        counted = re.search(r"^clickstream_consumer_lines_total 3000\.0$", text, re.M)
        return text if counted and "clickstream_city_visitors" in text else None

    text = _wait_for(scraped, 10, "the pushed summary and the line count in /metrics")
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    assert re.search(r"^process_cpu_seconds_total ", text, re.M)
    assert re.search(r"^clickstream_consumer_process_resident_memory_bytes [1-9]", text, re.M)
    assert (
        'clickstream_aws_calls_total{operation="GetRecords",outcome="ok",service="kinesis"}' in text
    )
    visitors = (
        f'clickstream_window_total{{field="visitors",window="24h"}} {truth["totals"]["visitors"]}.0'
    )
    assert visitors in text
    # Bounded cardinality: the top 3 cities (CLICKSTREAM_TOP_CITIES) and "Other", no addresses.
    assert len(re.findall(r"^clickstream_city_visitors\{", text, re.M)) == 4
    assert 'city="Other"' in text
    # The lease coordinator's figures: this single worker holds both shards, healthily.
    assert re.search(r"^clickstream_leases_healthy 1\.0$", text, re.M)
    assert re.search(r"^clickstream_leases_held 2\.0$", text, re.M)
    assert re.search(r"^clickstream_leases_taken_total [1-9]", text, re.M)
    assert not re.search(
        r"\d+\.\d+\.\d+\.\d+|[0-9a-f]{1,4}:[0-9a-f]{1,4}:", text.replace("e+0", "")
    )


def test_openapi_schema_and_the_page_with_its_assets(
    fed_client: tuple[TestClient, dict[str, Any]],
) -> None:
    client, _ = fed_client
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    ok = document["paths"]["/api/summary"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/Summary")
    assert {"totals", "cities", "window", "trend"} <= set(schemas["Summary"]["properties"])
    assert set(CITY_FIELDS) <= set(schemas["CityRow"]["properties"])
    assert set(TOTAL_FIELDS) <= set(schemas["Totals"]["properties"])
    window = document["paths"]["/api/summary"]["get"]["parameters"][0]
    assert window["name"] == "window"

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "DB-IP" in page.text and "/api/stream" in client.get("/static/app.js").text
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert client.get(asset).status_code == 200, asset
    assert "//" not in "".join(re.findall(r'src="([^"]+)"', page.text)), "no CDN"
    assert client.get("/static/vendor/land-110m.json").json()["type"] == "Topology"


def test_readiness_fails_with_the_reason_when_the_local_stack_stops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A moto of its own (the shared one must keep running), stopped under the service."""
    moto = ServerProcess(
        [sys.executable, "-m", "service.cli", "local-aws", "--port", "0"],
        "AWS_ENDPOINT_URL",
        _clean_env(CLICKSTREAM_STATE_DIR=str(tmp_path / "moto-state")),
        tmp_path,
    )
    try:
        for name, value in {
            "AWS_ENDPOINT_URL": moto.value,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "CLICKSTREAM_STATE_DIR": str(tmp_path / "state"),
        }.items():
            monkeypatch.setenv(name, value)
        service_aws.reset_session()
        settings = _settings(monkeypatch, CLICKSTREAM_READY_FETCH_SECONDS="3")
        asyncio.run(ensure_resources(settings))
        with TestClient(create_app(settings)) as client:
            _wait_for(lambda: client.get("/readyz").status_code == 200, 20, "readiness")
            assert moto.stop() is not None
            started = time.monotonic()

            def unreachable() -> dict[str, Any] | None:
                answer = client.get("/readyz")
                reasons = answer.json()["reasons"]
                found = any(r.startswith("aws.kinesis: ") for r in reasons)
                return answer.json() if answer.status_code == 503 and found else None

            # The endpoint probe answers from a cache for up to 5 s; GetRecords fails at once.
            report = _wait_for(unreachable, 15, "/readyz to say Kinesis is unreachable")
            reasons = report["reasons"]
            assert any(r.startswith("aws.kinesis: ") and "unreachable" in r for r in reasons), (
                reasons
            )
            assert any(r.startswith("aws.s3: ") for r in reasons), reasons
            assert not report["checks"]["aws.kinesis"]["ok"]
            assert report["checks"]["geo"]["ok"], "the geo database has nothing to do with AWS"
            stale = [r for r in reasons if r.startswith("shards: ")]
            assert stale and all("not read for" in r for r in stale), reasons
            assert time.monotonic() - started < 30
            # Liveness does not depend on AWS: restarting the container would not help.
            assert client.get("/healthz").status_code == 200
            stopping = time.monotonic()
        # Stopping with AWS gone still ends within ECS's 30 s (nothing can be committed).
        assert time.monotonic() - stopping < 30
    finally:
        moto.stop()
        os.environ.pop("AWS_ENDPOINT_URL", None)
