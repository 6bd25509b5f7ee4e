"""`clickstream agent PATH_OR_GLOB [--from-start]`: tail the café's access log into Kinesis.

Runs on the web server as a small always-on process (deploy/clickstream-agent.service). Every
knob has a `CLICKSTREAM_*` setting (README, "Settings") so a unit file needs no options; an option
given here wins over the setting. The Kinesis client is made with botocore's retries off, as
`agent.shipper` asks: the shipper retries exactly the failed entries itself, without a limit,
and botocore retrying whole calls underneath would resend entries that had succeeded.

Exit codes: 0 after SIGTERM/SIGINT (drained or not: nothing unacknowledged is checkpointed),
1 when the agent failed while running, 2 for unusable options or settings, and when it cannot
start (the stream does not exist, access denied, another agent holds the state directory).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TypeVar

from agent.config import DEFAULT_EXCLUDE, AgentConfig
from agent.main import DEFAULT_SHUTDOWN_TIMEOUT_S, AgentError, run_agent
from agent.progress import BackfillProgress
from service.aws import aws_client
from service.cli.arguments import port, positive_float, positive_int
from service.local_stack import use_local_stack_if_running
from service.settings import Settings

T = TypeVar("T")

HELP = "tail an access log (path or glob) into the Kinesis stream"


def _non_negative_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}. Follows the files through rotation (rename+create, copytruncate, truncation), "
        "saves per-file positions only for lines Kinesis acknowledged (a restart, even after "
        "kill -9, loses nothing), and serves Prometheus /metrics and /healthz on 127.0.0.1. "
        "SIGTERM or SIGINT drains, checkpoints and exits 0; a second one exits at once."
    )
    parser.epilog = (
        "Defaults come from the settings: CLICKSTREAM_STREAM, CLICKSTREAM_STATE_DIR, "
        "CLICKSTREAM_AGENT_METRICS_PORT, CLICKSTREAM_AGENT_LINGER_MS, CLICKSTREAM_MAX_LINE_BYTES, "
        "CLICKSTREAM_OVERSIZE_POLICY, CLICKSTREAM_AGGREGATE, CLICKSTREAM_STALL_SECONDS, "
        "CLICKSTREAM_MAX_IN_FLIGHT_BYTES. Quote a glob so the shell does not expand it: "
        "clickstream agent '/var/log/apache2/access_log*'"
    )
    parser.add_argument(
        "path",
        metavar="PATH_OR_GLOB",
        help="the log file, or a glob of files (rotated siblings such as *.gz are excluded)",
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="on the first run, read existing files from their beginning (backfill, with a "
        "progress bar on a terminal) instead of only new lines",
    )
    parser.add_argument("--stream", metavar="NAME", help="Kinesis stream (CLICKSTREAM_STREAM)")
    parser.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="checkpoint directory (CLICKSTREAM_STATE_DIR)"
    )
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="/metrics and /healthz on 127.0.0.1:PORT, 0 picks a free one "
        "(CLICKSTREAM_AGENT_METRICS_PORT, default 9108)",
    )
    ops.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    ops.add_argument(
        "--stall-seconds",
        type=positive_float,
        metavar="S",
        help="unhealthy after S seconds with lines waiting and no acknowledgement "
        "(CLICKSTREAM_STALL_SECONDS, default 60)",
    )
    ops.add_argument(
        "--shutdown-timeout",
        type=positive_float,
        default=DEFAULT_SHUTDOWN_TIMEOUT_S,
        metavar="S",
        help=f"how long SIGTERM waits for in-flight lines (default {DEFAULT_SHUTDOWN_TIMEOUT_S:g};"
        " keep it below systemd's TimeoutStopSec)",
    )
    ops.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the --from-start progress bar (default: only on a terminal)",
    )
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument(
        "--linger-ms",
        type=_non_negative_int,
        metavar="MS",
        help="longest wait before a shard's lines are sent (CLICKSTREAM_AGENT_LINGER_MS)",
    )
    tuning.add_argument(
        "--max-in-flight-bytes",
        type=positive_int,
        metavar="N",
        help="bytes read but not acknowledged before reading pauses "
        "(CLICKSTREAM_MAX_IN_FLIGHT_BYTES)",
    )
    tuning.add_argument(
        "--max-line-bytes",
        type=positive_int,
        metavar="N",
        help="longer lines are cut or rejected (CLICKSTREAM_MAX_LINE_BYTES)",
    )
    tuning.add_argument(
        "--oversize-policy",
        choices=("truncate", "reject"),
        help="what happens to a line over --max-line-bytes (CLICKSTREAM_OVERSIZE_POLICY)",
    )
    tuning.add_argument(
        "--aggregate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pack lines into KPL aggregated records (CLICKSTREAM_AGGREGATE, default on)",
    )
    tuning.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help=f"file names the glob must skip (repeatable; default {' '.join(DEFAULT_EXCLUDE)})",
    )


def pick(option: T | None, setting: T) -> T:
    """An option given on the command line wins over the setting."""
    return setting if option is None else option


def build_config(args: argparse.Namespace, settings: Settings) -> AgentConfig:
    """Options over settings; raises ValueError with every problem (AgentConfig checks them)."""

    metrics_port = None if args.no_metrics else pick(args.metrics_port, settings.agent_metrics_port)
    return AgentConfig(
        path=args.path,
        from_start=args.from_start,
        state_dir=args.state_dir or settings.state_dir,
        exclude=tuple(args.exclude) if args.exclude else DEFAULT_EXCLUDE,
        max_line_bytes=pick(args.max_line_bytes, settings.max_line_bytes),
        oversize_policy=pick(args.oversize_policy, settings.oversize_policy),
        max_in_flight_bytes=pick(args.max_in_flight_bytes, settings.max_in_flight_bytes),
        linger_ms=pick(args.linger_ms, settings.agent_linger_ms),
        aggregate=pick(args.aggregate, settings.aggregate),
        stall_timeout_s=pick(args.stall_seconds, settings.stall_seconds),
        metrics_port=metrics_port,
    )


def _usage_error(message: str) -> int:
    print(f"clickstream agent: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, settings: Settings) -> int:
    stream = args.stream or settings.stream
    if args.stream is not None:
        try:
            Settings(stream=args.stream)
        except ValueError:
            return _usage_error(f"--stream {args.stream!r} is not a valid stream name")
    if args.metrics_port is not None and args.no_metrics:
        return _usage_error("--metrics-port and --no-metrics contradict each other")
    try:
        config = build_config(args, settings)
    except ValueError as exc:
        return _usage_error(str(exc))
    use_local_stack_if_running(settings.state_dir)
    progress = BackfillProgress(enabled=args.progress) if config.from_start else None
    try:
        return asyncio.run(_main(config, stream, args.shutdown_timeout, progress))
    except AgentError as exc:
        return _usage_error(str(exc))


async def _main(
    config: AgentConfig, stream: str, shutdown_timeout_s: float, progress: BackfillProgress | None
) -> int:
    # Retries off (the shipper's own, per entry, are the only ones); a long read timeout, since a
    # PutRecords call carries up to 5 MiB.
    async with aws_client("kinesis", retries={"total_max_attempts": 1}, read_timeout=60) as kinesis:
        return await run_agent(
            config, kinesis, stream, shutdown_timeout_s=shutdown_timeout_s, progress=progress
        )
