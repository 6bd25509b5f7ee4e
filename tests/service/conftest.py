"""Fixtures for the simulator tests: a small city catalog with its own geo database, and runs.

The test catalog is independent of the shipped one (consumers/geo/data/), so the simulator's
tests run before and regardless of that data; the tests that need the shipped catalog and
database skip, saying why, while those files are absent. Its networks are arbitrary global
unicast blocks: what matters is that the test database maps them to the catalog's cities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.cli import main as clickstream

# name, region, country, continent, latitude, longitude, weight
TEST_CITIES: tuple[tuple[str, str, str, str, float, float, float], ...] = (
    ("Seattle", "Washington", "US", "NA", 47.61, -122.33, 3.0),
    ("Portland", "Oregon", "US", "NA", 45.52, -122.68, 1.5),
    ("San Francisco", "California", "US", "NA", 37.77, -122.42, 2.5),
    ("Los Angeles", "California", "US", "NA", 34.05, -118.24, 3.0),
    ("Denver", "Colorado", "US", "NA", 39.74, -104.99, 1.2),
    ("Chicago", "Illinois", "US", "NA", 41.88, -87.63, 2.5),
    ("Dallas", "Texas", "US", "NA", 32.78, -96.80, 1.8),
    ("Atlanta", "Georgia", "US", "NA", 33.75, -84.39, 1.5),
    ("New York", "New York", "US", "NA", 40.71, -74.01, 4.0),
    ("Boston", "Massachusetts", "US", "NA", 42.36, -71.06, 1.5),
    ("Miami", "Florida", "US", "NA", 25.76, -80.19, 1.5),
    ("Portland", "Maine", "US", "NA", 43.66, -70.26, 0.5),
    ("Toronto", "Ontario", "CA", "NA", 43.65, -79.38, 2.0),
    ("Vancouver", "British Columbia", "CA", "NA", 49.28, -123.12, 1.2),
    ("Montreal", "Quebec", "CA", "NA", 45.50, -73.57, 1.2),
    ("Mexico City", "Mexico City", "MX", "NA", 19.43, -99.13, 1.5),
    ("Sao Paulo", "Sao Paulo", "BR", "SA", -23.55, -46.63, 2.0),
    ("Rio de Janeiro", "Rio de Janeiro", "BR", "SA", -22.91, -43.17, 1.0),
    ("Buenos Aires", "Buenos Aires F.D.", "AR", "SA", -34.60, -58.38, 1.0),
    ("Santiago", "Santiago Metropolitan", "CL", "SA", -33.45, -70.67, 0.6),
    ("Bogota", "Bogota D.C.", "CO", "SA", 4.71, -74.07, 0.6),
    ("Lima", "Lima", "PE", "SA", -12.05, -77.04, 0.5),
    ("London", "England", "GB", "EU", 51.51, -0.13, 3.5),
    ("Manchester", "England", "GB", "EU", 53.48, -2.24, 1.0),
    ("Dublin", "Leinster", "IE", "EU", 53.35, -6.26, 1.0),
    ("Paris", "Ile-de-France", "FR", "EU", 48.86, 2.35, 2.5),
    ("Berlin", "Berlin", "DE", "EU", 52.52, 13.40, 2.0),
    ("Munich", "Bavaria", "DE", "EU", 48.14, 11.58, 1.0),
    ("Madrid", "Madrid", "ES", "EU", 40.42, -3.70, 1.5),
    ("Barcelona", "Catalonia", "ES", "EU", 41.39, 2.17, 1.0),
    ("Rome", "Lazio", "IT", "EU", 41.90, 12.50, 1.2),
    ("Milan", "Lombardy", "IT", "EU", 45.46, 9.19, 1.0),
    ("Amsterdam", "North Holland", "NL", "EU", 52.37, 4.90, 1.2),
    ("Stockholm", "Stockholm", "SE", "EU", 59.33, 18.07, 0.8),
    ("Warsaw", "Mazovia", "PL", "EU", 52.23, 21.01, 0.8),
    ("Vienna", "Vienna", "AT", "EU", 48.21, 16.37, 0.6),
    ("Lisbon", "Lisbon", "PT", "EU", 38.72, -9.14, 0.6),
    ("Tokyo", "Tokyo", "JP", "AS", 35.68, 139.69, 3.0),
    ("Osaka", "Osaka", "JP", "AS", 34.69, 135.50, 1.0),
    ("Seoul", "Seoul", "KR", "AS", 37.57, 126.98, 1.5),
    ("Singapore", "Central Singapore", "SG", "AS", 1.35, 103.82, 1.2),
    ("Mumbai", "Maharashtra", "IN", "AS", 19.08, 72.88, 2.0),
    ("Bengaluru", "Karnataka", "IN", "AS", 12.97, 77.59, 1.5),
    ("Hong Kong", "Central and Western", "HK", "AS", 22.32, 114.17, 1.0),
    ("Bangkok", "Bangkok", "TH", "AS", 13.76, 100.50, 0.8),
    ("Jakarta", "Jakarta", "ID", "AS", -6.21, 106.85, 0.8),
    ("Dubai", "Dubai", "AE", "AS", 25.20, 55.27, 0.8),
    ("Tel Aviv", "Tel Aviv", "IL", "AS", 32.09, 34.78, 0.5),
    ("Lagos", "Lagos", "NG", "AF", 6.52, 3.38, 0.8),
    ("Nairobi", "Nairobi County", "KE", "AF", -1.29, 36.82, 0.6),
    ("Cape Town", "Western Cape", "ZA", "AF", -33.92, 18.42, 0.6),
    ("Johannesburg", "Gauteng", "ZA", "AF", -26.20, 28.05, 0.6),
    ("Cairo", "Cairo", "EG", "AF", 30.04, 31.24, 0.6),
    ("Casablanca", "Casablanca-Settat", "MA", "AF", 33.57, -7.59, 0.4),
    ("Sydney", "New South Wales", "AU", "OC", -33.87, 151.21, 1.5),
    ("Melbourne", "Victoria", "AU", "OC", -37.81, 144.96, 1.2),
    ("Auckland", "Auckland", "NZ", "OC", -36.85, 174.76, 0.6),
)

END = "2026-11-21T12:00:00Z"
SHIPPED_DATA = Path(__file__).resolve().parents[2] / "consumers" / "geo" / "data"
SHIPPED_CATALOG = SHIPPED_DATA / "cities.json"
SHIPPED_DATABASE = SHIPPED_DATA / "dbip-city-sample.mmdb"


def catalog_document() -> dict[str, Any]:
    """The test catalog in the documented cities.json schema."""
    cities = []
    for index, (name, region, country, continent, lat, lon, weight) in enumerate(TEST_CITIES):
        cities.append(
            {
                "city": name,
                "region": region,
                "country": country,
                "continent": continent,
                "latitude": lat,
                "longitude": lon,
                "weight": weight,
                "ipv4": [f"{24 + index}.{index * 41 % 256}.0.0/16", f"{24 + index}.200.7.0/24"],
                # A few cities without IPv6, as in real data.
                "ipv6": [] if index % 5 == 4 else [f"2a02:{0x1000 + index:x}::/32"],
            }
        )
    return {
        "source": "simulator tests",
        "attribution": "invented networks for tests",
        "cities": cities,
        "unknown_ipv4": ["100.64.0.0/10"],
        "unknown_ipv6": ["fd00:cafe::/32"],
    }


def build_database(document: dict[str, Any], path: Path) -> None:
    """A GeoIP2-City-schema database mapping each catalog city's networks to that city."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    for city in document["cities"]:
        writer.insert_network(
            IPSet(city["ipv4"] + city["ipv6"]),
            {
                "city": {"names": {"en": city["city"]}},
                "subdivisions": [{"names": {"en": city["region"]}}],
                "country": {"iso_code": city["country"]},
                "continent": {"code": city["continent"]},
                "location": {"latitude": city["latitude"], "longitude": city["longitude"]},
            },
        )
    writer.to_db_file(str(path))


