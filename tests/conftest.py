"""Shared fixtures: a hermetic environment and the local AWS stack (moto, kinesalite).

Every test starts with no `CLICKSTREAM_*` or `AWS_*` variables from the developer's shell, so a
profile or endpoint exported for real work can never leak into a test (or a test into real AWS).
The stack runs as real servers in child processes, exactly as a user runs them: moto through our
own `clickstream local-aws`, kinesalite through `tests/kinesalite/serve.js`. Our AWS calls are
never faked.

Fixtures:

- `moto_endpoint` (session): the URL of one moto server for the whole run.
- `aws` (function): moto wiped clean and the environment pointed at it; returns the endpoint.
- `kinesalite_endpoint` (session) and `kinesalite` (function): the same for kinesalite; the
  function fixture points only Kinesis (`AWS_ENDPOINT_URL_KINESIS`) at it.
- `kinesalite_factory` (function): start extra kinesalite servers (optionally persistent, with a
  data directory) that a test may kill and restart; all are stopped at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from service import aws as service_aws
from service.local_stack import reset as reset_moto

REPO = Path(__file__).resolve().parent.parent
KINESALITE_DIR = REPO / "tests" / "kinesalite"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

_ISOLATED_PREFIXES = ("CLICKSTREAM_", "AWS_")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if pytest dies (even kill -9), so no server outlives a run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
    env.update(extra)
    return env


class ServerProcess:
    """A child server that announces its address as one `NAME=value` line on stdout."""

    def __init__(self, argv: list[str], marker: str, env: dict[str, str], log_dir: Path) -> None:
        self.argv = argv
        self.marker = marker
        self.lines_before_marker: list[str] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"{Path(argv[1]).name}-{time.monotonic_ns()}.stderr"
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.value = self._wait_for_marker()
        self.startup_s = time.monotonic() - started

    def _wait_for_marker(self) -> str:
        lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def pump() -> None:  # keep draining so the child can never block on a full pipe
            for raw in stdout:
                lines.put(raw.decode(errors="replace").rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"stdout:{self.marker}").start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                self.stop()
                self._fail(f"did not print {self.marker}=... within {START_TIMEOUT_S:.0f} s")
            if line is None:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                self._fail(f"exited with code {self.proc.returncode} before printing {self.marker}")
            if line.startswith(self.marker + "="):
                return line.split("=", 1)[1].strip()
            self.lines_before_marker.append(line)

    def _fail(self, what: str) -> None:
        self._stderr.flush()
        stderr = self.stderr_path.read_text(errors="replace").strip() or "(nothing)"
        pytest.fail(f"{' '.join(self.argv)} {what}; its stderr:\n{stderr}", pytrace=False)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


# ----------------------------------------------------------------------------- isolation


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No inherited CLICKSTREAM_*/AWS_*, no ~/.aws files, no instance-metadata probes."""
    for name in list(os.environ):
        if name.startswith(_ISOLATED_PREFIXES):
            monkeypatch.delenv(name)
    missing = tmp_path / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    service_aws.reset_session()
    # Code under test may set variables directly (use_local_stack_if_running does, by design),
    # and in-process `clickstream` commands reconfigure the root logger: undo both afterwards.
    before = {k: v for k, v in os.environ.items() if k.startswith(_ISOLATED_PREFIXES)}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in [k for k in os.environ if k.startswith(_ISOLATED_PREFIXES)]:
        if name not in before:
            del os.environ[name]
    os.environ.update(before)
    service_aws.reset_session()


# ----------------------------------------------------------------------------- moto


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server for the run, started the way a user starts it: `clickstream local-aws`."""
    base = tmp_path_factory.mktemp("moto")
    server = ServerProcess(
        [sys.executable, "-m", "service.cli", "local-aws", "--port", "0"],
        "AWS_ENDPOINT_URL",
        _clean_env(CLICKSTREAM_STATE_DIR=str(base / "state")),
        base,
    )
    yield server.value
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Empty moto, and every AWS client in this test pointed at it."""
    reset_moto(moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", str(tmp_path / "state"))
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    service_aws.reset_session()
    return moto_endpoint


# ----------------------------------------------------------------------------- kinesalite


def _kinesalite_argv(data_dir: Path | None = None) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; kinesalite needs Node.js", pytrace=False)
    if not (KINESALITE_DIR / "node_modules" / "kinesalite").is_dir():
        pytest.fail(
            f"kinesalite is not installed under {KINESALITE_DIR}/node_modules: "
            "run make test (it runs npm ci)",
            pytrace=False,
        )
    argv = [node, str(KINESALITE_DIR / "serve.js"), "0"]
    if data_dir is not None:
        argv.append(str(data_dir))
    return argv


def _start_kinesalite(log_dir: Path, data_dir: Path | None = None) -> ServerProcess:
    return ServerProcess(_kinesalite_argv(data_dir), "KINESALITE_PORT", _clean_env(), log_dir)


@pytest.fixture(scope="session")
def kinesalite_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _start_kinesalite(tmp_path_factory.mktemp("kinesalite"))
    yield f"http://127.0.0.1:{server.value}"
    server.stop()


async def _delete_all_streams() -> None:
    """kinesalite has no reset API; deleting every stream (instant: deleteStreamMs=0) is one."""
    async with service_aws.aws_client("kinesis") as kinesis:
        deadline = time.monotonic() + START_TIMEOUT_S
        while names := (await kinesis.list_streams(Limit=10_000))["StreamNames"]:
            for name in names:
                # A stream still CREATING or UPDATING refuses deletion: try again next round.
                with contextlib.suppress(
                    kinesis.exceptions.ResourceInUseException,
                    kinesis.exceptions.ResourceNotFoundException,
                ):
                    await kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
            if time.monotonic() > deadline:
                pytest.fail(f"kinesalite did not delete streams {names}", pytrace=False)
            await asyncio.sleep(0.02)


@pytest.fixture
async def kinesalite(
    kinesalite_endpoint: str, aws_dummy_env: None, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Kinesis (only) served by kinesalite, with no streams; returns the endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite_endpoint)
    await _delete_all_streams()
    return kinesalite_endpoint


@pytest.fixture
def aws_dummy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region, unless another fixture (e.g. `aws`) already set them."""
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ):
        if not os.environ.get(name):
            monkeypatch.setenv(name, value)
    service_aws.reset_session()


@pytest.fixture
def kinesalite_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start extra kinesalite servers: `start(data_dir=None) -> ServerProcess` (`.value` = port).

    For crash and persistence tests: `server.stop()` (or `server.proc.kill()`) and start again
    with the same `data_dir` to find the streams still there.
    """
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None) -> ServerProcess:
        server = _start_kinesalite(tmp_path / "kinesalite-logs", data_dir)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
