"""`clickstream sql` over the S3 archive on the local stack (moto).

- The mirror: new objects are downloaded, unchanged ones are not, an overwritten object (a
  replayed batch) is downloaded again, a deleted one disappears, `--since/--until` limit it.
- Acceptance: a simulated log shipped by `clickstream agent` and consumed by `clickstream
  consume` into the archive; every example query, run by `clickstream sql` as a user runs it,
  gives the simulator's ground truth (cities, regions, bots, page views).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from service.aws import aws_client
from service.cli import main as clickstream
from service.sql.archive import sync_archive

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUCKET = "cafe-clickstream-archive"


async def put(bucket: str, objects: dict[str, bytes]) -> None:
    async with aws_client("s3") as s3:
        for key, body in objects.items():
            await s3.put_object(Bucket=bucket, Key=key, Body=body)


async def make_bucket(bucket: str) -> None:
    async with aws_client("s3") as s3:
        await s3.create_bucket(Bucket=bucket)


async def delete(bucket: str, key: str) -> None:
    async with aws_client("s3") as s3:
        await s3.delete_object(Bucket=bucket, Key=key)


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*.parquet"))
        if p.is_file()
    }


async def test_mirror_follows_the_archive(aws: str, tmp_path: Path) -> None:
    await make_bucket("mirror-test")
    first = "site/events/dt=2026-11-20/hour=23/shard=shardId-0/1-00000.parquet"
    second = "site/events/dt=2026-11-21/hour=00/shard=shardId-0/5-00000.parquet"
    reject = "site/rejects/dt=2026-11-21/hour=00/shard=shardId-0/7-00000.parquet"
    other = "elsewhere/events/dt=2026-11-21/hour=00/shard=shardId-0/9-00000.parquet"
    await put("mirror-test", {first: b"a", second: b"b", reject: b"r", other: b"x"})
    root = tmp_path / "mirror"

    report = await asyncio.to_thread(sync_archive, "mirror-test", "site/", root)
    assert (report.downloaded, report.unchanged, report.removed) == (3, 0, 0)
    assert files(root) == {first[5:]: b"a", second[5:]: b"b", reject[5:]: b"r"}

    report = await asyncio.to_thread(sync_archive, "mirror-test", "site", root)
    assert (report.downloaded, report.unchanged) == (0, 3)

    await put("mirror-test", {second: b"b, replayed"})  # same key, new bytes
    await delete("mirror-test", first)
    report = await asyncio.to_thread(sync_archive, "mirror-test", "site", root)
    assert (report.downloaded, report.unchanged, report.removed) == (1, 1, 1)
    assert files(root) == {second[5:]: b"b, replayed", reject[5:]: b"r"}

    since = tmp_path / "since"
    report = await asyncio.to_thread(
        sync_archive, "mirror-test", "site", since, since=date(2026, 11, 22)
    )
    assert report.downloaded == 0 and files(since) == {}


# ----------------------------------------------------------------------------- acceptance


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO, env=env, capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    return done.stdout.decode()


def ship(log_file: Path, env: dict[str, str], state: Path) -> None:
    """`clickstream agent --from-start` until its checkpoint covers the whole file."""
    import time

    size = log_file.stat().st_size
    positions = state / "agent-positions.json"
    agent = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "agent", str(log_file), "--from-start",
         "--no-metrics"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=(state.parent / "agent.log").open("wb"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                document = json.loads(positions.read_text())
                if sum(p["offset"] for p in document["positions"].values()) >= size:
                    return
            except (FileNotFoundError, ValueError):
                pass
            assert agent.poll() is None, (state.parent / "agent.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the agent did not ship the file in time"
            time.sleep(0.1)
    finally:
        agent.terminate()
        agent.wait(timeout=30)


@pytest.fixture
def demo_archive(aws: str, tmp_path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """A simulated log (seed 11) through agent and consumer into the archive on moto;
    returns the environment that reaches it and the simulator's ground truth."""
    state = tmp_path / "state"
    env = {
        **os.environ,
        "CLICKSTREAM_STATE_DIR": str(state),
        "CLICKSTREAM_CACHE_DIR": str(tmp_path / "cache"),
        "CLICKSTREAM_FLUSH_SECONDS": "2",
        "CLICKSTREAM_POLL_SECONDS": "0.1",
    }
    log_file, truth_file = tmp_path / "access.log", tmp_path / "truth.json"
    cli("setup", env=env)
    cli("simulate", "--lines", "20000", "--seed", "11", "--out", str(log_file),
        "--truth", str(truth_file), "--no-progress", env=env)  # fmt: skip
    ship(log_file, env, state)
    cli("consume", "--until-idle", "4", env=env)
    return env, json.loads(truth_file.read_text())


def sql(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    return json.loads(cli("sql", *args, "--format", "json", env=env))


@pytest.mark.slow
def test_example_queries_equal_the_ground_truth(
    demo_archive: tuple[dict[str, str], dict[str, Any]],
) -> None:
    env, truth = demo_archive
    place = ("city", "region", "country")
    funnel = [
        {k: row[k] for k in (*place, "visitors", "menu_viewers", "purchasers")}
        for row in sql(env, "--example", "funnel_by_city")
    ]
    assert funnel == [
        {k: row[k] for k in (*place, "visitors", "menu_viewers", "purchasers")}
        for row in truth["cities"]
    ]
    top = [{k: row[k] for k in (*place, "visitors", "page_views")} for row in truth["cities"]]
    assert sql(env, "--example", "top_cities", "--no-sync") == top[:20]
    regions = sql(env, "--example", "top_regions", "--no-sync")
    assert [(r["region"], r["country"], r["visitors"], r["purchasers"]) for r in regions] == [
        (r["region"], r["country"], r["visitors"], r["purchasers"]) for r in truth["regions"]
    ]
    (bots,) = sql(env, "--example", "bots_share", "--no-sync")
    assert bots["lines"] == truth["lines"] - truth["totals"]["rejected_lines"]
    assert bots["bot_lines"] == truth["bot_lines"]
    hours = sql(env, "--example", "hourly_trend", "--no-sync")
    assert sum(h["page_views"] for h in hours) == truth["totals"]["page_views"]
    assert len(hours) in (6, 7)  # 6 h of traffic, cut at UTC hours
    (totals,) = sql(
        env,
        "SELECT count(DISTINCT client_ip || ' ' || coalesce(user_agent, '')) AS visitors,"
        " (SELECT count(*) FROM rejects) AS rejected_lines FROM events WHERE is_page_view",
        "--no-sync",
    )
    assert totals == {
        "visitors": truth["totals"]["visitors"],
        "rejected_lines": truth["totals"]["rejected_lines"],
    }


def test_a_missing_bucket_is_one_line_and_exit_2(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLICKSTREAM_BUCKET", "no-such-archive")
    monkeypatch.setenv("CLICKSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    assert clickstream(["sql", "SELECT count(*) FROM events"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clickstream sql: cannot read s3://no-such-archive")
    assert "NoSuchBucket" in err and len(err.splitlines()) == 1
