"""`clickstream serve` as ECS runs it: a real uvicorn process on moto. The event stream pushes
summaries; SIGTERM with a dashboard still connected drains, checkpoints every shard, evicts the
leases and exits 0 within ECS's 30 s."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.leases import LeaseTable
from service.api_models import Summary
from service.aws import aws_client
from service.resources import ensure_resources
from service.settings import load_settings
from tests.service.conftest import Geo, Run, simulate
from tests.service.test_app import FAST, _put_lines, _wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, shipped_geo: Geo) -> Run:
    return simulate(tmp_path_factory.mktemp("serve_run"), shipped_geo, lines=3_000, seed=7)


def _start_serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", "0"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(
        target=lambda: [lines.put(raw.decode()) for raw in stdout], daemon=True
    ).start()
    try:
        line = lines.get(timeout=60)
    except queue.Empty:
        process.kill()
        pytest.fail(f"serve printed no URL; its log:\n{log.read_text()[-3000:]}")
    assert line.startswith("SERVICE_URL="), line
    return process, line.strip().removeprefix("SERVICE_URL=").rstrip("/")


def _events(url: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The first `count` server-sent events of `url`, parsed."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", url, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in response.iter_lines():
            if not line:
                if "data" in event:
                    events.append(event)
                    if len(events) == count:
                        return events
                event = {}
                continue
            field, _, value = line.partition(": ")
            event[field] = value
    return events


async def _leases(table: str) -> list[Any]:
    async with aws_client("dynamodb") as dynamodb:
        return await LeaseTable(dynamodb, table, "test-reader").list_leases()


def test_stream_pushes_summaries_and_sigterm_drains_checkpoints_and_exits(
    aws: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, small_run: Run
) -> None:
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    asyncio.run(ensure_resources(settings))
    lines = [line for line in small_run.log.read_bytes().split(b"\n") if line]
    asyncio.run(_put_lines(settings.stream, lines))
    log = tmp_path / "serve.log"
    process, url = _start_serve(dict(os.environ), log)
    try:

        def counted() -> bool:
            answer = httpx.get(f"{url}/api/summary", timeout=10)
            return answer.status_code == 200 and answer.json()["pipeline"][
                "lines_processed"
            ] >= len(lines)

        _wait_for(counted, 60, "the service to count every line")
        events = _events(f"{url}/api/stream?window=1h&limit=2", 2)
        assert [e["event"] for e in events] == ["summary", "summary"]
        assert int(events[1]["id"]) > int(events[0]["id"])
        pushed = Summary.model_validate(json.loads(events[1]["data"]))
        assert pushed.window == "1h" and len(pushed.cities) == 2
        # Nothing arrives any more, so what was pushed is what the API answers.
        hour = httpx.get(f"{url}/api/summary?window=1h&limit=2", timeout=10).json()
        # (`pipeline.commits` may still move: the last commit follows the last record.)
        assert pushed.model_dump(by_alias=True, exclude={"pipeline"}) == Summary.model_validate(
            hour
        ).model_dump(by_alias=True, exclude={"pipeline"})
        assert 0 < pushed.totals.visitors < small_run.truth["totals"]["visitors"]  # 1 h of 6

        # A dashboard stays connected while ECS stops the task.
        listener = threading.Thread(
            target=lambda: _events(f"{url}/api/stream", 1000, timeout=60), daemon=True
        )
        listener.start()
        time.sleep(1)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=35)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert took < 30, f"stopping took {took:.1f} s"
    assert "drained and checkpointed" in output
    listener.join(timeout=5)
    assert not listener.is_alive(), "the event stream was not ended by the shutdown"
    leases = asyncio.run(_leases(settings.lease_table))
    assert leases and all(lease.lease_owner is None for lease in leases), leases
    assert all(not lease.checkpoint.is_sentinel for lease in leases), leases
