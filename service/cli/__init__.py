"""The `clickstream` command: one entry point, one module per subcommand.

Each subcommand module under `service.cli` has `HELP` (one line), `configure(parser)` (its
options) and `run(args, settings) -> int` (its exit code). Modules are imported only when their
command runs, so `clickstream --help` stays instant and a missing optional dependency (moto for
`local-aws`) affects only the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType

from service.logs import configure_logging
from service.settings import SettingsError, load_settings

# command name -> (module, one-line help). Kept here, not discovered, so the order is deliberate.
COMMANDS: dict[str, tuple[str, str]] = {
    "local-aws": ("service.cli.local_aws", "run the embedded local AWS stack (moto) on 127.0.0.1"),
    "setup": ("service.cli.setup", "create the stream, bucket, lease table and dashboard"),
    "simulate": ("service.cli.simulate", "write simulated café access_log traffic"),
    "geoip": ("service.cli.geoip", "show or build the geolocation database"),
    "agent": ("service.cli.agent", "tail an access log (path or glob) into the Kinesis stream"),
    "consume": ("service.cli.consume", "consume the stream: counters, S3 archive, CloudWatch"),
    "serve": ("service.cli.serve", "run the service: consumer, health, metrics, API, dashboard"),
    "demo": ("service.cli.demo", "run the whole pipeline locally on simulated traffic"),
    "sql": ("service.cli.sql", "run SQL (DuckDB) over the S3 archive of events"),
    "cost": ("service.cli.cost", "estimate the monthly and yearly AWS cost for a given traffic"),
}

log = logging.getLogger("clickstream")


def _load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickstream",
        description="Real-time clickstream pipeline for AnyCompany Café.",
        epilog="Settings come from CLICKSTREAM_* environment variables (see README).",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings file (CLICKSTREAM_CONFIG)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (CLICKSTREAM_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported; the others are listed by name and help.
        if only == name:
            _load(name).configure(command)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=_chosen_command(argv)).parse_args(argv)
    try:
        settings = load_settings(args.config, log_level=args.log_level)
    except SettingsError as exc:
        print(f"clickstream: configuration error:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _load(args.command).run(args, settings)
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
