"""`clickstream cost`: what the pipeline would cost on AWS for a given traffic, per service.

Options name the inputs that move the figure (traffic, retention, Kinesis mode, task size,
commit interval); the rest are the deployment's defaults, listed under "Assumptions" in the
output. `--prices FILE` takes another region's (or a newer) table in the shipped TOML layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.cli.arguments import positive_float, positive_int
from service.cost import Workload, estimate, format_estimate, load_prices
from service.settings import Settings

HELP = "estimate the monthly and yearly AWS cost for a given traffic"


def _non_negative_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = Workload(hits_per_day=0)
    parser.add_argument(
        "--hits-per-day", type=_non_negative_int, required=True, metavar="N",
        help="access-log lines a day (every request: pages, static files, bots)",
    )  # fmt: skip
    parser.add_argument(
        "--retention-days", type=positive_int, default=defaults.retention_days, metavar="D",
        help=f"how long the S3 archive keeps events (default {defaults.retention_days})",
    )  # fmt: skip
    parser.add_argument(
        "--kinesis-mode", choices=("provisioned", "on-demand"), default=defaults.kinesis_mode,
        help=f"Kinesis capacity mode (default {defaults.kinesis_mode})",
    )  # fmt: skip
    parser.add_argument(
        "--shards", type=positive_int, default=defaults.shards,
        help=f"provisioned shards (default {defaults.shards})",
    )  # fmt: skip
    parser.add_argument(
        "--tasks", type=positive_int, default=defaults.tasks,
        help=f"Fargate tasks running the service (default {defaults.tasks})",
    )  # fmt: skip
    parser.add_argument(
        "--vcpu", type=positive_float, default=defaults.vcpu,
        help=f"vCPU per task (default {defaults.vcpu:g})",
    )  # fmt: skip
    parser.add_argument(
        "--memory-gb", type=positive_float, default=defaults.memory_gb,
        help=f"memory per task in GB (default {defaults.memory_gb:g})",
    )  # fmt: skip
    parser.add_argument(
        "--arch", choices=("x86_64", "arm64"), default=defaults.arch,
        help=f"Fargate CPU architecture (default {defaults.arch})",
    )  # fmt: skip
    parser.add_argument(
        "--flush-seconds", type=positive_float, default=defaults.flush_seconds,
        help="consumer commit interval, CLICKSTREAM_FLUSH_SECONDS in the deployment "
        f"(default {defaults.flush_seconds:g})",
    )  # fmt: skip
    parser.add_argument(
        "--top-cities", type=positive_int, default=defaults.top_cities,
        help=f"cities with their own CloudWatch series (default {defaults.top_cities})",
    )  # fmt: skip
    parser.add_argument(
        "--sse", choices=("s3", "kms"), default=defaults.sse,
        help=f"archive encryption, SSE-S3 or SSE-KMS (default {defaults.sse})",
    )  # fmt: skip
    parser.add_argument(
        "--queries-per-day", type=float, default=defaults.queries_per_day,
        help=f"Athena queries a day (default {defaults.queries_per_day:g})",
    )  # fmt: skip
    parser.add_argument(
        "--days-per-query", type=positive_float, default=defaults.days_scanned_per_query,
        help=f"days of archive each query reads (default {defaults.days_scanned_per_query:g})",
    )  # fmt: skip
    parser.add_argument(
        "--prices", type=Path, metavar="FILE",
        help="price table (TOML) instead of the shipped service/prices/aws-us-east-1.toml",
    )  # fmt: skip
    parser.add_argument("--format", choices=("text", "json"), default="text")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        prices = load_prices(args.prices)
        workload = Workload(
            hits_per_day=args.hits_per_day,
            retention_days=args.retention_days,
            kinesis_mode=args.kinesis_mode,
            shards=args.shards,
            tasks=args.tasks,
            vcpu=args.vcpu,
            memory_gb=args.memory_gb,
            arch=args.arch,
            flush_seconds=args.flush_seconds,
            top_cities=args.top_cities,
            sse=args.sse,
            queries_per_day=args.queries_per_day,
            days_scanned_per_query=args.days_per_query,
        )
    except (OSError, ValueError, KeyError) as exc:
        print(f"clickstream cost: {exc}", file=sys.stderr)
        return 2
    result = estimate(workload, prices)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_estimate(result))
    return 0
