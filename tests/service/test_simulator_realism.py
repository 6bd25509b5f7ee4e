"""Simulated traffic looks like a café's real traffic: the shares and habits the dashboards show."""

from __future__ import annotations

import ipaddress
import itertools
import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property

import crawleruseragents
import pytest

from service.simulator import site
from service.simulator.site import Kind
from tests.service.conftest import SHIPPED_CATALOG, Run
from tests.service.test_simulator_truth import Hit, is_static, parse


@dataclass
class Traffic:
    """The lines of one run, parsed once and shared by the tests below."""

    run: Run

    @cached_property
    def raw(self) -> list[bytes]:
        return self.run.log.read_bytes().split(b"\n")[:-1]

    @cached_property
    def hits(self) -> list[Hit]:
        return [hit for hit in map(parse, self.raw) if hit is not None]

    @cached_property
    def bot_agents(self) -> set[str]:
        agents = {hit.agent for hit in self.hits}
        return {agent for agent in agents if crawleruseragents.is_crawler(agent)}

    @cached_property
    def human(self) -> list[Hit]:
        return [hit for hit in self.hits if hit.agent not in self.bot_agents]

    @cached_property
    def page_views(self) -> list[Hit]:
        human = self.human
        return [hit for hit in human if not is_static(hit.path) and 200 <= hit.status < 400]


@pytest.fixture(scope="module")
def traffic(run_100k: Run) -> Traffic:
    return Traffic(run_100k)


def test_bots_are_a_tenth_to_a_fifth_of_the_lines(traffic: Traffic) -> None:
    bot_lines = len(traffic.hits) - len(traffic.human)
    assert 0.10 <= bot_lines / len(traffic.raw) <= 0.20
    assert bot_lines == traffic.run.truth["bot_lines"]
    # Many kinds of bot, not one: search engines, SEO and AI crawlers, monitors, scripts.
    assert len(traffic.bot_agents) >= 20


def test_funnel_drops_off_like_a_real_shop(traffic: Traffic) -> None:
    totals = traffic.run.truth["totals"]
    assert 0.40 <= totals["menu_viewers"] / totals["visitors"] <= 0.70
    assert 0.10 <= totals["purchasers"] / totals["menu_viewers"] <= 0.40
    assert totals["visitors"] > 3_000


def test_visitors_come_from_many_cities_on_several_continents(traffic: Traffic) -> None:
    cities = traffic.run.truth["cities"]
    known = [row for row in cities if row["city"] != "Unknown"]
    assert len(known) >= 50
    assert len({row["continent"] for row in known}) >= 5
    # Some visitors cannot be placed at all, and are counted, not dropped.
    unknown = [row for row in cities if row["city"] == "Unknown"]
    assert unknown and 0 < unknown[0]["visitors"] < 0.05 * traffic.run.truth["totals"]["visitors"]


def test_shipped_catalog_spreads_visitors_over_50_cities_and_5_continents(
    shipped_run_100k: Run,
) -> None:
    truth = shipped_run_100k.truth
    known = [row for row in truth["cities"] if row["city"] != "Unknown"]
    assert len(known) >= 50
    continents = {row["continent"] for row in known}
    assert len(continents) >= 5, continents
    catalog = json.loads(SHIPPED_CATALOG.read_text())
    assert len(catalog["cities"]) >= 50


def test_daily_rhythm_follows_local_time(traffic: Traffic) -> None:
    """06:00-12:00 UTC is morning to lunch in Europe and the middle of the night on the US west
    coast: per unit of catalog weight, Europe must be far busier."""
    catalog = json.loads(traffic.run.geo.catalog.read_text())
    weight = {(c["city"], c["region"]): c["weight"] for c in catalog["cities"]}
    zone = {(c["city"], c["region"]): c["longitude"] for c in catalog["cities"]}
    europe = west = 0.0
    europe_weight = west_weight = 0.0
    for row in traffic.run.truth["cities"]:
        key = (row["city"], row["region"])
        if key not in zone:
            continue
        if -10 <= zone[key] <= 25:
            europe, europe_weight = europe + row["visitors"], europe_weight + weight[key]
        elif zone[key] <= -115:
            west, west_weight = west + row["visitors"], west_weight + weight[key]
    assert europe / europe_weight > 3 * (west / west_weight)


def test_some_visitors_use_ipv6(traffic: Traffic) -> None:
    visitors = {(hit.ip, hit.agent) for hit in traffic.page_views}
    on_ipv6 = {v for v in visitors if ipaddress.ip_address(v[0]).version == 6}
    assert 0.08 <= len(on_ipv6) / len(visitors) <= 0.15


