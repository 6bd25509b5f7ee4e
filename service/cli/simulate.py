"""`clickstream simulate`: café web traffic in Apache combined format, with its ground truth.

Bulk mode (`--lines N`) writes exactly N lines spread over `--span` ending at `--end`, as fast as
possible; the same seed, end and span give a byte-identical file. Real-time mode (`--rate R`)
appends R lines a second stamped with the current time until `--lines` are written or it is
stopped (SIGINT/SIGTERM), optionally rotating the file so the agent's rotation handling can be
exercised. `--truth` writes what the pipeline should count, computed independently of the log
text (see service.simulator.truth for the counting rules).
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from service.cli.arguments import positive_float, positive_int, share
from service.settings import Settings
from service.simulator.bulk import write_bulk
from service.simulator.catalog import Catalog, CatalogError, load_catalog
from service.simulator.engine import (
    DEFAULT_MALFORMED_SHARE,
    bulk_engine,
    measure_sessions,
    steady_engine,
)
from service.simulator.realtime import RotatingLog, run_realtime
from service.simulator.truth import GroundTruth

HELP = "write simulated café access_log traffic"

log = logging.getLogger("clickstream.simulate")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SPAN = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
DEFAULT_SPAN_S = 6 * 3600


class UsageError(Exception):
    """Arguments that parse one by one but do not make sense together."""


def parse_span(text: str) -> int:
    """A duration in seconds: `6h`, `90m`, `1h30m`, `45s` or a plain number of seconds."""
    text = text.strip()
    match = _SPAN.match(text)
    if text.isdigit():
        seconds = int(text)
    elif match and any(match.groups()):
        hours, minutes, secs = (int(group or 0) for group in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise argparse.ArgumentTypeError(f"expected a duration like 6h, 90m or 3600, got {text!r}")
    if seconds < 1:
        raise argparse.ArgumentTypeError("must be at least one second")
    return seconds


def parse_end(text: str) -> int:
    """An ISO 8601 moment as epoch milliseconds; a time without a zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time like 2026-11-21T12:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}, in Apache combined format: exactly N lines over a time window (bulk, "
        "byte-identical for a seed and end) or R lines a second in real time, optionally with "
        "the ground truth the pipeline must report."
    )
    volume = parser.add_argument_group("how much")
    volume.add_argument(
        "--lines",
        type=positive_int,
        metavar="N",
        help="bulk: write exactly N lines; with --rate: stop after N lines",
    )
    volume.add_argument(
        "--rate",
        type=positive_float,
        metavar="R",
        help="real time: R lines a second, appended to --out until --lines or SIGINT/SIGTERM",
    )
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the access log")
    parser.add_argument(
        "--truth", type=Path, metavar="FILE.json", help="also write the ground truth here"
    )
    parser.add_argument(
        "--malformed-share",
        type=share(0.5),
        default=DEFAULT_MALFORMED_SHARE,
        metavar="F",
        help=f"share of malformed lines (default {DEFAULT_MALFORMED_SHARE})",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        metavar="FILE",
        help="city catalog (default: the one shipped with the geo database)",
    )
    bulk = parser.add_argument_group("bulk mode")
    bulk.add_argument(
        "--end",
        type=parse_end,
        metavar="TIME",
        help="ISO 8601 time of the last line's window end (default: now)",
    )
    bulk.add_argument(
        "--span",
        type=parse_span,
        metavar="DURATION",
        help="how long the timestamps span: 6h, 90m, 1h30m or seconds (default 6h)",
    )
    bulk.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)"
    )
    live = parser.add_argument_group("real-time mode")
    live.add_argument(
        "--rotate-every", type=positive_int, metavar="K", help="rotate the file every K lines"
    )
    live.add_argument(
        "--rotate-mode",
        choices=("create", "copytruncate"),
        default="create",
        help="rename and create a new file (default), or copy and truncate in place",
    )
    live.add_argument(
        "--rotate-keep",
        type=positive_int,
        default=3,
        metavar="K",
        help="rotated files kept: FILE.1 .. FILE.K (default 3)",
    )


