"""The geo database is reloaded when its file changes, cheaply, and a bad file changes nothing."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from consumers.geo import reloading
from consumers.geo.locator import (
    UNKNOWN_LOCATION,
    GeoDatabaseError,
    GeoLocator,
    Location,
    city_catalog_path,
)
from consumers.geo.reloading import _MIXED_BLOCKS, _MIXED_V6_BLOCKS, ReloadingGeoLocator

ADDRESS = "81.2.69.160"
LONDON = Location("London", "England", "GB", "EU")
PARIS = Location("Paris", "Ile-de-France", "FR", "EU")


def _record(location: Location) -> dict[str, Any]:
    return {
        "city": {"names": {"en": location.city}},
        "subdivisions": [{"names": {"en": location.region}}],
        "country": {"iso_code": location.country},
        "continent": {"code": location.continent},
    }


def _write(path: Path, location: Location, database_type: str = "GeoLite2-City") -> None:
    """Write a new file and rename it into place, as geoipupdate does."""
    writer = MMDBWriter(ip_version=4, database_type=database_type, description="t")
    writer.insert_network(IPSet(["81.2.69.0/24"]), _record(location))
    partial = path.with_name(path.name + ".new")
    writer.to_db_file(str(partial))
    os.replace(partial, path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "city.mmdb"
    _write(path, LONDON)
    return path


def test_a_replaced_file_is_picked_up_at_the_next_check(database: Path, clock: Clock) -> None:
    with ReloadingGeoLocator(database, check_interval_s=30, clock=clock) as geo:
        assert geo.lookup(ADDRESS) == LONDON
        _write(database, PARIS)
        clock.now += 29
        assert geo.lookup(ADDRESS) == LONDON  # not looked at yet: checks are rate-limited
        clock.now += 1
        assert geo.lookup(ADDRESS) == PARIS  # the cached London answer went with the old reader
        assert geo.reloads == 1


def test_an_unchanged_file_is_not_reopened(database: Path, clock: Clock) -> None:
    with ReloadingGeoLocator(database, check_interval_s=1, clock=clock) as geo:
        locator = geo.locator
        for _ in range(5):
            clock.now += 2
            assert not geo.check()
        assert geo.locator is locator
        assert geo.reloads == 0


def test_a_swap_clears_the_cache_and_retires_the_old_reader(database: Path, clock: Clock) -> None:
    with ReloadingGeoLocator(database, check_interval_s=1, clock=clock) as geo:
        geo.lookup(ADDRESS)
        old = geo.locator
        _write(database, PARIS)
        assert geo.check()
        assert geo.cache_info().currsize == 0
        assert old.lookup(ADDRESS) == LONDON  # still open for a lookup already under way
        assert not geo.check()
        assert old.cache_info().currsize == 0  # closed one check later


@pytest.mark.parametrize("damage", ["garbage", "country database", "missing"])
def test_a_bad_new_file_keeps_the_old_database_and_warns_once(
    damage: str, database: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with ReloadingGeoLocator(database, check_interval_s=1, clock=clock) as geo:
        if damage == "garbage":
            partial = database.with_name("partial")
            partial.write_bytes(b"<html>not a database</html>")
            os.replace(partial, database)
        elif damage == "country database":
            _write(database, PARIS, database_type="GeoLite2-Country")
        else:
            database.unlink()
        with caplog.at_level(logging.WARNING, logger="consumers.geo.reloading"):
            for _ in range(3):
                clock.now += 1
                assert geo.lookup(ADDRESS) == LONDON
        assert len(caplog.records) == 1
        assert str(database) in caplog.records[0].getMessage()
        # Once a good file is back, it is loaded.
        _write(database, PARIS)
        clock.now += 1
        assert geo.lookup(ADDRESS) == PARIS


def test_a_missing_file_at_startup_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GeoDatabaseError):
        ReloadingGeoLocator(tmp_path / "absent.mmdb")


def test_the_embedded_database_is_the_default() -> None:
    with ReloadingGeoLocator() as geo:
        assert "City" in geo.database_type
        assert geo.lookup("10.0.0.1").city == "Unknown"


# ---------------------------------------------------------------- caches never change an answer


def _catalog_addresses(rng: random.Random) -> list[str]:
    catalog = json.loads(city_catalog_path().read_text(encoding="utf-8"))
    networks = [n for city in catalog["cities"] for n in (*city["ipv4"], *city.get("ipv6", ()))]
    networks += [*catalog.get("unknown_ipv4", ()), *catalog.get("unknown_ipv6", ())]
    addresses = []
    for text in networks:
        network = ipaddress.ip_network(text)
        for _ in range(3):
            addresses.append(str(network[rng.randrange(network.num_addresses)]))
    return addresses


def test_every_answer_is_the_locators_own() -> None:
    """Over the embedded database: catalog networks, the whole IPv4 space, and odd spellings."""
    rng = random.Random(11)
    addresses = _catalog_addresses(rng)
    addresses += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(20_000)]
    addresses += [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(5_000)]
    addresses += [
        str(ipaddress.IPv6Address(0x2 << 124 | rng.getrandbits(124))) for _ in range(5000)
    ]
    # Neighbours in the same block, which the database may split.
    addresses += [f"{a.rpartition('.')[0]}.{rng.randrange(256)}" for a in addresses if "." in a]
    addresses += [
        str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(a)) ^ rng.getrandbits(80)))
        for a in addresses
        if ":" in a
    ]
    # Blocks in which Python's `is_global` varies, and odd spellings.
    addresses += ["::1", "::", "::2", "::ffff:1.2.3.4", "64:ff9b::1", "64:ff9b::1:0:0:1", "100::1"]
    addresses += ["100::1:0:0:1", "2001:1::1", "2001:1::4", "2001:4:112::1", "fe80::1%eth0"]
    addresses += ["2001:DB8::1", "2001:0db8::1", "2600:1f18::1:2:3:4:5:6", "2600:1f18::zz"]
    addresses += [f"192.0.0.{i}" for i in range(0, 256, 3)] + ["255.255.255.255", "255.255.255.1"]
    addresses += ["1.2.3.999", "01.2.3.4", "1.2.3.04", " 23.78.129.5", "::ffff:23.78.129.5"]
    addresses += ["23.78.129.", ".5", "1.2.3.-1", "", "x.y.z.1", "2001:db8::1.2.3.4"]
    rng.shuffle(addresses)
    with GeoLocator() as plain, ReloadingGeoLocator() as cached:
        for _ in range(2):  # the second round is answered from the caches
            wrong = [a for a in addresses if cached.lookup(a) != plain.lookup(a)]
            assert wrong == []
        assert cached.blocks_cached > 100
        assert any(isinstance(block, int) for block in cached._db.blocks)
        for odd in (None, 42, ["1.2.3.4"]):
            assert cached.lookup(odd) == UNKNOWN_LOCATION  # type: ignore[arg-type]


def test_a_block_shared_by_two_database_networks_is_looked_up_per_address(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "split.mmdb"
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City", description="t")
    writer.insert_network(IPSet(["81.2.69.0/25"]), _record(LONDON))
    writer.insert_network(IPSet(["81.2.69.128/25"]), _record(PARIS))
    writer.insert_network(IPSet(["81.2.70.0/23"]), _record(PARIS))
    writer.to_db_file(str(path))
    with ReloadingGeoLocator(path, clock=clock) as geo:
        for _ in range(2):
            assert geo.lookup("81.2.69.1") == LONDON
            assert geo.lookup("81.2.69.200") == PARIS
            assert geo.lookup("81.2.69.100") == LONDON
            assert geo.lookup("81.2.70.9") == PARIS
            assert geo.lookup("81.2.71.9") == PARIS
        assert geo.blocks_cached == 2  # 81.2.70 and 81.2.71, not the split 81.2.69


def test_python_special_ranges_smaller_than_a_block_lie_in_the_mixed_blocks() -> None:
    """The block cache skips /24s whose addresses differ in `is_global`; this is the list."""
    special = list(ipaddress._IPv4Constants._private_networks)  # type: ignore[attr-defined]
    special += getattr(ipaddress._IPv4Constants, "_private_networks_exceptions", [])
    for network in special:
        if network.prefixlen > 24:
            assert str(network.network_address).rpartition(".")[0] in _MIXED_BLOCKS
    special = list(ipaddress._IPv6Constants._private_networks)  # type: ignore[attr-defined]
    special += getattr(ipaddress._IPv6Constants, "_private_networks_exceptions", [])
    for network in special:
        if network.prefixlen > 48:
            assert int(network.network_address) >> 80 in _MIXED_V6_BLOCKS


def test_the_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reloading, "ADDRESS_MEMO_LIMIT", 100)
    monkeypatch.setattr(reloading, "BLOCK_CACHE_LIMIT", 10)
    with ReloadingGeoLocator() as geo:
        for i in range(1000):
            geo.lookup(f"23.{i % 200}.{i // 200}.7")
        assert len(geo._db.addresses) <= 100
        assert len(geo._db.blocks) <= 10
