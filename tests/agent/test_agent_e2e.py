"""`clickstream agent` end to end, as operators run it: a subprocess, a real local Kinesis.

Scenarios (the issue's acceptance tests):

- end to end: a simulated log in, every line read back from every shard exactly once, SIGTERM
  exits 0 with the checkpoint at the file's end;
- rotation: the real `logrotate` (create and copytruncate) while `clickstream simulate --rate`
  writes: every line logrotate kept arrives exactly once;
- crash: `kill -9` at random (seeded) moments of a 200k-line backfill, restarted each time:
  nothing missing, duplicates only from where the checkpoint stood at a kill, each with its
  original event id and content;
- stall: Kinesis unreachable (a loopback proxy that drops every connection): health turns red
  after the stall time, SIGTERM still exits promptly without checkpointing unacknowledged lines,
  and nothing is lost once Kinesis is back.

Records are read back with GetRecords from every shard and split with the consumer's own decoder
(`consumers.decode`: KPL deaggregation and the agent's envelope). Nothing about our AWS calls is
faked; faults are injected on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumers.decode import decode_records
from consumers.models import UserRecord
from service.aws import aws_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LOGROTATE = shutil.which("logrotate") or (
    "/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None
)
STREAM = "agent-e2e"


# ----------------------------------------------------------------------------- helpers


def clickstream(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> None:
    subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )


def simulate_bulk(out: Path, lines: int, seed: int = 1) -> None:
    clickstream("simulate", "--lines", str(lines), "--seed", str(seed), "--out", str(out))


def simulate_realtime(out: Path, rate: int, lines: int, seed: int) -> subprocess.Popen[bytes]:
    """`clickstream simulate --rate`: the web server appending lines as requests complete."""
    argv = ["simulate", "--rate", str(rate), "--lines", str(lines), "--seed", str(seed)]
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *argv, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class Agent:
    """`clickstream agent` as a child process, logging JSON lines to a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "agent", *argv],
            cwd=REPO,
            env={**env, "CLICKSTREAM_LOG_FORMAT": "json"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self._seen = 0

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    async def wait_for_log(self, message: str, limit_s: float = 60) -> dict[str, Any]:
        """The next log entry (after those already waited for) whose message contains `message`."""
        deadline = time.monotonic() + limit_s
        while True:
            entries = self.logs()
            for index in range(self._seen, len(entries)):
                if message in entries[index].get("message", ""):
                    self._seen = index + 1
                    return entries[index]
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited ({self.proc.returncode}):\n{self.log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"agent did not log {message!r}:\n{self.log_path.read_text()}")
            await asyncio.sleep(0.05)

    async def stop(self, limit_s: float = 30) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds until the process was gone)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None:
            if time.monotonic() - started > limit_s:
                self.proc.kill()
                pytest.fail(f"agent ignored SIGTERM for {limit_s}s:\n{self.log_path.read_text()}")
            await asyncio.sleep(0.02)
        self._log.close()
        return self.proc.returncode, time.monotonic() - started

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait()
        self._log.close()

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("level") == "ERROR"]


def agent_env(state: Path, **extra: str) -> dict[str, str]:
    """The test's environment (its AWS endpoint fixtures) plus the agent's state directory."""
    return {**os.environ, "CLICKSTREAM_STATE_DIR": str(state), **extra}


def checkpoint(state: Path) -> dict[str, int]:
    """Path -> acknowledged offset, from the agent's checkpoint file (summed per path)."""
    try:
        document = json.loads((state / "agent-positions.json").read_text())
    except FileNotFoundError:
        return {}
    offsets: dict[str, int] = defaultdict(int)
    for entry in document["positions"].values():
        offsets[entry["path"]] += entry["offset"]
    return dict(offsets)


