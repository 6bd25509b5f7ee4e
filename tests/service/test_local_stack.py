"""`clickstream local-aws`, the discovery file, and the moto fixture the other tests rely on."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import local_stack
from service.aws import aws_client
from service.cli import local_aws
from service.local_stack import (
    MotoServer,
    discovery_path,
    running_endpoint,
    use_local_stack_if_running,
    write_discovery,
)
from service.settings import load_settings
from tests.conftest import ServerProcess

pytestmark = pytest.mark.integration


def _start_cli(state_dir: Path, log_dir: Path) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLICKSTREAM_"))}
    env["CLICKSTREAM_STATE_DIR"] = str(state_dir)
    return ServerProcess(
        [sys.executable, "-m", "service.cli", "local-aws", "--port", "0"],
        "AWS_ENDPOINT_URL",
        env,
        log_dir,
    )


def _dead_pid() -> int:
    """A pid that certainly belonged to a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_endpoint_and_cleans_up_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    state = tmp_path / "state"
    server = _start_cli(state, tmp_path)
    try:
        endpoint = server.value
        # Scripts parse the first stdout line (`head -1`): nothing may come before it.
        assert server.lines_before_marker == []
        assert endpoint.startswith("http://127.0.0.1:")
        assert int(endpoint.rsplit(":", 1)[1]) > 0
        info = json.loads(discovery_path(state).read_text())
        assert info == {"endpoint": endpoint, "pid": server.proc.pid}
        assert running_endpoint(state) == endpoint
        print(f"moto via CLI started in {server.startup_s:.2f} s")
        server.proc.send_signal(sig)
        assert server.proc.wait(timeout=15) == 0
    finally:
        code = server.stop()
    assert code == 0
    assert not discovery_path(state).exists()
    stderr = server.stderr_path.read_text()
    assert f"export AWS_ENDPOINT_URL={endpoint}" in stderr  # the human hint goes to stderr
    assert "Traceback" not in stderr


def test_use_local_stack_if_running_adopts_a_live_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MotoServer() as server:
        write_discovery(tmp_path, server.endpoint)  # this process is alive
        assert use_local_stack_if_running(tmp_path) == server.endpoint
        assert os.environ["AWS_ENDPOINT_URL"] == server.endpoint
        assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == "testing"
        assert os.environ["AWS_REGION"] == "us-east-1"


def test_use_local_stack_keeps_an_endpoint_the_user_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MotoServer() as server:
        write_discovery(tmp_path, server.endpoint)
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        assert use_local_stack_if_running(tmp_path) is None
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"


def test_use_local_stack_keeps_existing_credentials_and_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mine")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with MotoServer() as server:
        write_discovery(tmp_path, server.endpoint)
        assert use_local_stack_if_running(tmp_path) == server.endpoint
    assert os.environ["AWS_ACCESS_KEY_ID"] == "mine"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert "AWS_REGION" not in os.environ


def test_stale_discovery_file_with_dead_pid_is_ignored(tmp_path: Path) -> None:
    with MotoServer() as server:  # the port even answers: the dead pid alone makes it stale
        write_discovery(tmp_path, server.endpoint, pid=_dead_pid())
        assert use_local_stack_if_running(tmp_path) is None
    assert "AWS_ENDPOINT_URL" not in os.environ
    assert "AWS_ACCESS_KEY_ID" not in os.environ


def test_stale_discovery_file_with_closed_port_is_ignored(tmp_path: Path) -> None:
    with MotoServer() as server:
        endpoint = server.endpoint
    write_discovery(tmp_path, endpoint)  # live pid (ours), but nothing listens any more
    assert use_local_stack_if_running(tmp_path) is None
    assert "AWS_ENDPOINT_URL" not in os.environ


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", '{"endpoint": 5, "pid": "x"}'])
def test_malformed_discovery_file_is_ignored(tmp_path: Path, content: str) -> None:
    discovery_path(tmp_path).write_text(content)
    assert use_local_stack_if_running(tmp_path) is None


def test_no_discovery_file(tmp_path: Path) -> None:
    assert use_local_stack_if_running(tmp_path / "nowhere") is None


def test_remove_discovery_leaves_a_newer_instances_file(tmp_path: Path) -> None:
    write_discovery(tmp_path, "http://127.0.0.1:1234", pid=os.getpid() + 1)
    local_stack.remove_discovery(tmp_path)
    assert discovery_path(tmp_path).exists()


def test_moto_server_port_in_use_fails_fast(tmp_path: Path) -> None:
    with MotoServer() as first:
        started = time.monotonic()
        with pytest.raises(OSError, match=str(first.port)):
            MotoServer(port=first.port).start()
        assert time.monotonic() - started < 5


def test_cli_without_moto_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "moto", None)  # makes `import moto...` raise ImportError
    monkeypatch.setitem(sys.modules, "moto.server", None)
    monkeypatch.setenv("CLICKSTREAM_STATE_DIR", str(tmp_path))
    code = local_aws.run(argparse.Namespace(port=0), load_settings())
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'clickstream[local]'" in err
    assert not discovery_path(tmp_path).exists()


async def test_endpoint_answers_real_aiobotocore_calls(aws: str) -> None:
    async with aws_client("s3") as s3:
        await s3.create_bucket(Bucket="probe")
        await s3.put_object(Bucket="probe", Key="k", Body=b"v")
        body = await (await s3.get_object(Bucket="probe", Key="k"))["Body"].read()
    assert body == b"v"
    async with aws_client("kinesis") as kinesis:
        await kinesis.create_stream(StreamName="probe", ShardCount=1)
        assert "probe" in (await kinesis.list_streams())["StreamNames"]


async def test_aws_fixture_starts_each_test_empty(aws: str) -> None:
    """Runs after the test above (file order): the reset wiped its bucket and stream."""
    async with aws_client("s3") as s3:
        assert (await s3.list_buckets())["Buckets"] == []
    async with aws_client("kinesis") as kinesis:
        assert (await kinesis.list_streams())["StreamNames"] == []
