"""IP address -> city, region, country, continent, from a GeoIP2-City-schema `.mmdb` file.

The same code reads MaxMind's GeoIP2/GeoLite2-City (production, kept fresh by `geoipupdate`) and
the DB-IP City Lite conversion the project ships (DESIGN.md §6), so nothing downstream knows which
one is in use. Every address gets a `Location`: addresses the database cannot place (private,
loopback, malformed, absent) get `UNKNOWN_LOCATION`, because the pipeline counts such visitors
under "Unknown" rather than dropping them or failing the batch.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geoip2.database
import maxminddb

UNKNOWN = "Unknown"
ATTRIBUTION = "IP geolocation by DB-IP (https://db-ip.com), CC BY 4.0"
DEFAULT_CACHE_SIZE = 65_536

DATA_DIR = Path(__file__).resolve().parent / "data"
EMBEDDED_DATABASE_NAME = "dbip-city-sample.mmdb"
CITY_CATALOG_NAME = "cities.json"
FULL_DATABASE_NAME = "dbip-city-full.mmdb"  # `clickstream geoip build --full`, in the cache dir
LICENSE_NAME = "LICENSE-DBIP.txt"


@dataclass(frozen=True, slots=True)
class Location:
    """Where an address is, as the dashboards group it.

    region is the largest subdivision (a US state, an English region), the level the café's
    "regions visiting most" chart uses; country and continent are codes so they never change
    with a database's spelling.
    """

    city: str
    region: str
    country: str
    continent: str
    latitude: float | None = None
    longitude: float | None = None

    @property
    def is_known(self) -> bool:
        return self.country != UNKNOWN


UNKNOWN_LOCATION = Location(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)


class GeoDatabaseError(Exception):
    """The file cannot serve city lookups; the message says which file and why."""


def default_database_path() -> Path:
    """The DB-IP sample shipped inside the package: works offline, with no licence key."""
    return DATA_DIR / EMBEDDED_DATABASE_NAME


def city_catalog_path() -> Path:
    """The simulator's city catalog, generated together with the embedded database."""
    return DATA_DIR / CITY_CATALOG_NAME


def is_embedded(path: Path | str) -> bool:
    try:
        return Path(path).resolve() == default_database_path().resolve()
    except OSError:
        return False


def open_city_reader(path: Path | str) -> geoip2.database.Reader:
    """Open `path` as a City database, or raise `GeoDatabaseError` with a readable reason.

    Checked up front so a wrong file (a Country or ASN database, a download that is HTML) fails
    at startup with its name, not later as a TypeError on the first lookup.
    """
    try:
        reader = geoip2.database.Reader(str(path), mode=maxminddb.MODE_AUTO)
    except FileNotFoundError:
        raise GeoDatabaseError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GeoDatabaseError(f"{path}: is a directory, not an .mmdb file") from None
    except PermissionError:
        raise GeoDatabaseError(f"{path}: permission denied") from None
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoDatabaseError(f"{path}: not a MaxMind DB (.mmdb) file ({exc})") from None
    database_type = reader.metadata().database_type
    if "City" not in database_type:
        reader.close()
        raise GeoDatabaseError(
            f"{path}: is a {database_type!r} database; a City database is needed "
            "(GeoIP2-City, GeoLite2-City or DB-IP City)"
        )
    return reader


def describe_database(path: Path | str) -> dict[str, Any]:
    """What an operator needs to tell databases apart: type, age, size, and whether it is ours."""
    reader = open_city_reader(path)
    try:
        meta = reader.metadata()
    finally:
        reader.close()
    description = meta.description.get("en") if isinstance(meta.description, dict) else None
    built = datetime.fromtimestamp(meta.build_epoch, tz=UTC)
    return {
        "path": str(Path(path).resolve()),
        "embedded": is_embedded(path),
        "database_type": meta.database_type,
        "description": description or "",
        "build_epoch": meta.build_epoch,
        "build_date": built.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "ip_version": meta.ip_version,
        "node_count": meta.node_count,
        "record_size": meta.record_size,
        "languages": list(meta.languages),
        "size_bytes": Path(path).stat().st_size,
    }


class GeoLocator:
    """Looks addresses up in one City database, with an LRU cache in front.

    Visitors come back many times within a session, so most lookups are cache hits; the cache
    is per locator, so a reloaded database starts with a fresh one.
    """

    def __init__(
        self, path: Path | str | None = None, *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.path = Path(path) if path is not None else default_database_path()
        self._reader = open_city_reader(self.path)
        # The same file read raw for lookups: building geoip2's model objects for each new
        # address cost more than the rest of the lookup (see `_lookup_uncached`).
        try:
            self._records = maxminddb.open_database(str(self.path), maxminddb.MODE_AUTO)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            self._reader.close()
            raise GeoDatabaseError(f"{self.path}: {exc}") from None
        self._cached_lookup = functools.lru_cache(maxsize=cache_size)(self._lookup_uncached)

    @property
    def database_type(self) -> str:
        return self._reader.metadata().database_type

    def lookup(self, ip: str) -> Location:
        """Never raises for any input: a bad address is a visitor we cannot place, not a crash."""
        if not isinstance(ip, str):
            return UNKNOWN_LOCATION
        return self._cached_lookup(ip)

    def cache_info(self) -> functools._CacheInfo:
        return self._cached_lookup.cache_info()

    def close(self) -> None:
        self._cached_lookup.cache_clear()
        self._reader.close()
        self._records.close()

    def __enter__(self) -> GeoLocator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _lookup_uncached(self, ip: str) -> Location:
        try:
            address = ipaddress.ip_address(ip.strip())
        except ValueError:
            return UNKNOWN_LOCATION
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is how dual-stack servers log IPv4 clients; look up the IPv4 address.
            address = address.ipv4_mapped
        if not address.is_global:
            return UNKNOWN_LOCATION
        try:
            record = self._records.get(address)
        except ValueError:
            # An IPv6 address asked of an IPv4-only database.
            return UNKNOWN_LOCATION
        if record is None:
            return UNKNOWN_LOCATION
        if not isinstance(record, dict):
            raise maxminddb.InvalidDatabaseError(f"expected a dict record, got {type(record)}")
        return _location(record)


def _location(record: dict[str, Any]) -> Location:
    """The `Location` of a raw City record: what geoip2's `City` model would give with the
    English locale (`name` is `names["en"]` when present), without building the model (measured:
    the model objects were ~2/3 of an uncached lookup)."""
    subdivisions = record.get("subdivisions")
    location = record.get("location") or {}
    return Location(
        city=_english_name(record.get("city")) or UNKNOWN,
        region=(_english_name(subdivisions[0]) if subdivisions else None) or UNKNOWN,
        country=(record.get("country") or {}).get("iso_code") or UNKNOWN,
        continent=(record.get("continent") or {}).get("code") or UNKNOWN,
        latitude=location.get("latitude"),
        longitude=location.get("longitude"),
    )


def _english_name(place: dict[str, Any] | None) -> str | None:
    if not place:
        return None
    names = place.get("names")
    return names.get("en") if names else None
