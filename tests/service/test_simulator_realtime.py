"""Real-time mode: R lines a second, whole lines only, rotation that loses and repeats nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.cli import main as clickstream
from service.simulator.catalog import load_catalog
from service.simulator.engine import steady_engine
from service.simulator.realtime import RotatingLog, run_realtime
from service.simulator.truth import GroundTruth
from tests.service.conftest import Geo
from tests.service.test_simulator_truth import parse

START_MS = 1_795_262_400_000  # 2026-11-21T12:00:00Z


class SimulatedTime:
    """A clock that only moves when the writer sleeps: real-time mode, run instantly."""

    def __init__(self, start_ms: int) -> None:
        self.now = start_ms / 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _write(geo: Geo, path: Path, lines: int, every: int | None, mode: str, keep: int = 3) -> None:
    engine = steady_engine(
        random.Random(5), load_catalog(geo.catalog), rate=300.0, start_ms=START_MS
    )
    timer = SimulatedTime(START_MS)
    log = RotatingLog(path, every, mode, keep)  # type: ignore[arg-type]
    try:
        written = run_realtime(
            log, engine, GroundTruth(), limit=lines, clock=timer.clock, sleep=timer.sleep
        )
    finally:
        log.close()
    assert written == lines
    # 300 lines/s of simulated time: the writer really waited for each line's moment.
    assert lines / 300.0 * 0.7 <= timer.now - START_MS / 1000.0 <= lines / 300.0 * 1.5


def _rotated(path: Path, keep: int) -> list[Path]:
    """Oldest first: out.K .. out.1, then out."""
    older = [path.with_name(f"{path.name}.{n}") for n in range(keep, 0, -1)]
    return [*older, path]


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_rotation_loses_and_repeats_no_line(tmp_path: Path, test_geo: Geo, mode: str) -> None:
    plain = tmp_path / "plain.log"
    _write(test_geo, plain, 1_000, None, mode)
    rotated = tmp_path / "rotated.log"
    _write(test_geo, rotated, 1_000, 300, mode)
    parts = _rotated(rotated, 3)
    sizes = [part.read_bytes().count(b"\n") for part in parts]
    assert sizes == [300, 300, 300, 100]
    assert b"".join(part.read_bytes() for part in parts) == plain.read_bytes()


def test_rotation_keeps_only_the_newest_files(tmp_path: Path, test_geo: Geo) -> None:
    out = tmp_path / "out.log"
    _write(test_geo, out, 700, 100, "create", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.log", "out.log.1", "out.log.2"]
    assert [p.read_bytes().count(b"\n") for p in _rotated(out, 2)] == [100, 100, 100]


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_cli_short_run_at_a_high_rate_with_rotation(
    tmp_path: Path, test_geo: Geo, mode: str
) -> None:
    out, truth_path = tmp_path / "live.log", tmp_path / "live.json"
    began = time.time()
    argv = ["simulate", "--rate", "4000", "--lines", "1800", "--rotate-every", "500"]
    argv += ["--rotate-mode", mode, "--out", str(out), "--truth", str(truth_path)]
    assert clickstream([*argv, "--catalog", str(test_geo.catalog)]) == 0
    elapsed = time.time() - began
    data = b"".join(part.read_bytes() for part in _rotated(out, 3))
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == 1_800
    assert [part.read_bytes().count(b"\n") for part in _rotated(out, 3)] == [500, 500, 500, 300]
    truth = json.loads(truth_path.read_text())
    assert truth["lines"] == 1_800 and truth["mode"] == "rate"
    rejected = sum(1 for line in lines[:-1] if parse(line) is None)
    assert rejected == truth["totals"]["rejected_lines"]
    stamps = [hit.time.timestamp() for hit in map(parse, lines[:-1]) if hit is not None]
    assert began - 2 <= min(stamps) and max(stamps) <= time.time() + 1  # the current time
    assert elapsed >= 1_800 / 4_000 * 0.6  # paced, not dumped


def test_rate_is_kept(tmp_path: Path, test_geo: Geo) -> None:
    out = tmp_path / "paced.log"
    began = time.monotonic()
    argv = ["simulate", "--rate", "1000", "--lines", "2500", "--out", str(out)]
    assert clickstream([*argv, "--catalog", str(test_geo.catalog)]) == 0
    elapsed = time.monotonic() - began
    assert out.read_bytes().count(b"\n") == 2_500
    assert 1.5 <= elapsed <= 8.0, elapsed


def test_appends_to_an_existing_log(tmp_path: Path, test_geo: Geo) -> None:
    out = tmp_path / "access.log"
    out.write_bytes(b'192.0.2.1 - - [21/Nov/2026:11:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "x"\n')
    argv = ["simulate", "--rate", "2000", "--lines", "50", "--out", str(out)]
    assert clickstream([*argv, "--catalog", str(test_geo.catalog)]) == 0
    lines = out.read_bytes().split(b"\n")
    assert lines[0].startswith(b"192.0.2.1 ") and len(lines) - 1 == 51


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_cleanly_with_the_truth_written(
    tmp_path: Path, test_geo: Geo, signum: int
) -> None:
    out, truth_path = tmp_path / "live.log", tmp_path / "live.json"
    command = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]
    command += ["simulate", "--rate", "400", "--out", str(out), "--truth", str(truth_path)]
    command += ["--catalog", str(test_geo.catalog)]
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(command, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 200:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the simulator wrote nothing")
        process.send_signal(signum)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    data = out.read_bytes()
    assert data.endswith(b"\n")
    assert json.loads(truth_path.read_text())["lines"] == data.count(b"\n")


def test_sighup_reopens_the_path_like_apache(tmp_path: Path, test_geo: Geo) -> None:
    """logrotate's `create` mode renames the log and sends SIGHUP: new lines go to a new file."""
    out, truth_path = tmp_path / "live.log", tmp_path / "live.json"
    command = [sys.executable, "-m", "service.cli", "simulate", "--rate", "400", "--lines", "1200"]
    command += ["--out", str(out), "--truth", str(truth_path), "--catalog", str(test_geo.catalog)]
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(command, cwd=repo)
    rotated = tmp_path / "live.log.1"
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and out.read_bytes().count(b"\n") >= 200):
            assert time.monotonic() < deadline, "the simulator wrote nothing"
            time.sleep(0.05)
        os.replace(out, rotated)
        process.send_signal(signal.SIGHUP)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    old, new = rotated.read_bytes(), out.read_bytes()
    assert new.count(b"\n") > 0, "the simulator kept writing into the renamed file"
    assert old.endswith(b"\n") and new.endswith(b"\n")
    assert old.count(b"\n") + new.count(b"\n") == 1200
    assert json.loads(truth_path.read_text())["lines"] == 1200
