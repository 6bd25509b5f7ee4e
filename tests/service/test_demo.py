"""`clickstream demo` end to end: the real processes start, traffic flows, Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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


def test_demo_runs_until_interrupted_then_stops_every_part(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    env = dict(os.environ, CLICKSTREAM_STATE_DIR=str(tmp_path / "state"))
    demo = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "demo", "--rate", "100", "--data-dir", str(data_dir)],
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
