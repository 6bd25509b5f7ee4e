"""`clickstream demo` end to end: the real processes start, traffic flows, Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _port_open(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((parts.hostname or "127.0.0.1", parts.port or 80)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lines_shipped(metrics_port: int) -> float:
    """The agent's own count of lines Kinesis accepted, from its Prometheus endpoint."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as page:
            text = page.read().decode()
    except OSError:
        return 0.0
    found = re.search(r"^clickstream_agent_lines_sent_total ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_demo_runs_until_interrupted_then_stops_every_part(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    env = dict(os.environ, CLICKSTREAM_STATE_DIR=str(tmp_path / "state"))
    metrics_port = _free_port()
    command = [sys.executable, "-m", "service.cli", "demo", "--rate", "100"]
    command += ["--data-dir", str(data_dir), "--agent-metrics-port", str(metrics_port)]
    demo = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    access_log = data_dir / "access_log"
    discovery = data_dir / "state" / "local-aws.json"
    try:
        deadline = time.monotonic() + 90
        while _lines(access_log) < 50 and time.monotonic() < deadline:
            assert demo.poll() is None, demo.stdout.read().decode() if demo.stdout else ""
            time.sleep(0.5)
        assert _lines(access_log) >= 50, "the demo wrote no traffic within 90 s"
        endpoint = json.loads(discovery.read_text())["endpoint"]
        assert _port_open(endpoint)
        written = _lines(access_log)
        time.sleep(2)
        assert _lines(access_log) > written, "traffic stopped flowing"
        while _lines_shipped(metrics_port) < 50 and time.monotonic() < deadline:
            assert demo.poll() is None
            time.sleep(0.5)
        assert _lines_shipped(metrics_port) >= 50, "the agent shipped nothing to Kinesis"
    finally:
        demo.send_signal(signal.SIGINT)
        output = demo.communicate(timeout=60)[0].decode(errors="replace")
    assert demo.returncode == 0, output
    assert "Demo running" in output
    assert "present" in output or "created" in output  # the setup report
    assert not discovery.exists(), "local-aws did not clean up after itself"
    assert not _port_open(endpoint), "moto is still running after the demo stopped"
    # Every line the simulator wrote is whole: it was stopped, not killed.
    assert access_log.read_bytes().endswith(b"\n")
