"""Enrichment: each hit's visitor, place, bot verdict and counting rule; and, over a simulated
log, exactly the simulator's ground truth (the README's counting rules, city by city)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from consumers.bots import BotDetector
from consumers.enrich import Enricher, visitor_key
from consumers.geo.locator import UNKNOWN_LOCATION, GeoLocator, Location
from consumers.geo.reloading import ReloadingGeoLocator
from consumers.models import EnrichedHit, Hit, Rejection
from consumers.pages import SiteRules
from consumers.parse import parse_line

REPO = Path(__file__).resolve().parents[2]
SEATTLE_IP = "23.78.129.10"
SEATTLE = Location("Seattle", "Washington", "US", "NA")
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    with GeoLocator() as locator:
        yield locator


@pytest.fixture(scope="module")
def enricher(geo: GeoLocator) -> Enricher:
    return Enricher(geo, BotDetector(), SiteRules())


def _hit(
    request: str = "GET /cafe/menu.php HTTP/1.1",
    status: int = 200,
    agent: str | None = CHROME,
    ip: str = SEATTLE_IP,
    forwarded_for: str | None = None,
) -> Hit:
    agent_field = "-" if agent is None else agent.replace('"', '\\"')
    line = f'{ip} - - [21/Nov/2026:11:59:59 +0000] "{request}" {status} 512 "-" "{agent_field}"' + (
        "" if forwarded_for is None else f' "{forwarded_for}"'
    )
    hit = parse_line(line.encode())
    assert isinstance(hit, Hit), hit
    return hit


def _where(location: Location) -> tuple[str, str, str, str]:
    return (location.city, location.region, location.country, location.continent)


def test_a_menu_view(enricher: Enricher) -> None:
    hit = _hit()
    enriched = enricher.enrich(hit)
    assert enriched.hit is hit
    assert enriched.client_ip == SEATTLE_IP
    assert enriched.visitor == f"{SEATTLE_IP}\t{CHROME}"
    assert _where(enriched.location) == _where(SEATTLE)
    assert (enriched.is_bot, enriched.page, enriched.is_page_view, enriched.stage) == (
        False,
        "menu",
        True,
        "menu",
    )


@pytest.mark.parametrize(
    ("request_line", "status", "agent", "page", "stage"),
    [
        ("POST /cafe/processOrder.php HTTP/1.1", 302, CHROME, "order", "purchase"),
        ("POST /cafe/processOrder.php HTTP/1.1", 500, CHROME, "order", None),
        ("GET /cafe/ HTTP/2.0", 200, CHROME, "home", "visit"),
        ("GET /cafe/menu.php?category=drinks HTTP/1.1", 200, CHROME, "menu", "menu"),
        ("GET /cafe/images/logo.png HTTP/1.1", 200, CHROME, "static", None),
        ("GET /cafe/menu.php HTTP/1.1", 200, GOOGLEBOT, "menu", None),
        ("GET /cafe/menu.php HTTP/1.1", 200, None, "menu", None),  # no agent: a bot
        ("GET /cafe/orderHistory.php HTTP/1.1", 200, CHROME, "other", "visit"),
        ("-", 408, CHROME, "other", None),
    ],
)
def test_counting_rule_per_hit(
    request_line: str,
    status: int,
    agent: str | None,
    page: str,
    stage: str | None,
    enricher: Enricher,
) -> None:
    enriched = enricher.enrich(_hit(request_line, status, agent))
    assert (enriched.page, enriched.stage, enriched.is_page_view) == (
        page,
        stage,
        stage is not None,
    )
    assert enriched.is_bot is (agent in (None, GOOGLEBOT))


def test_visitor_key_without_agent_is_address_and_tab() -> None:
    assert visitor_key("1.2.3.4", None) == visitor_key("1.2.3.4", "") == "1.2.3.4\t"


def test_escaped_quotes_in_the_agent_are_undone_in_the_key(enricher: Enricher) -> None:
    agent = 'python-requests/2.28.1 "probe"'
    enriched = enricher.enrich(_hit(agent=agent))
    assert enriched.visitor == f"{SEATTLE_IP}\t{agent}"
    assert enriched.is_bot


def test_behind_a_trusted_balancer_the_forwarded_client_is_the_visitor(geo: GeoLocator) -> None:
    enricher = Enricher(geo, trusted_proxies=["10.0.0.0/8"])
    hit = _hit(ip="10.0.3.4", forwarded_for=f"1.1.1.1, {SEATTLE_IP}")
    enriched = enricher.enrich(hit)
    assert enriched.client_ip == SEATTLE_IP
    assert enriched.visitor.startswith(SEATTLE_IP + "\t")
    assert _where(enriched.location) == _where(SEATTLE)
    assert enriched.hit.client_ip == "10.0.3.4"  # the log's own record is kept as it was


def test_without_trusted_proxies_the_header_is_ignored(enricher: Enricher) -> None:
    enriched = enricher.enrich(_hit(ip="10.0.3.4", forwarded_for=SEATTLE_IP))
    assert enriched.client_ip == "10.0.3.4"
    assert enriched.location == UNKNOWN_LOCATION  # counted under Unknown, not dropped


def test_batch_equals_one_by_one_and_the_result_is_a_real_frozen_enriched_hit(
    enricher: Enricher,
) -> None:
    hits = [_hit(), _hit("GET /cafe/ HTTP/1.1", agent=GOOGLEBOT), _hit(ip="2001:db8::1")]
    batch = enricher.enrich_batch(hits)
    assert batch == [enricher.enrich(hit) for hit in hits]
    for enriched in batch:
        assert type(enriched) is EnrichedHit
        rebuilt = EnrichedHit(*(getattr(enriched, f.name) for f in dataclasses.fields(EnrichedHit)))
        assert rebuilt == enriched and hash(rebuilt) == hash(enriched)
        with pytest.raises(dataclasses.FrozenInstanceError):
            enriched.is_bot = True  # type: ignore[misc]
    assert enricher.enrich_batch([]) == []


def test_a_reloading_locator_fits(tmp_path: Path) -> None:
    with ReloadingGeoLocator() as geo:
        enriched = Enricher(geo).enrich(_hit())
    assert _where(enriched.location) == _where(SEATTLE)


# ------------------------------------------------------------ agreement with the ground truth


@dataclass
class _Tally:
    """The README's counting rules, fed with enriched hits only."""

    lines: int = 0
    rejected: int = 0
    bot_lines: int = 0
    static_lines: int = 0
    page_views: int = 0
    visitors: dict[str, tuple[Location, set[str]]] = field(default_factory=dict)
    place_views: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, enriched: EnrichedHit) -> None:
        if enriched.is_bot:
            self.bot_lines += 1
            return
        if enriched.page == "static":
            self.static_lines += 1
        if not enriched.is_page_view:
            return
        self.page_views += 1
        place, stages = self.visitors.setdefault(enriched.visitor, (enriched.location, set()))
        self.place_views[(place.city, place.region, place.country)] += 1
        assert enriched.stage is not None
        stages.add(enriched.stage)

    def summary(self) -> dict[str, Any]:
        places: dict[tuple[str, str, str], dict[str, int]] = {}
        for location, stages in self.visitors.values():
            row = places.setdefault(
                (location.city, location.region, location.country),
                {"visitors": 0, "menu_viewers": 0, "purchasers": 0, "page_views": 0},
            )
            row["page_views"] = self.place_views[(location.city, location.region, location.country)]
            row["visitors"] += 1
            row["menu_viewers"] += "menu" in stages
            row["purchasers"] += "purchase" in stages
        cities = [
            {"city": city, "region": region, "country": country, **counts}
            for (city, region, country), counts in places.items()
        ]
        cities.sort(key=lambda r: (-r["visitors"], r["city"], r["region"], r["country"]))
        return {
            "lines": self.lines,
            "bot_lines": self.bot_lines,
            "static_lines": self.static_lines,
            "totals": {
                "page_views": self.page_views,
                "visitors": len(self.visitors),
                "menu_viewers": sum("menu" in s for _, s in self.visitors.values()),
                "purchasers": sum("purchase" in s for _, s in self.visitors.values()),
                "rejected_lines": self.rejected,
            },
            "cities": cities,
        }


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("simulated")
    log, truth = directory / "access_log", directory / "truth.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "simulate",
            "--lines",
            "20000",
            "--seed",
            "3",
            "--end",
            "2026-11-21T12:00:00Z",
            "--out",
            str(log),
            "--truth",
            str(truth),
            "--no-progress",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return log, json.loads(truth.read_text(encoding="utf-8"))


