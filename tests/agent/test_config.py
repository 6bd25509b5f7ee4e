"""AgentConfig: production defaults, and every bad value named at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, OversizePolicy


def test_defaults_are_the_production_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    config = AgentConfig(path="/var/log/apache2/access_log")
    assert config.from_start is False
    assert config.max_line_bytes == 64 * 1024
    assert config.oversize_policy is OversizePolicy.TRUNCATE
    assert config.linger_ms == 250
    assert 0.1 <= config.poll_interval_s <= 0.25
    # Durable: not under /tmp or /run, which a reboot empties.
    assert config.state_dir == Path.home() / ".local" / "state" / "clickstream"
    assert config.positions_file.parent == config.state_dir
    assert "*.gz" in config.exclude


def test_state_dir_follows_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert AgentConfig(path="x").state_dir == tmp_path / "clickstream"


def test_policy_accepts_its_name_and_bad_values_are_all_reported() -> None:
    config = AgentConfig(path="x", oversize_policy="reject")  # type: ignore[arg-type]
    assert config.oversize_policy is OversizePolicy.REJECT
    with pytest.raises(ValueError) as raised:
        AgentConfig(path="", poll_interval_s=0, max_line_bytes=10, linger_ms=-1)
    message = str(raised.value)
    for name in ("path", "poll_interval_s", "max_line_bytes", "linger_ms"):
        assert name in message
