"""User agents, addresses and the catalog: the simulator's inputs are real and well-formed."""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path

import crawleruseragents
import pytest

from service.simulator.catalog import CatalogError, Network, load_catalog
from service.simulator.logformat import apache_time, escape_field
from service.simulator.useragents import BOT_FAMILIES, BROWSERS, BotKind


@pytest.mark.parametrize("agent", [a for f in BOT_FAMILIES for a in f.agents])
def test_every_bot_agent_is_on_the_maintained_crawler_list(agent: str) -> None:
    assert crawleruseragents.is_crawler(agent)


@pytest.mark.parametrize("agent", [browser.agent for browser in BROWSERS])
def test_no_browser_agent_is_on_the_crawler_list(agent: str) -> None:
    assert not crawleruseragents.is_crawler(agent)
    assert '"' not in agent and "\\" not in agent  # people's agents stay clean


def test_bot_families_cover_every_kind_and_have_usable_ranges() -> None:
    assert {family.kind for family in BOT_FAMILIES} == set(BotKind)
    assert any('"' in agent for family in BOT_FAMILIES for agent in family.agents)
    for family in BOT_FAMILIES:
        for text in (*family.ipv4, *family.ipv6):
            assert ipaddress.ip_network(text).is_global, (family.name, text)
        if family.kind is BotKind.MONITOR:
            assert family.interval_s > 0


def test_mobile_and_desktop_browsers_both_matter() -> None:
    mobile = sum(b.weight for b in BROWSERS if b.mobile)
    total = sum(b.weight for b in BROWSERS)
    assert 0.4 <= mobile / total <= 0.7


def test_quotes_are_escaped_as_apache_does() -> None:
    assert escape_field('python-requests/2.28.1 "probe"') == 'python-requests/2.28.1 \\"probe\\"'
    assert escape_field("a\\b") == "a\\\\b"
    assert escape_field("plain") == "plain"


def test_time_format_is_apache_in_english_and_utc() -> None:
    assert apache_time(1_795_262_399) == "21/Nov/2026:11:59:59 +0000"
    assert apache_time(0) == "01/Jan/1970:00:00:00 +0000"


@pytest.mark.parametrize(
    ("network", "excluded"),
    [
        ("81.2.69.0/24", {"81.2.69.0", "81.2.69.255"}),
        ("81.2.69.160/30", {"81.2.69.160", "81.2.69.163"}),
        ("81.2.69.7/32", set()),
        ("2a02:1234::/32", {"2a02:1234::"}),
    ],
)
def test_drawn_addresses_stay_inside_their_network(network: str, excluded: set[str]) -> None:
    block = ipaddress.ip_network(network)
    parsed = Network.parse(network)
    rng = random.Random(3)
    for _ in range(500):
        text = parsed.draw(rng)
        assert ipaddress.ip_address(text) in block
        assert text not in excluded
        assert text == str(ipaddress.ip_address(text))  # canonical (compressed) spelling


def _catalog(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "cities.json"
    path.write_text(json.dumps(document))
    return path


def _city(**changes: object) -> dict[str, object]:
    city: dict[str, object] = {
        "city": "Seattle",
        "region": "Washington",
        "country": "US",
        "continent": "NA",
        "latitude": 47.6,
        "longitude": -122.3,
        "weight": 3.0,
        "ipv4": ["24.1.0.0/16"],
    }
    city.update(changes)
    return city


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"cities": []}, "lists no cities"),
        ({"cities": [_city(ipv4=[])]}, "has no networks"),
        ({"cities": [_city(weight=0)]}, "weight"),
        ({"cities": [_city(longitude=500)]}, "longitude"),
        ({"cities": [_city(ipv4=["2a02::/32"])]}, "IPv6 network"),
        ({"cities": [_city(ipv4=["not a network"])]}, "not a network"),
        ({"towns": []}, "cities"),
    ],
)
def test_catalog_problems_are_reported_clearly(
    tmp_path: Path, document: object, message: str
) -> None:
    with pytest.raises(CatalogError, match="is not valid") as error:
        load_catalog(_catalog(tmp_path, document))
    assert message in str(error.value)


def test_catalog_that_is_not_json_or_missing(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(broken)
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "absent.json")


def test_catalog_reads_the_documented_schema(tmp_path: Path) -> None:
    document = {
        "source": "s",
        "attribution": "a",
        "cities": [_city(ipv6=["2a02:1234::/32"])],
        "unknown_ipv4": ["100.64.0.0/10"],
        "unknown_ipv6": [],
    }
    catalog = load_catalog(_catalog(tmp_path, document))
    (seattle,) = catalog.cities
    assert (seattle.name, seattle.region, seattle.country, seattle.continent) == (
        "Seattle",
        "Washington",
        "US",
        "NA",
    )
    assert seattle.ipv4 and seattle.ipv6 and seattle.known
    assert catalog.unknown is not None and not catalog.unknown.known
    assert catalog.unknown.name == "Unknown"
