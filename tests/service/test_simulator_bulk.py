"""Bulk mode: exactly N lines, byte-identical for the same seed and end, inside the window."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest

from service.cli import main as clickstream
from service.cli.simulate import parse_end, parse_span
from tests.service.conftest import END, Geo, Run, simulate

STAMP = re.compile(rb"\[(\d{2})/Nov/2026:(\d{2}):(\d{2}):(\d{2}) \+0000\]")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_acceptance_run_has_exactly_the_lines_asked_for(run_100k: Run) -> None:
    data = run_100k.log.read_bytes()
    assert data.count(b"\n") == 100_000
    assert data.endswith(b"\n")
    assert b"\n\n" not in data and not data.startswith(b"\n")  # no blank lines


def test_same_seed_and_end_give_a_byte_identical_file(
    run_100k: Run, tmp_path: Path, test_geo: Geo
) -> None:
    again = simulate(tmp_path, test_geo, lines=100_000)
    assert digest(again.log) == digest(run_100k.log)
    assert again.truth_path.read_bytes() == run_100k.truth_path.read_bytes()


def test_another_seed_gives_other_traffic(tmp_path: Path, test_geo: Geo) -> None:
    one = simulate(tmp_path, test_geo, lines=5_000, seed=1, name="one")
    two = simulate(tmp_path, test_geo, lines=5_000, seed=2, name="two")
    assert one.log.read_bytes().count(b"\n") == two.log.read_bytes().count(b"\n") == 5_000
    assert digest(one.log) != digest(two.log)


def test_timestamps_span_the_window_up_to_its_end(run_100k: Run) -> None:
    seconds = []
    for match in STAMP.finditer(run_100k.log.read_bytes()):
        day, hour, minute, second = (int(group) for group in match.groups())
        seconds.append(((day * 24 + hour) * 60 + minute) * 60 + second)
    start, end = (21 * 24 + 6) * 3600, (21 * 24 + 12) * 3600
    assert min(seconds) >= start and max(seconds) <= end
    assert min(seconds) - start < 60 and end - max(seconds) < 600
    # Apache stamps the request's start but writes at its end: a little disorder, never much.
    assert max(a - b for a, b in itertools.pairwise(seconds)) <= 15
    truth = run_100k.truth
    assert truth["start"] == "2026-11-21T06:00:00Z" and truth["end"] == END


@pytest.mark.parametrize(
    ("lines", "span"), [(1, "6h"), (37, "90m"), (3_000, "60"), (2_000, "1h30m")]
)
def test_small_runs_and_short_spans_are_exact(
    tmp_path: Path, test_geo: Geo, lines: int, span: str
) -> None:
    run = simulate(tmp_path, test_geo, "--span", span, lines=lines)
    assert run.log.read_bytes().count(b"\n") == lines
    truth = run.truth
    assert truth["lines"] == lines
    assert truth["start"] >= "2026-11-21T06:00:00Z"
    assert truth["first_time"] >= truth["start"] and truth["last_time"] <= END


def test_malformed_share_follows_the_option(tmp_path: Path, test_geo: Geo) -> None:
    run = simulate(tmp_path, test_geo, "--malformed-share", "0.02", lines=30_000)
    share = run.truth["totals"]["rejected_lines"] / 30_000
    assert 0.016 <= share <= 0.024
    none = simulate(tmp_path, test_geo, "--malformed-share", "0", lines=5_000, name="clean")
    assert none.truth["totals"]["rejected_lines"] == 0


def test_default_malformed_share_is_small(run_100k: Run) -> None:
    assert 0.0015 <= run_100k.truth["totals"]["rejected_lines"] / 100_000 <= 0.0025


def test_span_and_end_syntax() -> None:
    assert parse_span("6h") == 21_600
    assert parse_span("90m") == 5_400
    assert parse_span("1h30m") == 5_400
    assert parse_span("45s") == 45
    assert parse_span("3600") == 3_600
    assert parse_end("2026-11-21T12:00:00Z") == 1_795_262_400_000
    assert parse_end("2026-11-21T12:00:00") == 1_795_262_400_000  # no zone: UTC
    assert parse_end("2026-11-21T13:00:00+01:00") == 1_795_262_400_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{tmp}/a.log"], "give --lines N (bulk) or --rate R"),
        (["--lines", "5", "--out", "{tmp}/a.log", "--rotate-every", "3"], "--rotate-every is for"),
        (["--rate", "5", "--out", "{tmp}/a.log", "--end", END], "--end and --span are for bulk"),
        (["--lines", "5", "--out", "{tmp}/missing/a.log"], "does not exist"),
        (["--lines", "5", "--out", "{tmp}/a.log", "--catalog", "{tmp}/nope.json"], "nope.json"),
        (["--lines", "5", "--out", "{tmp}/a.log", "--truth", "{tmp}/a.log"], "different files"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    args = [arg.format(tmp=tmp_path) for arg in argv]
    assert clickstream(["simulate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--lines", "0"],
        ["--lines", "many"],
        ["--rate", "-1"],
        ["--lines", "5", "--span", "0"],
        ["--lines", "5", "--span", "six hours"],
        ["--lines", "5", "--end", "yesterday"],
        ["--lines", "5", "--malformed-share", "0.9"],
        ["--rate", "5", "--rotate-mode", "move"],
    ],
)
def test_bad_values_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        clickstream(["simulate", *argv, "--out", str(tmp_path / "a.log")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-2]}" in err and "Traceback" not in err


def test_bad_catalog_is_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "cities.json"
    catalog.write_text(json.dumps({"cities": [{"city": "Nowhere", "region": "", "country": ""}]}))
    argv = ["simulate", "--lines", "5", "--out", str(tmp_path / "a.log"), "--catalog", str(catalog)]
    assert clickstream(argv) == 2
    assert "is not valid" in capsys.readouterr().err
