"""`clickstream sql`: ad hoc SQL (DuckDB) over the event archive.

By default the archive is read from its S3 bucket (`CLICKSTREAM_BUCKET`, under
`CLICKSTREAM_ARCHIVE_PREFIX`) through the standard credential chain, or from the local stack
when `clickstream local-aws` runs; it is mirrored into the cache directory first, incrementally
(`service.sql.archive`), and `--since`/`--until` limit the mirror to some days. `--archive DIR`
queries a directory in the archive's layout instead (e.g. a copy made with `aws s3 sync`).

Exit codes: 0 answered; 1 the query failed (DuckDB's message on stderr); 2 unusable arguments
or the archive could not be read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from service.local_stack import use_local_stack_if_running
from service.settings import Settings
from service.sql import engine
from service.sql.archive import mirror_dir, sync_archive
from service.sql.examples import examples

HELP = "run SQL (DuckDB) over the S3 archive of events"

log = logging.getLogger("clickstream.sql")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-11-21, got {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "query", nargs="?",
        help='the SQL, e.g. "SELECT city, count(*) FROM events GROUP BY city"; - reads stdin; '
        "tables: events, rejects",
    )  # fmt: skip
    parser.add_argument(
        "--example", metavar="NAME",
        help="run a shipped example query instead (see --list-examples)",
    )  # fmt: skip
    parser.add_argument(
        "--list-examples", action="store_true", help="list the shipped example queries"
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument(
        "--archive", type=Path, metavar="DIR",
        help="query this directory (events/, rejects/ in the archive's layout) instead of S3",
    )  # fmt: skip
    parser.add_argument(
        "--no-sync", action="store_true",
        help="query the local mirror as it is, without contacting S3",
    )  # fmt: skip
    parser.add_argument("--since", type=_day, metavar="DATE", help="first dt= day to mirror")
    parser.add_argument("--until", type=_day, metavar="DATE", help="last dt= day to mirror")


def _query_text(args: argparse.Namespace) -> str | None:
    if args.example:
        found = examples().get(args.example)
        if found is None:
            names = ", ".join(examples())
            print(
                f"clickstream sql: no example {args.example!r}; there are: {names}", file=sys.stderr
            )
            return None
        return found.sql
    if args.query == "-":
        return sys.stdin.read()
    if not args.query:
        print("clickstream sql: give a query, --example NAME or --list-examples", file=sys.stderr)
        return None
    return str(args.query)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.list_examples:
        for example in examples().values():
            print(f"{example.name:<16} {example.title}")
        return 0
    sql = _query_text(args)
    if sql is None:
        return 2
    if args.archive is not None:
        root = args.archive
        if not root.is_dir():
            print(f"clickstream sql: {root} is not a directory", file=sys.stderr)
            return 2
    else:
        root = mirror_dir(settings.cache_dir, settings.bucket, settings.archive_prefix)
        if not args.no_sync:
            use_local_stack_if_running(settings.state_dir)
            try:
                report = sync_archive(
                    settings.bucket,
                    settings.archive_prefix,
                    root,
                    since=args.since,
                    until=args.until,
                )
            except (BotoCoreError, ClientError, OSError) as exc:
                print(
                    f"clickstream sql: cannot read s3://{settings.bucket}: {exc}", file=sys.stderr
                )
                return 2
            log.info("archive s3://%s mirrored in %s: %s", settings.bucket, root, report.describe())
    try:
        result = engine.run(engine.connect(root), sql)
    except engine.QueryError as exc:
        print(f"clickstream sql: {exc}", file=sys.stderr)
        return 1
    print(engine.render(result, args.format))
    return 0
