"""The geo database is reloaded when its file changes, cheaply, and a bad file changes nothing."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from consumers.geo.locator import GeoDatabaseError, Location
from consumers.geo.reloading import ReloadingGeoLocator

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
