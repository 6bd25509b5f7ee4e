"""kill -9 of a process running the tailer and the checkpoint, at random moments, restarted.

A stand-in for the shipper appends each batch to an output file (the "stream") and acknowledges
it at once; the real checkpoint machinery (AckTracker.run, PositionStore) saves positions. After
every kill the process starts again from its checkpoint file. Nothing may be missing; repeats may
only come from the lines delivered after the last checkpoint write before a kill.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = r"""
import asyncio, os, sys
from pathlib import Path
from agent.config import AgentConfig
from agent.models import Ack
from agent.positions import AckTracker, PositionStore
from agent.tailer import GlobTailer

async def main() -> None:
    pattern, state, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    config = AgentConfig(
        path=pattern, from_start=True, state_dir=state, poll_interval_s=0.05,
        checkpoint_interval_s=0.05, rotate_wait_s=0.5, max_in_flight_bytes=1 << 20,
    )
    store = PositionStore(config.positions_file)
    store.lock()
    tracker = AckTracker(store, config)
    saved = tracker.load()
    tailer = GlobTailer(config, saved=saved, flow=tracker, saved_files=tracker.saved_files())
    stop = asyncio.Event()
    checkpointer = asyncio.create_task(tracker.run(stop))
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    async for batch in tailer.batches():
        os.write(fd, b"".join(line.data + b"\n" for line in batch.lines))  # "Kinesis accepted"
        tracker.ack(Ack(batch.file, batch.start, batch.end))

asyncio.run(main())
"""

WRITER = r"""
import os, signal, sys, time
path, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
fd = os.open(path, flags, 0o644)
reopen = False
def on_hup(signum, frame):
    global reopen
    reopen = True
signal.signal(signal.SIGHUP, on_hup)
start = time.monotonic()
for n in range(0, count, 100):
    if reopen:  # logrotate's postrotate, like Apache's graceful restart
        reopen = False
        os.close(fd)
        fd = os.open(path, flags, 0o644)
    block = range(n, min(n + 100, count))
    os.write(fd, b"".join(b"%08d GET /cafe/menu.php 200\n" % i for i in block))
    delay = start + (n + 100) / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""


async def start_driver(pattern: str, state: Path, out: Path) -> asyncio.subprocess.Process:
    driver = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DRIVER, pattern, str(state), str(out), stdout=subprocess.PIPE
    )
    assert driver.stdout is not None
    assert (await driver.stdout.readline()).strip() == b"ready"
    return driver


async def logrotate(log: Path, writer_pid: int) -> None:
    config = log.parent / "logrotate.conf"
    config.write_text(
        f"{log} {{\n    create\n    rotate 50\n    nocompress\n    postrotate\n"
        f"        kill -HUP {writer_pid} || true\n    endscript\n}}\n"
    )
    config.chmod(0o644)
    process = await asyncio.create_subprocess_exec(
        *["logrotate", "-f", "-s", str(log.parent / "logrotate.state"), str(config)],
        stderr=subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()


@pytest.mark.slow
@pytest.mark.parametrize(
    "rotate",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                shutil.which("logrotate") is None,
                reason="the real logrotate is not installed (apt-get install -y logrotate)",
            ),
        ),
    ],
    ids=["no-rotation", "logrotate-create"],
)
async def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path, rotate: bool) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    log, state, out = logs / "access_log", tmp_path / "state", tmp_path / "delivered"
    count, rate = 200_000, 40_000.0
    rnd = random.Random(20261122)
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(log), str(count), str(rate)
    )
    kills = 0
    driver = await start_driver(str(log), state, out)
    try:
        while writer.returncode is None or kills < 5:  # at least five, however slow the box
            await asyncio.sleep(rnd.uniform(0.2, 0.9))
            driver.send_signal(signal.SIGKILL)
            await driver.wait()
            kills += 1
            if rotate and kills % 2:
                await logrotate(log, writer.pid)  # while the agent is down
            driver = await start_driver(str(log), state, out)
            if rotate and kills % 3 == 0:
                await logrotate(log, writer.pid)  # while it runs
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writer.wait(), timeout=0.01)
        # Let the last run catch up (repeats count too, so count distinct lines).
        for _ in range(150):
            if len(delivered_lines(out)) >= count:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)
    finally:
        for process in (driver, writer):
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                await process.wait()
    delivered = collections.Counter(int(x[:8]) for x in out.read_bytes().splitlines())
    missing = set(range(count)) - set(delivered)
    repeated = sum(times - 1 for times in delivered.values())
    rotated = len(list(logs.glob("access_log.*")))
    print(f"{kills} kills, {rotated} rotations, {repeated} repeats, {len(missing)} missing")
    assert kills >= 5
    assert not missing, f"{len(missing)} lines missing after {kills} kills"
    # Repeats come only from lines delivered after the last checkpoint write before each kill
    # (checkpoints every 50 ms, at most ~40k lines/s): far below one repeat per line.
    assert repeated < kills * 10_000, f"{repeated} repeats after {kills} kills"


def delivered_lines(out: Path) -> set[bytes]:
    return set(out.read_bytes().splitlines()) if out.exists() else set()
