"""The embedded local AWS stack: moto in server mode on 127.0.0.1, and how other commands find it.

moto's in-process `mock_aws` does not intercept aiobotocore, so the stack is always a real HTTP
server (DESIGN.md §5). `clickstream local-aws` runs it and leaves a discovery file in the state
directory; `clickstream setup`, `serve` and friends call `use_local_stack_if_running` first, so a
developer who started the stack in one terminal needs no `export` in the next one. The file is
trusted only if its process is alive and its port answers: a stale file from a crashed run must
never point a command at nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DISCOVERY_FILE = "local-aws.json"
LOCAL_REGION = "us-east-1"
DUMMY_CREDENTIAL = "testing"


class MotoNotInstalled(ImportError):
    """moto is an optional extra; the message says how to install it."""

    def __init__(self) -> None:
        super().__init__(
            "moto is not installed; the local AWS stack needs the 'local' extra: "
            "pip install 'clickstream[local]'"
        )


def _threaded_server_class() -> type[Any]:
    """Import moto lazily: it is an optional extra and takes ~0.5 s to import."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise MotoNotInstalled() from exc

    class _GuardedServer(ThreadedMotoServer):  # type: ignore[misc, valid-type]
        """ThreadedMotoServer.start() waits forever if binding fails; surface the error instead."""

        startup_error: BaseException | None = None

        def _server_entry(self) -> None:
            try:
                super()._server_entry()
            except BaseException as exc:
                self.startup_error = exc
                self._server_ready_event.set()

    return _GuardedServer


class MotoServer:
    """moto's server bound to loopback only (its default, 0.0.0.0, would expose it to the LAN)."""

    def __init__(self, port: int = 0, host: str = HOST) -> None:
        self._host = host
        self._requested_port = port
        self._server: Any = None
        self._port: int | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        server = _threaded_server_class()(self._host, self._requested_port, verbose=False)
        server.start()
        if server.startup_error is not None:
            raise OSError(
                f"cannot start moto on {self._host}:{self._requested_port}: {server.startup_error}"
            ) from server.startup_error
        self._server = server
        self._port = int(server.get_host_and_port()[1])

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("MotoServer is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://{self._host}:{self.port}"

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def discovery_path(state_dir: Path) -> Path:
    return Path(state_dir) / DISCOVERY_FILE


def write_discovery(state_dir: Path, endpoint: str, pid: int | None = None) -> Path:
    """Atomic (rename), so a reader never sees half a file."""
    path = discovery_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"endpoint": endpoint, "pid": pid or os.getpid()}) + "\n")
    tmp.replace(path)
    return path


def remove_discovery(state_dir: Path, pid: int | None = None) -> None:
    """Remove the file only if it is still ours: a newer instance may have replaced it."""
    path = discovery_path(state_dir)
    info = read_discovery(state_dir)
    if info is not None and info.get("pid") != (pid or os.getpid()):
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_discovery(state_dir: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(discovery_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("ignoring unreadable %s: %s", discovery_path(state_dir), exc)
        return None
    return info if isinstance(info, dict) else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _port_open(endpoint: str, timeout: float = 0.5) -> bool:
    parts = urlsplit(endpoint)
    if not parts.hostname or not parts.port:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return True
    except OSError:
        return False


def running_endpoint(state_dir: Path) -> str | None:
    """The endpoint of a live `clickstream local-aws`, or None (missing or stale file)."""
    info = read_discovery(state_dir)
    if info is None:
        return None
    endpoint, pid = info.get("endpoint"), info.get("pid")
    if not isinstance(endpoint, str) or not isinstance(pid, int):
        log.debug("ignoring malformed %s: %r", discovery_path(state_dir), info)
        return None
    if not _pid_alive(pid):
        log.debug("ignoring stale %s: process %d is gone", discovery_path(state_dir), pid)
        return None
    if not _port_open(endpoint):
        log.debug("ignoring stale %s: nothing answers at %s", discovery_path(state_dir), endpoint)
        return None
    return endpoint


def use_local_stack_if_running(state_dir: Path) -> str | None:
    """Point botocore at a running local stack unless the user already chose an endpoint.

    Returns the endpoint switched to, None when nothing changed. Dummy credentials and region
    are filled in only where unset, so that a developer with no AWS account needs nothing else.
    """
    if os.environ.get("AWS_ENDPOINT_URL"):
        return None
    endpoint = running_endpoint(state_dir)
    if endpoint is None:
        return None
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        os.environ["AWS_ACCESS_KEY_ID"] = DUMMY_CREDENTIAL
        os.environ["AWS_SECRET_ACCESS_KEY"] = DUMMY_CREDENTIAL
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        os.environ["AWS_REGION"] = LOCAL_REGION
    from service.aws import reset_session

    reset_session()  # credentials resolved before the switch must not be reused
    log.info("using the local AWS stack at %s (from %s)", endpoint, discovery_path(state_dir))
    return endpoint


def reset(endpoint: str, timeout: float = 10.0) -> None:
    """Wipe every moto backend (moto's own control API, not an AWS call)."""
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/moto-api/reset", data=b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