async def wait_for_checkpoint(
    state: Path, path: Path, size: int, agent: Agent, limit_s: float = 90
) -> float:
    """Seconds until the checkpoint of `path` reached `size`."""
    started = time.monotonic()
    while checkpoint(state).get(str(path), 0) < size:
        if agent.proc.poll() is not None:
            pytest.fail(f"agent exited ({agent.proc.returncode}):\n{agent.log_path.read_text()}")
        if time.monotonic() - started > limit_s:
            pytest.fail(f"checkpoint {checkpoint(state)} did not reach {size} in {limit_s}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def create_stream(name: str = STREAM, shards: int = 2) -> None:
    async with aws_client("kinesis") as kinesis:
        await kinesis.create_stream(StreamName=name, ShardCount=shards)
        for _ in range(500):
            summary = await kinesis.describe_stream_summary(StreamName=name)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                return
            await asyncio.sleep(0.02)
    pytest.fail(f"stream {name} did not become ACTIVE")


async def read_stream(name: str = STREAM) -> list[UserRecord]:
    """Every user record of every shard, from TRIM_HORIZON to the end, deaggregated."""
    out: list[UserRecord] = []
    async with aws_client("kinesis") as kinesis:
        shards = (await kinesis.list_shards(StreamName=name))["Shards"]
        for shard in shards:
            shard_id = shard["ShardId"]
            iterator = (
                await kinesis.get_shard_iterator(
                    StreamName=name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
                )
            )["ShardIterator"]
            while iterator:
                response = await kinesis.get_records(ShardIterator=iterator, Limit=10_000)
                out.extend(decode_records(shard_id, response["Records"]))
                if not response["Records"]:
                    break
                iterator = response.get("NextShardIterator")
    return out


def lines_by_offset(path: Path) -> dict[int, bytes]:
    lines, offset = {}, 0
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            lines[offset] = line[:-1]
        offset += len(line)
    return lines


def split_event_id(event_id: str) -> tuple[str, int]:
    fingerprint, _, offset = event_id.rpartition(":")
    return fingerprint, int(offset)


@dataclass
class Delivery:
    """What came out of the stream, checked against what the files hold."""

    records: int
    duplicates: list[tuple[str, int]]  # (event id, extra copies)
    unmatched: list[UserRecord]  # records whose line is in no file (copytruncate's window)


def check_delivery(records: list[UserRecord], files: list[Path]) -> Delivery:
    """Every line of every file arrived, under an event id naming its offset in that content;
    repeats of an event id carry the same line; records matching no file line are returned."""
    by_event: dict[str, bytes] = {}
    copies: Counter[str] = Counter()
    for record in records:
        assert not record.event_id.startswith("kinesis:"), f"not an agent envelope: {record}"
        known = by_event.setdefault(record.event_id, record.line)
        assert known == record.line, f"{record.event_id} carries two different lines"
        copies[record.event_id] += 1
    # (offset, line) -> event ids: a file line is matched by its offset and content.
    index: dict[tuple[int, bytes], list[str]] = defaultdict(list)
    for event_id, line in by_event.items():
        index[(split_event_id(event_id)[1], line)].append(event_id)
    matched: set[str] = set()
    content_of: dict[str, Path] = {}
    missing = []
    for path in files:
        for offset, line in lines_by_offset(path).items():
            hits = index.get((offset, line), [])
            if not hits:
                missing.append((path.name, offset, line[:60]))
                continue
            assert len(hits) == 1, f"{path.name}@{offset} arrived under several ids: {hits}"
            matched.add(hits[0])
            fingerprint = split_event_id(hits[0])[0]
            # One content (fingerprint) lives in one file, or in a file and its copy.
            content_of.setdefault(fingerprint + path.name, path)
    assert not missing, f"{len(missing)} lines never arrived, e.g. {missing[:3]}"
    unmatched = [r for r in records if r.event_id not in matched]
    duplicates = [(e, n - 1) for e, n in copies.items() if n > 1]
    return Delivery(len(records), duplicates, unmatched)


async def http_get(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(get)


def sample(metrics_text: str, name: str) -> float:
    """One unlabelled (or first labelled) sample from Prometheus text."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ----------------------------------------------------------------------------- end to end


async def test_the_command_ships_a_log_exactly_once_and_stops_cleanly(
    aws: str, tmp_path: Path
) -> None:
    log_file, state = tmp_path / "access_log", tmp_path / "state"
    simulate_bulk(log_file, 20_000, seed=3)
    size = log_file.stat().st_size
    await create_stream()
    # systemd's Type=notify: the agent says READY=1 once the stream is open, STOPPING=1 on SIGTERM.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(5)
    agent = Agent(
        [str(log_file), "--from-start", "--stream", STREAM, "--metrics-port", "0"],
        agent_env(state, NOTIFY_SOCKET=str(tmp_path / "notify")),
        tmp_path / "agent.log",
    )
    listening = await agent.wait_for_log("metrics on")
    running = await agent.wait_for_log("agent running")
    assert running["first_run"] is True and running["from_start"] is True
    assert await asyncio.to_thread(notify.recv, 256) == b"READY=1"
    seconds = await wait_for_checkpoint(state, log_file, size, agent)
    print(f"\n20,000 lines through the command to moto in {seconds:.2f}s")

    url = f"http://127.0.0.1:{listening['metrics_port']}"
    status, body = await http_get(url + "/healthz")
    assert status == 200, body
    status, text = await http_get(url + "/metrics")
    assert status == 200
    assert sample(text, "clickstream_agent_lines_sent_total") == 20_000
    assert sample(text, "clickstream_agent_healthy") == 1
    assert sample(text, "clickstream_agent_last_successful_put_timestamp_seconds") > 0
    assert 'clickstream_agent_retries_total{cause="throttled"} 0.0' in text
    for _ in range(40):  # the lag gauge is refreshed every second
        _, text = await http_get(url + "/metrics")
        if f'clickstream_agent_lag_bytes{{file="{log_file}"}} 0.0' in text:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("lag of the file did not reach 0:\n" + text)

    code, stop_seconds = await agent.stop()
    print(f"SIGTERM to exit: {stop_seconds:.2f}s")
    assert code == 0
    assert await asyncio.to_thread(notify.recv, 256) == b"STOPPING=1"
    notify.close()
    assert stop_seconds < 10
    assert checkpoint(state) == {str(log_file): size}
    stopped = agent.logs()[-1]
    assert stopped["message"].startswith("agent stopped") and stopped["drained"] is True
    assert not agent.errors()

    delivery = check_delivery(await read_stream(), [log_file])
    assert delivery.records == 20_000
    assert delivery.duplicates == [] and delivery.unmatched == []


# ----------------------------------------------------------------------------- rotation


@pytest.mark.skipif(LOGROTATE is None, reason="logrotate (Debian package) is not installed")
@pytest.mark.parametrize("mode", ["create", "copytruncate"])
async def test_rotation_by_logrotate_delivers_every_kept_line_once(
    kinesalite: str, tmp_path: Path, mode: str
) -> None:
    assert LOGROTATE is not None
    logs, state = tmp_path / "logs", tmp_path / "state"
    logs.mkdir(mode=0o755)
    log_file = logs / "access_log"
    await create_stream()
    writer = simulate_realtime(log_file, rate=500, lines=5000, seed=7)
    # As on a web server: in create mode, postrotate tells the writer to reopen its log (Apache's
    # graceful restart); copytruncate exists for writers that cannot, and sends nothing.
    reopen = f"    postrotate\n        kill -HUP {writer.pid}\n    endscript\n"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        f"{log_file} {{\n    rotate 50\n    {mode}\n    missingok\n    nocompress\n"
        f"{reopen if mode == 'create' else ''}}}\n"
    )
    conf.chmod(0o644)
    # The writer handles SIGHUP from before its first line: rotate only once lines are there.
    while not (log_file.exists() and log_file.stat().st_size > 0):
        assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
        await asyncio.sleep(0.05)
    agent = Agent(
        [str(log_file), "--from-start", "--stream", STREAM, "--no-metrics", "--linger-ms", "50"],
        agent_env(state),
        tmp_path / "agent.log",
    )
    await agent.wait_for_log("agent running")
    rotations = 0
    while writer.poll() is None and rotations < 5:
        await asyncio.sleep(1.7)
        result = await asyncio.to_thread(
            subprocess.run,
            [LOGROTATE, "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        rotations += 1
    await asyncio.to_thread(writer.wait)
    assert writer.returncode == 0, writer.stderr.read() if writer.stderr else ""
    assert rotations >= 4
    files = sorted(logs.iterdir())
    kept = sum(len(lines_by_offset(f)) for f in files)
    assert len(files) >= 5

    # Wait until every kept line is in the stream (rotated files are read to their end).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            check_delivery(await read_stream(), files)
            break
        except AssertionError:
            await asyncio.sleep(1)
    code, _ = await agent.stop()
    assert code == 0
    delivery = check_delivery(await read_stream(), files)
    print(
        f"\n{mode}: {rotations} rotations, {kept} lines kept by logrotate, {delivery.records}"
        f" records, {len(delivery.unmatched)} lines read before a copytruncate lost them"
    )
    assert delivery.duplicates == []
    if mode == "create":
        assert delivery.unmatched == []
    else:
        # Lines written between logrotate's copy and its truncate exist in no file; the agent
        # may have read them from the original first. Never more than a moment's worth (500/s).
        assert len(delivery.unmatched) <= 100 * rotations
    assert not agent.errors()


# ----------------------------------------------------------------------------- crash


async def test_kill_9_at_random_moments_loses_nothing(kinesalite: str, tmp_path: Path) -> None:
    log_file, state = tmp_path / "access_log", tmp_path / "state"
    simulate_bulk(log_file, 200_000, seed=11)
    size = log_file.stat().st_size
    budget = 2 * 1024 * 1024
    env = agent_env(state, CLICKSTREAM_MAX_IN_FLIGHT_BYTES=str(budget))
    argv = [str(log_file), "--from-start", "--stream", STREAM, "--no-metrics"]
    await create_stream()
    rng = random.Random(20261122)
    # Kill moments: once the checkpoint passes a random point of the file (so that every kill
    # lands mid-run however fast the machine is), plus a random delay of up to a checkpoint
    # interval or two (so that a kill also lands between checkpoint writes).
    targets = [int(rng.uniform(i + 0.1, i + 0.9) / 5.5 * size) for i in range(5)]
    kills: list[int] = []  # the checkpoint right after each kill: where the next run resumes
    for attempt, target in enumerate(targets):
        agent = Agent(argv, env, tmp_path / f"agent-{attempt}.log")
        await agent.wait_for_log("agent running")
        await wait_for_checkpoint(state, log_file, target, agent)
        await asyncio.sleep(rng.uniform(0, 0.5))
        agent.kill()
        kills.append(checkpoint(state).get(str(log_file), 0))
    assert sum(c < size for c in kills) >= 4, f"the run ended before the kills: {kills}"
    agent = Agent(argv, env, tmp_path / "agent-final.log")
    await agent.wait_for_log("agent running")  # before that, SIGTERM is Python's default
    await wait_for_checkpoint(state, log_file, size, agent, limit_s=120)
    code, _ = await agent.stop()
    assert code == 0

    delivery = check_delivery(await read_stream(), [log_file])
    assert delivery.unmatched == []
    # A replay starts at the checkpoint a kill left behind and covers what was in flight (plus
    # what was acknowledged since the last checkpoint write, every 0.25 s).
    windows = [(c, c + 2 * budget + 8 * 1024 * 1024) for c in kills]
    for event_id, _ in delivery.duplicates:
        offset = split_event_id(event_id)[1]
        assert any(low <= offset < high for low, high in windows), (event_id, kills)
    copies = sum(n for _, n in delivery.duplicates)
    print(
        f"\nkill -9 at checkpoints {kills} of {size} bytes: {delivery.records} records for"
        f" 200,000 lines, {copies} duplicates (same event id, same line)"
    )


# ----------------------------------------------------------------------------- stall


class DroppingProxy:
    """A TCP proxy on loopback that can drop every connection (Kinesis unreachable) and recover."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def drop(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def append(log_file: Path, source: Path) -> int:
    """Append `source`'s lines to `log_file` (the web server writing); returns the new size."""
    with log_file.open("ab") as out:
        out.write(source.read_bytes())
    return log_file.stat().st_size


async def wait_until(predicate: Callable[[], Any], limit_s: float, what: str) -> float:
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > limit_s:
            pytest.fail(f"{what} did not happen within {limit_s}s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_unreachable_kinesis_turns_health_red_and_loses_nothing(
    kinesalite: str, tmp_path: Path
) -> None:
    log_file, state = tmp_path / "access_log", tmp_path / "state"
    more = [tmp_path / f"more-{i}" for i in range(2)]
    simulate_bulk(log_file, 2_000, seed=21)
    for i, path in enumerate(more):
        simulate_bulk(path, 1_000, seed=22 + i)
    await create_stream()
    host, port = kinesalite.removeprefix("http://").split(":")
    proxy = DroppingProxy(host, int(port))
    await proxy.start()
    env = agent_env(state, AWS_ENDPOINT_URL_KINESIS=f"http://127.0.0.1:{proxy.port}")
    stall_s = 2.0
    argv = [str(log_file), "--from-start", "--stream", STREAM, "--metrics-port", "0"]
    argv += ["--stall-seconds", str(stall_s), "--shutdown-timeout", "2", "--linger-ms", "50"]
    agent = Agent(argv, env, tmp_path / "agent.log")
    try:
        url = f"http://127.0.0.1:{(await agent.wait_for_log('metrics on'))['metrics_port']}"
        await wait_for_checkpoint(state, log_file, log_file.stat().st_size, agent)
        assert (await http_get(url + "/healthz"))[0] == 200

        async def healthz_is(status: int) -> bool:
            return (await http_get(url + "/healthz"))[0] == status

        # Kinesis goes away while the web server keeps writing: red after the stall time.
        proxy.drop()
        size = append(log_file, more[0])
        red_after = await wait_until(lambda: healthz_is(503), 30, "/healthz turning 503")
        assert red_after >= stall_s - 0.5
        _, text = await http_get(url + "/metrics")
        assert sample(text, "clickstream_agent_healthy") == 0
        assert sample(text, "clickstream_agent_lag_bytes") > 0
        await agent.wait_for_log("unhealthy")
        # ... and green again once it is back, with every line delivered.
        proxy.restore()
        await wait_for_checkpoint(state, log_file, size, agent)
        await wait_until(lambda: healthz_is(200), 10, "/healthz turning 200 again")
        _, text = await http_get(url + "/metrics")
        assert sample(text, 'clickstream_agent_retries_total{cause="connection"}') > 0

        # Unreachable again, then SIGTERM: a bounded stop that checkpoints only what was acked.
        proxy.drop()
        acknowledged = size
        size = append(log_file, more[1])
        await asyncio.sleep(0.5)
        code, stop_seconds = await agent.stop()
        assert code == 0
        assert stop_seconds < 2 + 5, stop_seconds
        assert checkpoint(state)[str(log_file)] == acknowledged
        stopped = agent.logs()[-1]
        assert stopped["drained"] is False and stopped["unacknowledged_bytes"] > 0
        print(
            f"\nunhealthy after {red_after:.1f}s;"
            f" SIGTERM while unreachable: exit 0 in {stop_seconds:.2f}s"
        )

        # Back again: the next run sends the rest.
        proxy.restore()
        agent = Agent(argv, env, tmp_path / "agent-2.log")
        await agent.wait_for_log("agent running")
        await wait_for_checkpoint(state, log_file, size, agent)
        code, _ = await agent.stop()
        assert code == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        await proxy.close()
    delivery = check_delivery(await read_stream(), [log_file])
    assert delivery.unmatched == []
    assert delivery.records == 4_000 + sum(n for _, n in delivery.duplicates)
    print(f"{len(delivery.duplicates)} duplicates (puts cut off mid-call by the proxy)")


# ----------------------------------------------------------------------------- faults


class FaultyKinesis:
    """An HTTP proxy in front of kinesalite that fails PutRecords the way Kinesis does.

    Per PutRecords call, a seeded choice: forward it; answer 400 throttling or 500 without
    forwarding; or forward only some entries and answer the others with a per-entry
    ProvisionedThroughputExceededException (a partial failure: the rest really are stored).
    Every other call passes through. kinesalite checks that a request is signed, not the
    signature, so a request with entries removed is still accepted.
    """

    def __init__(self, upstream_host: str, upstream_port: int, seed: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rng = random.Random(seed)
        self.actions: Counter[str] = Counter()
        self.stored: Counter[bytes] = Counter()  # Data of every entry Kinesis accepted
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @staticmethod
    async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        first, *lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return first, headers, body

    @staticmethod
    def _message(first: bytes, headers: dict[str, str], body: bytes) -> bytes:
        headers = {**headers, "content-length": str(len(body))}
        headers.pop("x-amz-crc32", None)
        lines = [first] + [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _answer(self, status: int, error: str) -> bytes:
        body = json.dumps({"__type": error, "message": "injected by the test"}).encode()
        reason = b"Bad Request" if status == 400 else b"Internal Server Error"
        first = b"HTTP/1.1 %d %b" % (status, reason)
        headers = {"content-type": "application/x-amz-json-1.1", "x-amzn-requestid": "fault"}
        return self._message(first, headers, body)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            while True:
                first, headers, body = await self._read_message(reader)
                if not headers.get("x-amz-target", "").endswith(".PutRecords"):
                    up_writer.write(self._message(first, headers, body))
                    await up_writer.drain()
                    writer.write(self._message(*await self._read_message(up_reader)))
                    await writer.drain()
                    continue
                writer.write(await self._put_records(first, headers, body, up_reader, up_writer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            up_writer.close()

    async def _put_records(
        self,
        first: bytes,
        headers: dict[str, str],
        body: bytes,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bytes:
        request = json.loads(body)
        entries = request["Records"]
        # Every kind at least once, whatever the seed: the first call is throttled, the first
        # call with several entries partly fails.
        if not self.actions:
            action = "throttle"
        elif not self.actions["partial"] and len(entries) > 1:
            action = "partial"
        else:
            action = self.rng.choices(["ok", "partial", "throttle", "500"], [6, 2, 1, 1])[0]
        if action == "partial" and len(entries) < 2:
            action = "throttle"
        self.actions[action] += 1
        if action == "throttle":
            return self._answer(400, "ProvisionedThroughputExceededException")
        if action == "500":
            return self._answer(500, "InternalFailure")
        keep = list(range(len(entries)))
        if action == "partial":
            dropped = set(self.rng.sample(keep, self.rng.randint(1, len(entries) - 1)))
            keep = [i for i in keep if i not in dropped]
        forwarded = {**request, "Records": [entries[i] for i in keep]}
        up_writer.write(self._message(first, headers, json.dumps(forwarded).encode()))
        await up_writer.drain()
        status, response_headers, response_body = await self._read_message(up_reader)
        response = json.loads(response_body)
        if b" 200 " not in status + b" ":
            return self._message(status, response_headers, response_body)
        results: list[dict[str, Any]] = [
            {
                "ErrorCode": "ProvisionedThroughputExceededException",
                "ErrorMessage": "Rate exceeded (injected by the test)",
            }
        ] * len(entries)
        for index, result in zip(keep, response["Records"], strict=True):
            results[index] = result
            if "ErrorCode" not in result:
                self.stored[entries[index]["Data"].encode()] += 1
        merged = {
            "FailedRecordCount": sum("ErrorCode" in r for r in results),
            "Records": results,
        }
        return self._message(status, response_headers, json.dumps(merged).encode())


@pytest.mark.parametrize("aggregate", [True, False], ids=["aggregated", "one-line-records"])
async def test_partial_failures_and_throttling_lose_nothing_and_resend_nothing_stored(
    kinesalite: str, tmp_path: Path, aggregate: bool
) -> None:
    log_file, state = tmp_path / "access_log", tmp_path / "state"
    # Aggregated records hold up to 1 MiB: enough lines that a call carries several of them.
    lines = 40_000 if aggregate else 10_000
    simulate_bulk(log_file, lines, seed=31)
    size = log_file.stat().st_size
    await create_stream()
    host, port = kinesalite.removeprefix("http://").split(":")
    proxy = FaultyKinesis(host, int(port), seed=5)
    await proxy.start()
    env = agent_env(state, AWS_ENDPOINT_URL_KINESIS=f"http://127.0.0.1:{proxy.port}")
    argv = [str(log_file), "--from-start", "--stream", STREAM, "--metrics-port", "0"]
    argv += ["--linger-ms", "20", "--aggregate" if aggregate else "--no-aggregate"]
    if not aggregate:
        argv += ["--max-in-flight-bytes", str(512 * 1024)]  # many calls of up to 500 records
    agent = Agent(argv, env, tmp_path / "agent.log")
    try:
        url = f"http://127.0.0.1:{(await agent.wait_for_log('metrics on'))['metrics_port']}"
        await wait_for_checkpoint(state, log_file, size, agent, limit_s=120)
        _, text = await http_get(url + "/metrics")
        code, _ = await agent.stop()
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        await proxy.close()
    assert code == 0
    assert proxy.actions["partial"] > 0 and proxy.actions["throttle"] > 0, proxy.actions
    assert sample(text, 'clickstream_agent_retries_total{cause="throttled"}') > 0
    server_errors = sample(text, 'clickstream_agent_retries_total{cause="server_error"}')
    assert (server_errors > 0) == (proxy.actions["500"] > 0), (server_errors, proxy.actions)
    resent = [data for data, n in proxy.stored.items() if n > 1]
    assert resent == [], f"{len(resent)} entries were stored twice"
    delivery = check_delivery(await read_stream(), [log_file])
    assert delivery.duplicates == [] and delivery.unmatched == []
    assert delivery.records == lines
    print(
        f"\naggregate={aggregate}: PutRecords calls {dict(proxy.actions)}, no line lost or resent"
    )


async def test_a_second_signal_stops_without_waiting_for_the_drain(
    kinesalite: str, tmp_path: Path
) -> None:
    log_file, state, more = tmp_path / "access_log", tmp_path / "state", tmp_path / "more"
    simulate_bulk(log_file, 1_000, seed=41)
    simulate_bulk(more, 1_000, seed=42)
    await create_stream()
    host, port = kinesalite.removeprefix("http://").split(":")
    proxy = DroppingProxy(host, int(port))
    await proxy.start()
    env = agent_env(state, AWS_ENDPOINT_URL_KINESIS=f"http://127.0.0.1:{proxy.port}")
    argv = [str(log_file), "--from-start", "--stream", STREAM, "--metrics-port", "0"]
    argv += ["--shutdown-timeout", "60", "--linger-ms", "20"]
    agent = Agent(argv, env, tmp_path / "agent.log")
    try:
        url = f"http://127.0.0.1:{(await agent.wait_for_log('metrics on'))['metrics_port']}"
        acknowledged = log_file.stat().st_size
        await wait_for_checkpoint(state, log_file, acknowledged, agent)
        proxy.drop()
        append(log_file, more)

        async def all_read() -> bool:
            _, text = await http_get(url + "/metrics")
            return sample(text, "clickstream_agent_lines_read_total") == 2_000

        await wait_until(all_read, 10, "the new lines being read")
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        await agent.wait_for_log("stopping (drain, checkpoint, exit)")
        await asyncio.sleep(0.3)
        code, _ = await agent.stop()  # the second signal
        seconds = time.monotonic() - started
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        await proxy.close()
    assert code == 0
    assert seconds < 5, seconds
    assert checkpoint(state)[str(log_file)] == acknowledged
    assert agent.logs()[-1]["drained"] is False
    print(f"\ntwo SIGTERMs with lines in flight and Kinesis unreachable: exit 0 in {seconds:.2f}s")


async def test_kinesis_unreachable_at_start_is_waited_for(kinesalite: str, tmp_path: Path) -> None:
    log_file, state = tmp_path / "access_log", tmp_path / "state"
    simulate_bulk(log_file, 1_000, seed=51)
    await create_stream()
    host, port = kinesalite.removeprefix("http://").split(":")
    proxy = DroppingProxy(host, int(port))
    await proxy.start()
    proxy.drop()
    env = agent_env(state, AWS_ENDPOINT_URL_KINESIS=f"http://127.0.0.1:{proxy.port}")
    argv = [str(log_file), "--from-start", "--stream", STREAM, "--metrics-port", "0"]
    argv += ["--stall-seconds", "1"]
    agent = Agent(argv, env, tmp_path / "agent.log")
    try:
        url = f"http://127.0.0.1:{(await agent.wait_for_log('metrics on'))['metrics_port']}"
        await agent.wait_for_log("cannot open stream")

        async def red() -> bool:
            return (await http_get(url + "/healthz"))[0] == 503

        await wait_until(red, 10, "/healthz turning 503 while the stream cannot be opened")
        proxy.restore()
        await agent.wait_for_log("agent running", limit_s=30)
        await wait_for_checkpoint(state, log_file, log_file.stat().st_size, agent)
        assert (await http_get(url + "/healthz"))[0] == 200
        code, _ = await agent.stop()
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        await proxy.close()
    assert code == 0
    delivery = check_delivery(await read_stream(), [log_file])
    assert delivery.records == 1_000 and delivery.duplicates == []