def _check(args: argparse.Namespace) -> None:
    if args.lines is None and args.rate is None:
        raise UsageError("give --lines N (bulk) or --rate R (real time)")
    if args.rate is not None:
        if args.end is not None or args.span is not None:
            raise UsageError("--end and --span are for bulk mode; real time uses the clock")
    elif args.rotate_every is not None:
        raise UsageError("--rotate-every is for real-time mode (--rate)")
    for option, path in (("--out", args.out), ("--truth", args.truth)):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{option}: directory {path.parent} does not exist")
        if path is not None and path.is_dir():
            raise UsageError(f"{option}: {path} is a directory")
    if args.truth is not None and args.truth.resolve() == args.out.resolve():
        raise UsageError("--truth and --out must be different files")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        _check(args)
        catalog = load_catalog(args.catalog)
    except UsageError as exc:
        print(f"clickstream simulate: error: {exc}", file=sys.stderr)
        return 2
    except CatalogError as exc:
        hint = "" if args.catalog else " (pass --catalog FILE, or add the shipped geo data)"
        print(f"clickstream simulate: error: {exc}{hint}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    facts: dict[str, Any] = {"seed": args.seed, "malformed_share": args.malformed_share}
    if args.rate is None:
        return _bulk(args, catalog, rng, facts)
    return _realtime(args, catalog, rng, facts)


def _bulk(
    args: argparse.Namespace, catalog: Catalog, rng: random.Random, facts: dict[str, Any]
) -> int:
    end_ms = args.end if args.end is not None else int(time.time()) * 1000
    span_s = args.span or DEFAULT_SPAN_S
    start_ms = end_ms - span_s * 1000
    facts.update(mode="bulk", start=_iso_ms(start_ms), end=_iso_ms(end_ms), span_seconds=span_s)
    engine = bulk_engine(
        rng,
        catalog,
        lines=args.lines,
        start_ms=start_ms,
        end_ms=end_ms,
        malformed_share=args.malformed_share,
    )
    truth = GroundTruth(**facts)
    began = time.monotonic()
    try:
        write_bulk(
            args.out, engine, args.lines, truth, progress=False if args.no_progress else None
        )
    except OSError as exc:
        print(f"clickstream simulate: error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - began
    if args.truth is not None:
        truth.write(args.truth)
    log.info(
        "wrote %d lines to %s in %.1f s (%.0f lines/s)",
        args.lines,
        args.out,
        elapsed,
        args.lines / max(elapsed, 1e-9),
    )
    return 0


def _realtime(
    args: argparse.Namespace, catalog: Catalog, rng: random.Random, facts: dict[str, Any]
) -> int:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    measure_sessions()  # the slow part of setting up, done before the clock starts
    start_ms = int(time.time() * 1000)
    facts.update(mode="rate", rate=args.rate, start=_iso_ms(start_ms))
    engine = steady_engine(
        rng, catalog, rate=args.rate, start_ms=start_ms, malformed_share=args.malformed_share
    )
    truth = GroundTruth(**facts)
    try:
        out = RotatingLog(args.out, args.rotate_every, args.rotate_mode, args.rotate_keep)
    except OSError as exc:
        print(f"clickstream simulate: error: cannot open {args.out}: {exc}", file=sys.stderr)
        return 1
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: out.request_reopen())
    log.info("appending %g lines/s to %s; stop with Ctrl-C", args.rate, args.out)
    try:
        written = run_realtime(out, engine, truth, limit=args.lines, should_stop=stop.is_set)
    finally:
        out.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if args.truth is not None:
            truth.write(args.truth)
    log.info("wrote %d lines to %s (%d rotations)", written, args.out, out.rotations)
    return 0


def _iso_ms(epoch_ms: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=epoch_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{epoch_ms % 1000:03d}Z" if epoch_ms % 1000 else "Z"
    )
