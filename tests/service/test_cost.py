"""`clickstream cost`: the arithmetic redone by hand for a few traffic levels, and the CLI.

Each expected figure is written out from the price table's numbers and the workload's
definitions (730 h a month, GiB, commits per shard = min(hits, max(86,400 / flush, hits /
flush records))), independently of the code's own helpers, so a slip in a formula fails here.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from service.cli import main as clickstream
from service.cost import Workload, estimate, load_prices

PRICES = Path(__file__).resolve().parents[2] / "service" / "prices" / "aws-us-east-1.toml"
GIB = 1024**3
DAYS = 730 / 24  # days in AWS's 730-hour month


def monthly(items: list, service: str, starts: str) -> float:
    matches = [i.monthly for i in items if i.service == service and i.item.startswith(starts)]
    assert len(matches) == 1, (service, starts, [i.item for i in items])
    return matches[0]


def test_price_table_names_its_date_region_and_sources() -> None:
    table = tomllib.loads(PRICES.read_text())
    assert table["region"] == "us-east-1" and table["as_of"] == "2025-01-15"
    services = {k for k, v in table.items() if isinstance(v, dict)}
    assert services == {"kinesis", "fargate", "s3", "kms", "cloudwatch", "dynamodb", "athena"}
    assert all(table[s]["source"].startswith("https://aws.amazon.com/") for s in services)


def test_100k_hits_a_day_by_hand() -> None:
    items = estimate(Workload(hits_per_day=100_000), load_prices()).items
    # Kinesis: 2 shards all month; at 100k lines/day every line is alone in its 250 ms window,
    # so one record (one 25 KB unit) per line.
    assert monthly(items, "Kinesis", "shard-hours") == pytest.approx(2 * 730 * 0.015)
    assert monthly(items, "Kinesis", "PUT payload") == pytest.approx(100_000 * DAYS / 1e6 * 0.014)
    # Fargate: one 0.5 vCPU / 1 GB x86 task and its public address.
    assert monthly(items, "Fargate", "vCPU") == pytest.approx(0.5 * 730 * 0.04048)
    assert monthly(items, "Fargate", "GB-hours") == pytest.approx(730 * 0.004445)
    assert monthly(items, "Fargate", "public IPv4") == pytest.approx(730 * 0.005)
    # S3: 50k lines a shard a day > 1,440 one-minute windows: 2 × 1,440 commits a day, each
    # 3 PUT-tier requests and one object: 32 B a line + 11,000 B an object = 34.88 MB a day,
    # objects of ~12 KiB, which stay in Standard all 365 days.
    daily = 100_000 * 32 + 2880 * 11_000
    assert monthly(items, "S3", "archive in Standard") == pytest.approx(daily * 365 / GIB * 0.023)
    assert monthly(items, "S3", "PUT/LIST") == pytest.approx(3 * 2880 * DAYS / 1000 * 0.005)
    assert monthly(items, "S3", "GET") == pytest.approx(10 * DAYS * 7 * 2880 * 2 / 1000 * 0.0004)
    assert not [i for i in items if "Standard-IA" in i.item or "Glacier" in i.item]
    # CloudWatch: 9 series without dimensions + 4 per (20 cities + Other) and (20 regions + Other).
    assert monthly(items, "CloudWatch", "custom metrics") == pytest.approx((9 + 4 * 42) * 0.30)
    assert monthly(items, "CloudWatch", "PutMetricData") == pytest.approx(730 * 60 / 1000 * 0.01)
    assert monthly(items, "CloudWatch", "dashboards") == 3.0
    assert monthly(items, "CloudWatch", "alarms") == pytest.approx(0.30)
    assert monthly(items, "CloudWatch", "Logs ingested") == pytest.approx(
        2880 * 300 * DAYS / GIB * 0.50
    )
    # DynamoDB: per shard 1,440 checkpoints + 8,640 renewals a day; a scan every 10 s.
    assert monthly(items, "DynamoDB", "lease table writes") == pytest.approx(
        2 * (1440 + 8640) * DAYS / 1e6 * 0.625
    )
    assert monthly(items, "DynamoDB", "lease table reads") == pytest.approx(360 * 730 / 1e6 * 0.125)
    # Athena: 10 queries a day, each reading 7 days of it (above the 10 MB minimum).
    assert monthly(items, "Athena", "data scanned") == pytest.approx(
        10 * DAYS * 7 * daily / 1024**4 * 5
    )


def test_on_demand_rounds_each_record_up_to_a_kilobyte() -> None:
    items = estimate(
        Workload(hits_per_day=1_000_000, kinesis_mode="on-demand"), load_prices()
    ).items
    # 2 shards × 4 windows a second = 691,200 records a day, ~434 bytes each: 1 KB billed each.
    assert monthly(items, "Kinesis", "on-demand stream-hours") == pytest.approx(730 * 0.04)
    assert monthly(items, "Kinesis", "data in") == pytest.approx(691_200 * 1024 * DAYS / GIB * 0.08)
    assert monthly(items, "Kinesis", "data out") == pytest.approx(
        1_000_000 * 300 * DAYS / GIB * 0.04
    )
    assert not [i for i in items if "shard-hours" in i.item]


def test_large_objects_move_down_the_storage_classes() -> None:
    w = Workload(hits_per_day=20_000_000, flush_seconds=600, retention_days=400, sse="kms")
    items = estimate(w, load_prices()).items
    # 10M lines a shard a day: max(144 by time, 200 by 50,000 records) = 200 commits a shard,
    # objects of ~1.6 MB, which the lifecycle rule moves.
    daily = 20_000_000 * 32 + 400 * 11_000
    assert monthly(items, "S3", "archive in Standard (30") == pytest.approx(
        daily * 30 / GIB * 0.023
    )
    assert monthly(items, "S3", "archive in Standard-IA (60") == pytest.approx(
        daily * 60 / GIB * 0.0125
    )
    assert monthly(items, "S3", "archive in Glacier Instant Retrieval (310") == pytest.approx(
        daily * 310 / GIB * 0.004
    )
    assert monthly(items, "S3", "lifecycle transitions to Standard-IA") == pytest.approx(
        400 * DAYS / 1000 * 0.01
    )
    assert monthly(items, "S3", "PUT/LIST") == pytest.approx(3 * 400 * DAYS / 1000 * 0.005)
    assert monthly(items, "S3", "KMS key") == 1.0


def test_totals_are_the_sum_of_the_items_and_a_year_is_twelve_months() -> None:
    result = estimate(Workload(hits_per_day=100_000), load_prices())
    assert result.monthly == pytest.approx(sum(i.monthly for i in result.items))
    assert result.yearly == pytest.approx(12 * result.monthly)
    assert sum(result.by_service().values()) == pytest.approx(result.monthly)


def test_cli_prints_the_pinned_breakdown_for_100k(capsys: pytest.CaptureFixture[str]) -> None:
    assert clickstream(["cost", "--hits-per-day", "100000"]) == 0
    out = capsys.readouterr().out
    per_service = out.split("per service")[1].split("Assumptions:")[0]
    rows = {line.split()[0]: line.split()[1:] for line in per_service.strip().splitlines()[1:]}
    assert rows == {
        "Kinesis": ["$21.94", "$263.31"],
        "Fargate": ["$21.67", "$260.04"],
        "S3": ["$6.49", "$77.91"],
        "CloudWatch": ["$56.85", "$682.21"],
        "DynamoDB": ["$0.42", "$4.99"],
        "Athena": ["$0.34", "$4.05"],
        "total": ["$107.71", "$1,292.52"],
    }
    assert "as of 2025-01-15" in out and "us-east-1" in out
    assert "Archive objects average 11.8 KiB" in out  # the small-object warning
    assumptions = out.split("Assumptions:")[1].strip().splitlines()
    assert len(assumptions) >= 9 and all(line.startswith("- ") for line in assumptions)


def test_cli_json_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "--hits-per-day", "100000", "--top-cities", "10", "--format", "json"]
    assert clickstream(argv) == 0
    document = json.loads(capsys.readouterr().out)
    metrics = [i for i in document["items"] if i["item"].startswith("custom metrics")]
    assert metrics[0]["quantity"] == 9 + 4 * 22
    assert document["total"]["yearly"] == pytest.approx(12 * document["total"]["monthly"], abs=0.06)


def test_cli_refuses_a_negative_traffic(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        clickstream(["cost", "--hits-per-day", "-5"])
    assert exit_info.value.code == 2
    assert "must be >= 0" in capsys.readouterr().err