@dataclass(frozen=True)
class Geo:
    catalog: Path
    database: Path


@dataclass(frozen=True)
class Run:
    """A finished `clickstream simulate` bulk run."""

    log: Path
    truth_path: Path
    geo: Geo
    lines: int

    @property
    def truth(self) -> dict[str, Any]:
        return json.loads(self.truth_path.read_text())


@pytest.fixture(scope="session")
def test_geo(tmp_path_factory: pytest.TempPathFactory) -> Geo:
    folder = tmp_path_factory.mktemp("geo")
    document = catalog_document()
    catalog = folder / "cities.json"
    catalog.write_text(json.dumps(document))
    database = folder / "cities.mmdb"
    build_database(document, database)
    return Geo(catalog, database)


@pytest.fixture(scope="session")
def shipped_geo() -> Geo:
    missing = [path for path in (SHIPPED_CATALOG, SHIPPED_DATABASE) if not path.is_file()]
    if missing:
        pytest.skip(
            "the shipped geo data is not there yet: "
            + ", ".join(str(p.relative_to(SHIPPED_DATA.parents[2])) for p in missing)
        )
    return Geo(SHIPPED_CATALOG, SHIPPED_DATABASE)


def simulate(
    folder: Path, geo: Geo, *extra: str, lines: int, seed: int = 1, name: str = "access"
) -> Run:
    """Run `clickstream simulate` in bulk mode in-process; the shipped catalog is the default."""
    log, truth = folder / f"{name}.log", folder / f"{name}.json"
    argv = ["simulate", "--lines", str(lines), "--seed", str(seed), "--end", END]
    argv += ["--out", str(log), "--truth", str(truth), "--no-progress", *extra]
    if geo.catalog != SHIPPED_CATALOG:
        argv += ["--catalog", str(geo.catalog)]
    assert clickstream(argv) == 0
    return Run(log, truth, geo, lines)


@pytest.fixture(scope="session")
def run_100k(tmp_path_factory: pytest.TempPathFactory, test_geo: Geo) -> Run:
    """The acceptance run (100,000 lines, seed 1) on the test catalog; shared by several tests."""
    return simulate(tmp_path_factory.mktemp("run_100k"), test_geo, lines=100_000)


@pytest.fixture(scope="session")
def shipped_run_100k(tmp_path_factory: pytest.TempPathFactory, shipped_geo: Geo) -> Run:
    """The acceptance run on the shipped catalog, the one the demo and the pipeline use."""
    return simulate(tmp_path_factory.mktemp("shipped_100k"), shipped_geo, lines=100_000)
