"""The simulator's ground truth equals a count made the pipeline's way, from the log text alone.

The count here shares no code with the simulator: its own regular expression for the combined
format, `geoip2` on the geo database for places, the `crawler-user-agents` list for bots, and
the counting rules as the README states them. Equality (totals and every city) means the truth
file can stand in for "what the pipeline must report".
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import crawleruseragents
import geoip2.database
import geoip2.errors
import pytest

from tests.service.conftest import Run

COMBINED = re.compile(
    r"(?P<ip>[0-9A-Fa-f:.]+) (?P<ident>\S+) (?P<user>\S+) "
    r"\[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "
    r'"(?P<method>[A-Z]+) (?P<target>\S+) (?P<protocol>HTTP/\d\.\d)" '
    r"(?P<status>\d{3}) (?P<size>\d+|-) "
    r'"(?P<referer>[^"\\]*(?:\\.[^"\\]*)*)" "(?P<agent>[^"\\]*(?:\\.[^"\\]*)*)"'
)
STATIC_PREFIXES = ("/cafe/css/", "/cafe/images/", "/cafe/js/")
STATIC_SUFFIXES = (".css", ".js", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp")
STATIC_SUFFIXES += (".woff", ".woff2")
STATIC_PATHS = ("/favicon.ico", "/robots.txt")
UNKNOWN = "Unknown"
COUNTED = ("visitors", "menu_viewers", "purchasers")


@dataclass
class Hit:
    ip: str
    agent: str
    method: str
    path: str
    status: int
    time: datetime


@functools.lru_cache(maxsize=100_000)
def valid_ip(text: str) -> None:
    ipaddress.ip_address(text)


@functools.lru_cache(maxsize=10_000)
def apache_time(text: str) -> datetime:
    return datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z")


def parse(raw: bytes) -> Hit | None:
    """A hit, or None for a line that is not a combined-format log line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    match = COMBINED.fullmatch(text)
    if match is None:
        return None
    try:
        valid_ip(match["ip"])
        moment = apache_time(match["time"])
    except ValueError:
        return None
    agent = match["agent"]
    if "\\" in agent:
        agent = re.sub(r"\\(.)", r"\1", agent)
    path = match["target"].split("?", 1)[0]
    return Hit(match["ip"], agent, match["method"], path, int(match["status"]), moment)


def is_static(path: str) -> bool:
    return (
        path.startswith(STATIC_PREFIXES) or path.endswith(STATIC_SUFFIXES) or (path in STATIC_PATHS)
    )


class Places:
    """City, region and country of an address as the geo database has them."""

    def __init__(self, database: Path) -> None:
        self.reader = geoip2.database.Reader(str(database))
        self.cache: dict[str, tuple[str, str, str]] = {}

    def __call__(self, ip: str) -> tuple[str, str, str]:
        place = self.cache.get(ip)
        if place is None:
            place = self.cache[ip] = self._lookup(ip)
        return place

    def _lookup(self, ip: str) -> tuple[str, str, str]:
        if not ipaddress.ip_address(ip).is_global:
            return (UNKNOWN, UNKNOWN, UNKNOWN)
        try:
            answer = self.reader.city(ip)
        except geoip2.errors.AddressNotFoundError:
            return (UNKNOWN, UNKNOWN, UNKNOWN)
        region = answer.subdivisions[0].name if answer.subdivisions else None
        return (answer.city.name or UNKNOWN, region or UNKNOWN, answer.country.iso_code or UNKNOWN)


@dataclass
class Count:
    lines: int = 0
    rejected: int = 0
    bot_lines: int = 0
    page_views: int = 0
    visitors: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # -> stages reached


