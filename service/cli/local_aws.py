"""`clickstream local-aws`: run the embedded AWS stack (moto) until interrupted.

The first stdout line is exactly `AWS_ENDPOINT_URL=http://127.0.0.1:P`, so scripts and the test
fixtures can `eval` or parse it; everything meant for humans goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from service.cli.arguments import port
from service.local_stack import (
    DUMMY_CREDENTIAL,
    LOCAL_REGION,
    MotoNotInstalled,
    MotoServer,
    discovery_path,
    remove_discovery,
    write_discovery,
)
from service.settings import Settings

HELP = "run the embedded local AWS stack (moto) on 127.0.0.1"

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=port,
        default=0,
        metavar="P",
        help="TCP port on 127.0.0.1 (default 0: any free port)",
    )


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into a clean shutdown instead of KeyboardInterrupt or death."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.debug("received %s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(args: argparse.Namespace, settings: Settings) -> int:
    stop = threading.Event()
    with _stop_on_signals(stop):
        try:
            server = MotoServer(port=args.port)
            server.start()
        except MotoNotInstalled as exc:
            print(f"clickstream local-aws: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"clickstream local-aws: {exc}", file=sys.stderr)
            return 1
        try:
            endpoint = server.endpoint
            # The file first: whoever reads the endpoint line may look for the file at once.
            write_discovery(settings.state_dir, endpoint)
            print(f"AWS_ENDPOINT_URL={endpoint}", flush=True)
            print(
                f"clickstream local-aws: moto is serving Kinesis, S3, DynamoDB and CloudWatch at "
                f"{endpoint}\n"
                f"  clickstream commands using state dir {settings.state_dir} find it through "
                f"{discovery_path(settings.state_dir)};\n"
                f"  other tools: export AWS_ENDPOINT_URL={endpoint} "
                f"AWS_ACCESS_KEY_ID={DUMMY_CREDENTIAL} AWS_SECRET_ACCESS_KEY={DUMMY_CREDENTIAL} "
                f"AWS_REGION={LOCAL_REGION}\n"
                f"  state is in memory only; Ctrl-C (or SIGTERM) stops it.",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                pass
            log.info("stopping moto at %s", endpoint)
        finally:
            remove_discovery(settings.state_dir)
            server.stop()
    return 0
