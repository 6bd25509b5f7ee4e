"""agent.main's small parts without a Kinesis: the metrics server, signals, sd_notify."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.main import MetricsServer, Shutdown, notify_systemd
from agent.metrics import AgentMetrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_server_serves_metrics_and_health_on_loopback() -> None:
    metrics = AgentMetrics()
    metrics.lines_sent.inc(42)
    healthy = True
    server = MetricsServer(metrics, lambda: healthy)
    address = server.start("127.0.0.1", 0)
    try:
        assert address.host == "127.0.0.1" and address.port > 0
        status, text = get(address.url + "/metrics")
        assert status == 200 and "clickstream_agent_lines_sent_total 42.0" in text
        assert get(address.url + "/healthz") == (200, "ok\n")
        healthy = False
        status, body = get(address.url + "/healthz")
        assert status == 503 and "stalled" in body
        assert get(address.url + "/")[0] == 404
    finally:
        server.stop()
    with pytest.raises(OSError):
        get(address.url + "/metrics")


def test_a_second_signal_forces_the_stop() -> None:
    shutdown = Shutdown()
    shutdown.request("SIGTERM")
    assert shutdown.requested.is_set() and not shutdown.forced.is_set()
    shutdown.request("SIGINT")
    assert shutdown.forced.is_set()


def test_notify_systemd_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notify_systemd("READY=1")  # no NOTIFY_SOCKET: nothing happens, nothing fails
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notify_systemd("READY=1")
        assert receiver.recv(64) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notify_systemd("STOPPING=1")  # a vanished socket is not the agent's problem