def count(log: Path, database: Path) -> dict[str, Any]:
    """The pipeline's numbers for `log`, by the README's counting rules."""
    tally = Count()
    bots: dict[str, bool] = {}
    with log.open("rb") as lines:
        for raw in lines:
            tally.lines += 1
            hit = parse(raw.rstrip(b"\n"))
            if hit is None:
                tally.rejected += 1
                continue
            bot = bots.get(hit.agent)
            if bot is None:
                bot = bots[hit.agent] = crawleruseragents.is_crawler(hit.agent)
            if bot:
                tally.bot_lines += 1
                continue
            if is_static(hit.path) or not 200 <= hit.status < 400:
                continue
            if hit.method not in ("GET", "HEAD", "POST"):
                continue
            tally.page_views += 1
            stages = tally.visitors.setdefault((hit.ip, hit.agent), set())
            if hit.path == "/cafe/menu.php":
                stages.add("menu")
            if hit.path == "/cafe/processOrder.php" and hit.method == "POST":
                stages.add("purchase")
    places = Places(database)
    cities: dict[tuple[str, str, str], Counter[str]] = {}
    for (ip, _agent), stages in tally.visitors.items():
        city = cities.setdefault(places(ip), Counter())
        city["visitors"] += 1
        city["menu_viewers"] += "menu" in stages
        city["purchasers"] += "purchase" in stages
    rows = [
        {"city": c, "region": r, "country": k, **{name: n[name] for name in COUNTED}}
        for (c, r, k), n in cities.items()
    ]
    rows.sort(key=lambda row: (-row["visitors"], row["city"], row["region"], row["country"]))
    return {
        "lines": tally.lines,
        "bot_lines": tally.bot_lines,
        "totals": {
            "page_views": tally.page_views,
            "visitors": len(tally.visitors),
            "menu_viewers": sum("menu" in s for s in tally.visitors.values()),
            "purchasers": sum("purchase" in s for s in tally.visitors.values()),
            "rejected_lines": tally.rejected,
        },
        "cities": rows,
    }


CITY_FIELDS = ("city", "region", "country", *COUNTED)


def assert_truth_matches(run: Run) -> None:
    truth = run.truth
    counted = count(run.log, run.geo.database)
    assert counted["lines"] == truth["lines"] == run.lines
    assert counted["totals"] == truth["totals"]
    assert counted["bot_lines"] == truth["bot_lines"]
    truth_cities = [{key: row[key] for key in CITY_FIELDS} for row in truth["cities"]]
    assert counted["cities"] == truth_cities


def test_truth_equals_independent_count(run_100k: Run) -> None:
    assert_truth_matches(run_100k)


def test_truth_equals_independent_count_on_shipped_geo_data(shipped_run_100k: Run) -> None:
    """The acceptance check proper: the shipped catalog's addresses resolve to its cities."""
    assert_truth_matches(shipped_run_100k)


def test_truth_shape_follows_the_api_summary(run_100k: Run) -> None:
    truth = run_100k.truth
    assert set(truth["totals"]) == {"page_views", *COUNTED, "rejected_lines"}
    for row in truth["cities"]:
        assert {"city", "region", "country", "visitors", "menu_viewers", "purchasers"} <= set(row)
    order = [(-row["visitors"], row["city"]) for row in truth["cities"]]
    assert order == sorted(order)
    assert sum(row["visitors"] for row in truth["cities"]) == truth["totals"]["visitors"]
    assert sum(row["visitors"] for row in truth["regions"]) == truth["totals"]["visitors"]
    assert truth["seed"] == 1
    assert truth["first_time"] >= "2026-11-21T06:00:00Z"
    assert truth["last_time"] <= "2026-11-21T12:00:00Z"


def test_consumer_parser_rejects_exactly_the_malformed_lines(run_100k: Run) -> None:
    """The project's own parser (when present) agrees on which lines are malformed."""
    parse_module = pytest.importorskip("consumers.parse")
    models = pytest.importorskip("consumers.models")
    rejected = 0
    with run_100k.log.open("rb") as lines:
        for raw in lines:
            if isinstance(parse_module.parse_line(raw.rstrip(b"\n")), models.Rejection):
                rejected += 1
    assert rejected == run_100k.truth["totals"]["rejected_lines"]
