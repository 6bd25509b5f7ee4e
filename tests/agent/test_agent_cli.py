"""`clickstream agent` options: settings flow into AgentConfig, bad input exits 2 with a message."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.positions import PositionStore
from service.cli import build_parser, main
from service.cli.agent import build_config
from service.settings import load_settings


def parse(*argv: str) -> argparse.Namespace:
    return build_parser(only="agent").parse_args(["agent", *argv])


def test_settings_fill_the_config_and_options_win(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("CLICKSTREAM_MAX_IN_FLIGHT_BYTES", "4194304")
    monkeypatch.setenv("CLICKSTREAM_AGENT_LINGER_MS", "50")
    monkeypatch.setenv("CLICKSTREAM_OVERSIZE_POLICY", "REJECT")
    monkeypatch.setenv("CLICKSTREAM_AGGREGATE", "false")
    monkeypatch.setenv("CLICKSTREAM_STALL_SECONDS", "7.5")
    monkeypatch.setenv("CLICKSTREAM_AGENT_METRICS_PORT", "0")
    settings = load_settings()
    config = build_config(parse("/var/log/access_log*", "--linger-ms", "10"), settings)
    assert config == AgentConfig(
        path="/var/log/access_log*",
        state_dir=tmp_path,
        max_in_flight_bytes=4 * 1024 * 1024,
        linger_ms=10,
        oversize_policy="reject",  # type: ignore[arg-type]
        aggregate=False,
        stall_timeout_s=7.5,
        metrics_port=0,
    )
    assert build_config(parse("x", "--no-metrics", "--aggregate"), settings).metrics_port is None
    assert build_config(parse("x", "--aggregate"), settings).aggregate is True


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--max-in-flight-bytes", "1000"], "max_in_flight_bytes must be >="),
        (["--max-line-bytes", "10"], "max_line_bytes must be >= 64"),
        (["--stream", "bad stream!"], "--stream 'bad stream!' is not a valid stream name"),
        (["--metrics-port", "9", "--no-metrics"], "contradict"),
    ],
)
def test_unusable_options_exit_2_with_a_message(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["agent", str(tmp_path / "access_log"), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["--metrics-port", "70000"], ["--linger-ms", "-1"], ["--oversize-policy", "drop"], []],
)
def test_malformed_options_are_argparse_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["agent", *argv] if argv == [] else ["agent", "access_log", *argv])
    assert exited.value.code == 2
    assert "clickstream agent: error:" in capsys.readouterr().err


def test_bad_agent_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLICKSTREAM_MAX_IN_FLIGHT_BYTES", "12")
    assert main(["agent", "access_log"]) == 2
    assert "CLICKSTREAM_MAX_IN_FLIGHT_BYTES must be >= 262144, got '12'" in capsys.readouterr().err


def test_a_second_agent_on_the_same_state_dir_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never reached
    holder = PositionStore(tmp_path / "agent-positions.json")
    holder.lock()
    try:
        assert main(["agent", str(tmp_path / "access_log"), "--no-metrics"]) == 2
    finally:
        holder.unlock()
    assert "another agent is using" in capsys.readouterr().err


@pytest.mark.integration
def test_a_missing_stream_stops_the_agent_with_a_message(
    aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "access_log"
    log_file.write_text("1.2.3.4 - - line\n")
    code = main(["agent", str(log_file), "--stream", "absent", "--no-metrics"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot use stream 'absent': ResourceNotFoundException" in err
