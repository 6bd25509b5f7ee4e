"""Freshness: from a line's write to the moment `GET /api/summary` counts it.

    .venv/bin/python bench/freshness.py [--rate 200] [--seconds 120] [--poll-ms 20]

The issue's figure: lines appended at 200 lines/s for 2 minutes by the simulator, each timed
from its write to the moment /api/summary counts it; target p50 <= 1 s, p99 <= 2 s with
default settings on the local stack.

What runs, each as its own process exactly as `clickstream demo` runs them, with default
settings (nothing tuned): `clickstream local-aws` (moto), `setup`, `serve`, `agent
--from-start` on the access_log, then `simulate --rate R --lines R*S`.

How a line is timed:

- written: this script tails the access_log itself and notes the monotonic time at which each
  complete line first appears (polled every millisecond: the figure is at most ~1 ms late);
- counted: it polls `/api/summary?window=5m&limit=1` every `--poll-ms` over one keep-alive
  connection and reads `pipeline.lines_processed`, the lines the service's consumer has put
  into its counters (a summary computed after that includes them). Line k (0-based) is counted
  at the first poll that reports at least k+1 lines. Polling adds on average half a poll
  interval (10 ms at the default) to every figure;
- lines are numbered in file order; the two shards are read independently, so a line on a
  shard that is momentarily ahead can be "counted" a little before its own shard got to it
  and vice versa. Over thousands of lines this shifts individual figures by at most a poll
  cycle of the other shard, not the distribution.

Prints one JSON line with the percentiles (seconds) and the run's parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class LocalPipeline:
    """moto, setup, the service and the agent as child processes, in a scratch state dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("CLICKSTREAM_", "AWS_"))
        }
        self.env.update(
            CLICKSTREAM_STATE_DIR=str(workdir / "state"),
            AWS_CONFIG_FILE=str(workdir / "no-aws" / "config"),
            AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-aws" / "credentials"),
            AWS_EC2_METADATA_DISABLED="true",
        )
        self.processes: list[subprocess.Popen[bytes]] = []
        self.url = ""

    def _start(self, name: str, *args: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
        )
        self.processes.append(process)
        return process

    @staticmethod
    def _announced(process: subprocess.Popen[bytes], prefix: str) -> str:
        assert process.stdout is not None
        stdout = process.stdout
        while line := stdout.readline().decode():
            if line.startswith(prefix):
                value = line.strip().removeprefix(prefix)
                threading.Thread(target=stdout.read, daemon=True).start()  # keep draining
                return value
        raise RuntimeError(f"the process exited before printing {prefix}")

    def start_service(self) -> str:
        moto = self._start("moto", "local-aws", "--port", "0", stdout=subprocess.PIPE)
        endpoint = self._announced(moto, "AWS_ENDPOINT_URL=")
        self.env.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_REGION="us-east-1",
        )
        subprocess.run(
            [sys.executable, "-m", "service.cli", "setup"],
            cwd=REPO,
            env=self.env,
            check=True,
            capture_output=True,
        )
        serve = self._start("serve", "serve", "--port", "0", stdout=subprocess.PIPE)
        self.url = self._announced(serve, "SERVICE_URL=").rstrip("/")
        return self.url

    def start_agent(self, path: Path) -> None:
        self._start("agent", "agent", str(path), "--from-start", "--no-progress",
                    "--metrics-port", "0")  # fmt: skip

    def start_simulator(self, path: Path, rate: float, lines: int) -> subprocess.Popen[bytes]:
        return self._start("simulate", "simulate", "--rate", str(rate), "--lines", str(lines),
                           "--out", str(path))  # fmt: skip

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(35)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@contextlib.contextmanager
def local_pipeline() -> Iterator[LocalPipeline]:
    with tempfile.TemporaryDirectory(prefix="clickstream-bench-") as folder:
        pipeline = LocalPipeline(Path(folder))
        try:
            yield pipeline
        finally:
            pipeline.stop()


class SummaryPoller:
    """`pipeline.lines_processed` from /api/summary every `interval_s`, with the time seen."""

    def __init__(self, url: str, interval_s: float) -> None:
        host_port = url.split("//", 1)[1]
        self._connection = http.client.HTTPConnection(host_port, timeout=10)
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def lines_processed(self) -> int:
        self._connection.request("GET", "/api/summary?window=5m&limit=1")
        response = self._connection.getresponse()
        body = json.loads(response.read())
        return int(body["pipeline"]["lines_processed"]) if response.status == 200 else 0

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            count = self.lines_processed()
            self.samples.append((time.monotonic(), count))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def __enter__(self) -> SummaryPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class LineWatcher:
    """The monotonic time at which each complete line of `path` first appeared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.path.exists() and not self._stop.is_set():
            time.sleep(0.001)
        with self.path.open("rb") as log:
            while not self._stop.is_set():
                chunk = log.read()
                if chunk:
                    now = time.monotonic()
                    self.times.extend([now] * chunk.count(b"\n"))
                    # A partial last line is read again once complete.
                    tail = len(chunk) - chunk.rfind(b"\n") - 1
                    if tail:
                        log.seek(-tail, os.SEEK_CUR)
                else:
                    time.sleep(0.001)

    def __enter__(self) -> LineWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def freshness(written: list[float], samples: list[tuple[float, int]]) -> list[float]:
    """Seconds from each line's write to the first sample counting it (uncounted: left out)."""
    delays = []
    position = 0
    for index, wrote in enumerate(written):
        while position < len(samples) and samples[position][1] < index + 1:
            position += 1
        if position == len(samples):
            break
        delays.append(samples[position][0] - wrote)
    return delays


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--poll-ms", type=float, default=20.0)
    args = parser.parse_args()
    lines = int(args.rate * args.seconds)
    with local_pipeline() as pipeline:
        url = pipeline.start_service()
        access_log = pipeline.workdir / "access_log"
        pipeline.start_agent(access_log)
        time.sleep(2.0)  # the agent is up and waiting for the file
        with SummaryPoller(url, args.poll_ms / 1000) as poller, LineWatcher(access_log) as watch:
            simulator = pipeline.start_simulator(access_log, args.rate, lines)
            simulator.wait(args.seconds * 2 + 60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                not poller.samples or poller.samples[-1][1] < len(watch.times)
            ):
                time.sleep(0.1)
        delays = freshness(watch.times, poller.samples)
    result: dict[str, Any] = {
        "lines_written": len(watch.times),
        "lines_timed": len(delays),
        "rate": args.rate,
        "seconds": args.seconds,
        "poll_ms": args.poll_ms,
        "p50_s": round(percentile(delays, 50), 3),
        "p90_s": round(percentile(delays, 90), 3),
        "p99_s": round(percentile(delays, 99), 3),
        "max_s": round(max(delays), 3),
        "mean_s": round(statistics.fmean(delays), 3),
        "target": "p50 <= 1 s, p99 <= 2 s",
    }
    print(json.dumps(result))
    return 0 if result["p50_s"] <= 1.0 and result["p99_s"] <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
