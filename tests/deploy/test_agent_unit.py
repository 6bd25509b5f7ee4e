"""deploy/clickstream-agent.service and agent.env.example: what operators and systemd rely on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.main import DEFAULT_SHUTDOWN_TIMEOUT_S
from service.settings import ENV_PREFIX, Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "clickstream-agent.service"
ENV_EXAMPLE = DEPLOY / "agent.env.example"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: repeated keys accumulate, `#`/`;` start comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_runs_the_agent_the_way_the_issue_asks() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["User"] == ["clickstream"]
    assert service["StateDirectory"] == ["clickstream"]
    assert "CLICKSTREAM_STATE_DIR=/var/lib/clickstream" in service["Environment"]
    assert service["EnvironmentFile"] == ["-/etc/clickstream/agent.env"]
    assert service["Restart"] == ["always"]
    assert service["KillSignal"] == ["SIGTERM"]
    # The agent's own drain deadline must end before systemd's SIGKILL.
    assert float(service["TimeoutStopSec"][0]) > DEFAULT_SHUTDOWN_TIMEOUT_S + 5
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert "/var/lib/clickstream" in service["ReadWritePaths"][0].split()
    assert any(p.lstrip("-").startswith("/var/log/") for p in service["ReadOnlyPaths"][0].split())
    command = service["ExecStart"][0].split()
    assert command[0].endswith("/clickstream") and command[1] == "agent"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_every_setting_in_the_env_example_exists() -> None:
    """A typo in agent.env would stop the agent (unknown CLICKSTREAM_* names are refused)."""
    names = re.findall(r"^#?\s*(CLICKSTREAM_[A-Z_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert len(names) >= 7
    for name in names:
        assert name[len(ENV_PREFIX) :].lower() in Settings.model_fields, name


def test_env_example_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*(CLICKSTREAM_[A-Z_]+)=(.*)$", line)
        if match:
            monkeypatch.setenv(match.group(1), match.group(2))
    settings = load_settings()
    assert settings.agent_metrics_port == 9108
    assert settings.max_in_flight_bytes == 16 * 1024 * 1024


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at a binary that does, keep everything else.
    text = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(), flags=re.MULTILINE)
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice"}
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if UNIT.name in line or "Unknown" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