def _count(log: Path, enricher: Enricher) -> dict[str, Any]:
    tally = _Tally()
    hits: list[Hit] = []
    with log.open("rb") as lines:
        for raw in lines:
            tally.lines += 1
            result = parse_line(raw)
            if isinstance(result, Rejection):
                tally.rejected += 1
            else:
                hits.append(result)
    for enriched in enricher.enrich_batch(hits):
        tally.add(enriched)
    return tally.summary()


def test_enrichment_counts_exactly_the_ground_truth(
    simulated: tuple[Path, dict[str, Any]], enricher: Enricher
) -> None:
    log, truth = simulated
    counted = _count(log, enricher)

    assert counted["lines"] == truth["lines"] == 20_000
    assert counted["totals"] == truth["totals"]
    assert counted["bot_lines"] == truth["bot_lines"]
    assert counted["static_lines"] == truth["static_lines"]
    fields = ("city", "region", "country", "visitors", "menu_viewers", "purchasers", "page_views")
    assert counted["cities"] == [{k: row[k] for k in fields} for row in truth["cities"]]
    # The run is worth comparing: every kind of thing the rules distinguish occurs in it.
    assert truth["totals"]["purchasers"] > 50 and truth["bot_lines"] > 1000
    assert len(truth["cities"]) > 30 and truth["ipv6_lines"] > 0
    assert any(row["city"] == "Unknown" for row in truth["cities"])


@pytest.mark.parametrize(
    "rules",
    [
        SiteRules(menu=("/cafe/menu.php", "/cafe/orderHistory.php")),  # a second menu page
        SiteRules(page_view_statuses=frozenset(range(200, 300))),  # 3xx not counted
        SiteRules(static_prefixes=("/cafe/css/",), static_extensions=(".css",)),  # images count
    ],
)
def test_the_comparison_notices_a_rule_the_truth_does_not_follow(
    rules: SiteRules, simulated: tuple[Path, dict[str, Any]], geo: GeoLocator
) -> None:
    log, truth = simulated
    assert _count(log, Enricher(geo, rules=rules))["totals"] != truth["totals"]
