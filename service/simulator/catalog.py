"""The city catalog: which real networks belong to which city.

The simulator draws client addresses from these networks so that the project's geo database
resolves each address to the city the simulator meant; the truth's city, region and country
strings are copied from here and equal what geoip2 returns for those addresses. The catalog is
produced together with the embedded database (consumers/geo/data/), so the two cannot drift.
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What the geo module reports for an address it cannot place (city, region, country and
# continent alike); the truth must use the very same words.
from consumers.geo.locator import UNKNOWN, city_catalog_path


class CatalogError(Exception):
    """The catalog file is missing or does not have the documented shape."""


def default_catalog_path() -> Path:
    """The catalog shipped next to the embedded geo database."""
    return city_catalog_path()


@dataclass(frozen=True, slots=True)
class Network:
    """A block of host addresses, kept as integers so drawing one is a single random call."""

    version: int
    first: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Network:
        net = ipaddress.ip_network(text, strict=False)
        size = net.num_addresses
        base = int(net.network_address)
        if net.version == 4 and size >= 4:
            # Skip the network and broadcast addresses, as real clients never have them.
            return cls(4, base + 1, size - 2)
        if net.version == 6 and size >= 2:
            return cls(6, base + 1, size - 1)  # ::0 of a subnet is the router anycast address
        return cls(net.version, base, size)

    def draw(self, rng: random.Random) -> str:
        value = self.first + rng.randrange(self.count)
        if self.version == 4:
            return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
        return str(ipaddress.IPv6Address(value))  # compressed form, as Apache logs it


def draw_address(rng: random.Random, networks: tuple[Network, ...]) -> str:
    return networks[rng.randrange(len(networks))].draw(rng)


@dataclass(frozen=True, slots=True)
class City:
    """A place visitors come from; `known` is False for the pseudo-city of unplaceable addresses."""

    name: str
    region: str
    country: str
    continent: str
    latitude: float
    longitude: float
    weight: float
    ipv4: tuple[Network, ...]
    ipv6: tuple[Network, ...]
    known: bool = True

    @property
    def utc_offset_hours(self) -> float:
        """Local solar time: close enough to civil time for a daily rhythm, and needs no tz data."""
        return self.longitude / 15.0


@dataclass(frozen=True, slots=True)
class Catalog:
    cities: tuple[City, ...]
    unknown: City | None  # None when the catalog lists no unknown ranges
    source: str
    attribution: str


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate the catalog; every problem becomes one readable `CatalogError`."""
    path = path or default_catalog_path()
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CatalogError(f"city catalog {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise CatalogError(f"cannot read city catalog {path}: {exc}") from None
    try:
        return _build(document)
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"city catalog {path} is not valid: {exc}") from None


def _networks(entry: dict[str, Any], key: str, version: int) -> tuple[Network, ...]:
    networks = tuple(Network.parse(text) for text in entry.get(key) or ())
    for network in networks:
        if network.version != version:
            raise ValueError(f"{key} lists an IPv{network.version} network")
    return networks


def _build(document: dict[str, Any]) -> Catalog:
    cities = []
    for number, entry in enumerate(document["cities"]):
        label = f"cities[{number}]"
        ipv4, ipv6 = _networks(entry, "ipv4", 4), _networks(entry, "ipv6", 6)
        if not ipv4 and not ipv6:
            raise ValueError(f"{label} ({entry.get('city')!r}) has no networks")
        weight = float(entry.get("weight", 1.0))
        if not weight > 0:
            raise ValueError(f"{label} has weight {weight}; it must be positive")
        longitude = float(entry["longitude"])
        if not -180.0 <= longitude <= 180.0:
            raise ValueError(f"{label} has longitude {longitude}")
        cities.append(
            City(
                name=str(entry["city"]),
                region=str(entry["region"]),
                country=str(entry["country"]),
                continent=str(entry["continent"]),
                latitude=float(entry["latitude"]),
                longitude=longitude,
                weight=weight,
                ipv4=ipv4,
                ipv6=ipv6,
            )
        )
    if not cities:
        raise ValueError("it lists no cities")
    unknown_v4 = _networks(document, "unknown_ipv4", 4)
    unknown_v6 = _networks(document, "unknown_ipv6", 6)
    unknown = None
    if unknown_v4 or unknown_v6:
        unknown = City(
            UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, 0.0, 0.0, 0.0, unknown_v4, unknown_v6, False
        )
    return Catalog(
        cities=tuple(cities),
        unknown=unknown,
        source=str(document.get("source", "")),
        attribution=str(document.get("attribution", "")),
    )
