"""`clickstream sql` without AWS: the example queries on a small archive built by hand, where
every answer can be counted on one's fingers, and the output formats.

The archive here is a directory in the real layout (`events/dt=.../hour=.../shard=.../x.parquet`)
written with the archive's own schema; the S3 mirror and the simulator's ground truth are in
tests/service/test_sql_archive.py.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from sqlglot import exp

from consumers.archive_format import EVENT_SCHEMA
from service.cli import main as clickstream
from service.sql import engine
from service.sql.examples import examples

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
PHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Safari/604.1"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SEATTLE = ("Seattle", "Washington", "US")
PORTLAND = ("Portland", "Oregon", "US")
PORTLAND_ME = ("Portland", "Maine", "US")

_counter = iter(range(1_000_000))

# Functions that DuckDB and Athena (Trino) both have, with the same meaning; an example query
# that needs another one would not run unchanged on Athena.
PORTABLE_FUNCTIONS = (
    exp.Avg, exp.Case, exp.Cast, exp.Coalesce, exp.Count, exp.DateTrunc, exp.If, exp.Max,
    exp.Min, exp.Nullif, exp.Round, exp.Sum, exp.TimestampTrunc,
)  # fmt: skip


def event(
    ip: str,
    agent: str,
    place: tuple[str, str, str],
    page: str,
    *,
    at: str = "2026-11-21T10:15:00",
    bot: bool = False,
    status: int = 200,
    method: str = "GET",
) -> dict[str, Any]:
    """One archived event; a page view unless it is a bot, a static file or an error."""
    n = next(_counter)
    page_view = not bot and page != "static" and 200 <= status < 400
    stage = None
    if page_view:
        stage = {"menu": "menu", "order": "purchase" if method == "POST" else "visit"}.get(
            page, "visit"
        )
    when = datetime.fromisoformat(at).replace(tzinfo=UTC)
    row = {field.name: None for field in EVENT_SCHEMA}
    row.update(
        event_id=f"f:{n}", event_time=when, client_ip=ip, logged_ip=ip, method=method,
        path=f"/cafe/{page}", status=status, user_agent=agent, log_format="combined",
        city=place[0], region=place[1], country=place[2], continent="NA", is_bot=bot,
        page_class=page, is_page_view=page_view, funnel_stage=stage, shard_id="shardId-0",
        sequence_number=str(n), sub_sequence_number=0, arrival_time=when,
    )  # fmt: skip
    return row


def write_archive(root: Path, rows: list[dict[str, Any]]) -> Path:
    """The rows as one object per hour, in the archive's key layout."""
    by_hour: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_hour.setdefault(row["event_time"].strftime("dt=%Y-%m-%d/hour=%H"), []).append(row)
    for hour, hour_rows in by_hour.items():
        folder = root / "events" / hour / "shard=shardId-0"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(hour_rows, EVENT_SCHEMA), folder / "1-00000.parquet")
    return root


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Seattle: 3 visitors (one of them two browsers on one address = 2), Portland OR: 1,
    Portland ME: 1; plus a bot, static files and a failed order that count for nothing."""
    rows = [
        # Visitor A (Seattle): home, menu, order at 10h; back at 11h for the menu again.
        event("198.51.100.1", BROWSER, SEATTLE, "home"),
        event("198.51.100.1", BROWSER, SEATTLE, "static"),
        event("198.51.100.1", BROWSER, SEATTLE, "menu"),
        event("198.51.100.1", BROWSER, SEATTLE, "order", method="POST"),
        event("198.51.100.1", BROWSER, SEATTLE, "menu", at="2026-11-21T11:05:00"),
        # Visitor B: same address, another browser (an office): home and menu.
        event("198.51.100.1", PHONE, SEATTLE, "home"),
        event("198.51.100.1", PHONE, SEATTLE, "menu"),
        # Visitor C (Seattle): home only; its order failed (500: not a page view).
        event("198.51.100.7", BROWSER, SEATTLE, "home", at="2026-11-21T11:30:00"),
        event("198.51.100.7", BROWSER, SEATTLE, "order", method="POST", status=500),
        # Visitor D (Portland, Oregon): menu, order.
        event("203.0.113.9", PHONE, PORTLAND, "menu"),
        event("203.0.113.9", PHONE, PORTLAND, "order", method="POST"),
        # Visitor E (Portland, Maine): a GET of the order page is not a purchase.
        event("192.0.2.44", BROWSER, PORTLAND_ME, "order", at="2026-11-21T11:45:00"),
        # A crawler: three lines, no visitor.
        event("66.249.66.1", GOOGLEBOT, SEATTLE, "home", bot=True),
        event("66.249.66.1", GOOGLEBOT, SEATTLE, "menu", bot=True),
        event("66.249.66.1", GOOGLEBOT, SEATTLE, "static", bot=True),
    ]
    return write_archive(tmp_path / "archive", rows)


def query(root: Path, name: str) -> list[dict[str, Any]]:
    result = engine.run(engine.connect(root), examples()[name].sql)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def test_every_example_has_a_title_and_runs_on_an_empty_archive(tmp_path: Path) -> None:
    shipped = examples()
    assert {"top_cities", "funnel_by_city", "hourly_trend", "bots_share"} <= set(shipped)
    con = engine.connect(tmp_path)  # no events/ folder at all
    for example in shipped.values():
        assert example.title and not example.title.startswith("-")
        engine.run(con, example.sql)


def test_examples_use_only_sql_athena_shares() -> None:
    for example in examples().values():
        tree = sqlglot.parse_one(example.sql, read="duckdb")
        functions = {type(n) for n in tree.walk() if isinstance(n, exp.Func)}
        foreign = {f.__name__ for f in functions if not issubclass(f, PORTABLE_FUNCTIONS)}
        assert foreign == set(), example.name
        # DuckDB-only syntax: GROUP BY ALL, SELECT * EXCLUDE, QUALIFY.
        assert not any(isinstance(n, exp.Group) and n.args.get("all") for n in tree.walk())
        assert not any(isinstance(n, exp.Star) and n.args.get("except") for n in tree.walk())
        assert not list(tree.find_all(exp.Qualify)), example.name


def test_the_portability_check_catches_duckdb_only_sql() -> None:
    for sql in (
        "SELECT strftime(event_time, '%H') AS h FROM events",
        "SELECT list_value(1, 2)",
        "SELECT city, count(*) FROM events GROUP BY ALL",
    ):
        tree = sqlglot.parse_one(sql, read="duckdb")
        functions = {type(n) for n in tree.walk() if isinstance(n, exp.Func)}
        grouped_all = any(isinstance(n, exp.Group) and n.args.get("all") for n in tree.walk())
        assert grouped_all or any(not issubclass(f, PORTABLE_FUNCTIONS) for f in functions), sql


def test_funnel_by_city_counts_distinct_visitors_per_stage(archive: Path) -> None:
    rows = query(archive, "funnel_by_city")
    got = [
        (r["city"], r["region"], r["visitors"], r["menu_viewers"], r["purchasers"]) for r in rows
    ]
    assert got == [
        ("Seattle", "Washington", 3, 2, 1),
        ("Portland", "Maine", 1, 0, 0),
        ("Portland", "Oregon", 1, 1, 1),
    ]
    seattle = rows[0]
    assert float(seattle["menu_pct"]) == 66.7 and float(seattle["purchase_pct"]) == 33.3
    assert rows[1]["menu_to_purchase_pct"] is None  # no menu viewer: no ratio, no error


def test_top_cities_and_regions(archive: Path) -> None:
    cities = [(r["city"], r["visitors"], r["page_views"]) for r in query(archive, "top_cities")]
    assert cities == [("Seattle", 3, 7), ("Portland", 1, 1), ("Portland", 1, 2)]
    regions = [(r["region"], r["visitors"], r["purchasers"]) for r in query(archive, "top_regions")]
    assert regions == [("Washington", 3, 1), ("Maine", 1, 0), ("Oregon", 1, 1)]


def test_hourly_trend_cuts_utc_hours(archive: Path) -> None:
    rows = query(archive, "hourly_trend")
    assert [(r["hour_start"], r["page_views"], r["visitors"]) for r in rows] == [
        ("2026-11-21T10:00:00.000Z", 7, 3),
        ("2026-11-21T11:00:00.000Z", 3, 3),
    ]
    assert [(r["menu_views"], r["purchases"]) for r in rows] == [(3, 2), (1, 0)]


def test_bots_share(archive: Path) -> None:
    (row,) = query(archive, "bots_share")
    assert (row["lines"], row["bot_lines"], row["bot_clients"]) == (15, 3, 1)
    assert float(row["bot_lines_pct"]) == 20.0


def test_partitions_are_columns(archive: Path) -> None:
    result = engine.run(
        engine.connect(archive),
        "SELECT dt, hour, shard, count(*) AS n FROM events GROUP BY ALL ORDER BY hour",
    )
    assert [tuple(map(str, row)) for row in result.rows] == [
        ("2026-11-21", "10", "shardId-0", "12"),
        ("2026-11-21", "11", "shardId-0", "3"),
    ]


def test_cli_formats(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sql", "--archive", str(archive), "--example", "top_cities"]
    assert clickstream([*base, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document[0] == {
        "city": "Seattle", "region": "Washington", "country": "US", "visitors": 3,
        "page_views": 7,
    }  # fmt: skip
    assert clickstream([*base, "--format", "csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == ["city", "region", "country", "visitors", "page_views"]
    assert table[1] == ["Seattle", "Washington", "US", "3", "7"]
    assert clickstream(base) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["city", "region", "country", "visitors", "page_views"]
    assert lines[2].split() == ["Seattle", "Washington", "US", "3", "7"]
    assert lines[-1] == "(3 rows)"


def test_cli_ad_hoc_query_and_its_errors(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT count(*) AS n, min(event_time) AS first FROM events WHERE NOT is_bot"
    assert clickstream(["sql", sql, "--archive", str(archive), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 12, "first": "2026-11-21T10:15:00.000Z"}]
    assert clickstream(["sql", "SELECT nope FROM events", "--archive", str(archive)]) == 1
    assert "nope" in capsys.readouterr().err
    assert clickstream(["sql", "--example", "missing", "--archive", str(archive)]) == 2
    assert "top_cities" in capsys.readouterr().err