def test_people_come_back_and_share_addresses(traffic: Traffic) -> None:
    first_seen: dict[tuple[str, str], float] = {}
    returning = set()
    agents_per_ip: dict[str, set[str]] = defaultdict(set)
    for hit in traffic.page_views:
        key = (hit.ip, hit.agent)
        moment = hit.time.timestamp()
        first = first_seen.setdefault(key, moment)
        if moment - first >= 3600:
            returning.add(key)
        agents_per_ip[hit.ip].add(hit.agent)
    assert len(returning) >= 0.02 * len(first_seen)
    shared = [ip for ip, agents in agents_per_ip.items() if len(agents) > 1]
    assert len(shared) >= 0.01 * len(agents_per_ip)


def test_errors_redirects_and_caching_appear(traffic: Traffic) -> None:
    statuses = Counter(hit.status for hit in traffic.hits)
    for status in (200, 301, 302, 304, 403, 404, 500, 503):
        assert statuses[status] > 0, status
    assert 0.005 < statuses[404] / len(traffic.hits) < 0.10
    assert sum(statuses[s] for s in (500, 502, 503)) / len(traffic.hits) < 0.01
    methods = Counter(hit.method for hit in traffic.hits)
    assert methods["HEAD"] > 0 and methods["POST"] > 0
    failed_orders = [h for h in traffic.human if h.path == site.ORDER_PATH and h.status == 500]
    assert failed_orders  # an order answered 500 is not a purchase: the truth must cope
    assert any(b'\\"' in line for line in traffic.raw)  # an escaped quote in a user agent
    assert any(b'HEAD /cafe/ HTTP/1.1" 200 - ' in line for line in traffic.raw)  # %b is "-"


def test_people_load_assets_after_pages_and_take_time_between_pages(traffic: Traffic) -> None:
    first_request: dict[tuple[str, str], Hit] = {}
    for hit in traffic.human:
        first_request.setdefault((hit.ip, hit.agent), hit)
    assert all(not is_static(hit.path) for hit in first_request.values())
    gaps = []
    last_page: dict[tuple[str, str], float] = {}
    for hit in traffic.page_views:
        key = (hit.ip, hit.agent)
        moment = hit.time.timestamp()
        if key in last_page and moment - last_page[key] < 1800:
            gaps.append(moment - last_page[key])
        last_page[key] = moment
    assert statistics.median(gaps) >= 5
    # Browsers send a referer from the café's own pages for their assets.
    static = [hit for hit in traffic.human if is_static(hit.path) and hit.path != "/favicon.ico"]
    assert static and len(static) > len(traffic.page_views)


def test_malformed_lines_are_unparseable_and_single(traffic: Traffic) -> None:
    rejected = [line for line in traffic.raw if parse(line) is None]
    assert len(rejected) == traffic.run.truth["totals"]["rejected_lines"]
    kinds: Counter[str] = Counter()
    for line in rejected:
        assert line.strip() and b"\r" not in line
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            kinds["invalid utf-8"] += 1
            continue
        kinds["php" if b"PHP" in line or b"AH0" in line else "cut or bad time"] += 1
    assert len(kinds) == 3, kinds


def test_every_path_kind_agrees_with_the_static_rule() -> None:
    """The simulator labels paths itself; its labels must match the README's path rule."""
    labelled: list[tuple[str, bool]] = [(asset.path, True) for asset in site.ASSETS]
    labelled += [(site.FAVICON_PATH, True), (site.ROBOTS_PATH, True)]
    labelled += [(path, kind is Kind.STATIC) for path, kind, _ in site.CRAWLABLE]
    labelled += [(path, False) for _, path, _ in site.PROBES]
    labelled += [(path, False) for path in (*site.HOME_PATHS, site.HOME_NO_SLASH, site.MENU_PATH)]
    labelled += [(site.ORDER_PATH, False), (site.HISTORY_PATH, False), (site.OLD_MENU_PATH, False)]
    for path, static in labelled:
        assert is_static(path.split("?")[0]) == static, path


def test_monitors_check_on_their_interval_without_doubling_up(traffic: Traffic) -> None:
    checks = [hit for hit in traffic.hits if hit.agent.startswith("Uptime-Kuma/")]
    assert len(checks) >= 10
    by_address: dict[str, list[float]] = defaultdict(list)
    for hit in checks:
        by_address[hit.ip].append(hit.time.timestamp())
    assert len(by_address) == 1  # one installation
    (moments,) = by_address.values()
    moments.sort()
    assert min(b - a for a, b in itertools.pairwise(moments)) >= 55  # every 60 s, never twice
