"""`clickstream demo`: the whole local pipeline on simulated café traffic, stopped with Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from service.cli.arguments import port, positive_float
from service.demo import DemoError, DemoSupervisor
from service.settings import Settings

HELP = "run the whole pipeline locally on simulated traffic"

log = logging.getLogger("clickstream.demo")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}: starts the embedded local AWS stack on 127.0.0.1, creates the stream, bucket, "
        "lease table and dashboard in it, appends simulated café traffic to an access_log in "
        "real time, runs the agent that tails it into Kinesis and the service (consumer, API "
        "and live dashboard), and prints the dashboard's URL. Ctrl-C (or SIGTERM) stops every "
        "part cleanly, newest first."
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=20.0,
        metavar="R",
        help="simulated lines a second (default 20)",
    )
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    parser.add_argument(
        "--agent-metrics-port",
        type=port,
        default=9108,
        metavar="P",
        help="the agent's /metrics and /healthz port on 127.0.0.1 (default 9108)",
    )
    parser.add_argument(
        "--port",
        type=port,
        metavar="P",
        help="the service's (dashboard's) port on 127.0.0.1 (default CLICKSTREAM_SERVE_PORT, 8000)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the access_log goes (default: CLICKSTREAM_STATE_DIR/demo)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    data_dir: Path = args.data_dir or settings.state_dir / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    access_log = data_dir / "access_log"

    stopping = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stopping.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    supervisor = DemoSupervisor(data_dir)
    # The demo's own state (checkpoints, discovery file) stays apart from a real installation's.
    supervisor.env["CLICKSTREAM_STATE_DIR"] = str(data_dir / "state")
    try:
        endpoint = supervisor.start_local_aws()
        log.info("local AWS stack at %s", endpoint)
        # The service loads (a few seconds of imports) while setup creates what it reads; until
        # the stream exists its consumer retries by itself.
        serve_port = settings.serve_port if args.port is None else args.port
        service = supervisor.start_service(["--host", "127.0.0.1", "--port", str(serve_port)])
        supervisor.run_once("setup", ["setup"])
        simulate = ["simulate", "--rate", str(args.rate), "--seed", str(args.seed)]
        supervisor.start("simulator", [*simulate, "--out", str(access_log)])
        agent = ["agent", str(access_log), "--from-start", "--no-progress"]
        supervisor.start("agent", [*agent, "--metrics-port", str(args.agent_metrics_port)])
        url = supervisor.service_url(service)
        print(
            f"\nDemo running: simulated café traffic -> {access_log} -> agent -> "
            f"Kinesis stream {settings.stream} -> service\n"
            f"Dashboard: {url}\n"
            f"API: {url}api/summary?window=5m  (schema: {url}docs)\n"
            f"Agent metrics: http://127.0.0.1:{args.agent_metrics_port}/metrics\n"
            f"Local AWS endpoint: {endpoint}\nPress Ctrl-C to stop.\n",
            flush=True,
        )
        return supervisor.watch(stopping.is_set)
    except DemoError as exc:
        log.error("%s", exc)
        return 1
    finally:
        supervisor.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
