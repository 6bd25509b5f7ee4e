"""The local pipeline as a small supervisor: each part runs as its own `clickstream` process.

Running the parts as separate processes, exactly as they run in production (the agent on the web
server, the service in its container), means the demo exercises the real commands, a crash of one
part shows up as that part's exit, and Ctrl-C stops them the way ECS and systemd would: SIGTERM,
newest first, with a deadline before SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ENDPOINT_PREFIX = "AWS_ENDPOINT_URL="
SERVICE_URL_PREFIX = "SERVICE_URL="  # what `clickstream serve` prints once it listens
_PR_SET_PDEATHSIG = 1


def _die_with_supervisor() -> None:
    """Linux: a part gets SIGTERM if the supervisor dies (even by kill -9), so none is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class DemoError(Exception):
    """A part of the demo could not start; the message says which and why."""


@dataclass
class Part:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class DemoSupervisor:
    """Starts parts in order, watches them, and stops them newest first."""

    data_dir: Path
    stop_timeout: float = 30.0
    parts: list[Part] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "service.cli", *args]

    def start(self, name: str, args: Sequence[str], *, stdout: int | None = None) -> Part:
        log.info("starting %s", name)
        # A session of its own: a terminal's Ctrl-C reaches only the supervisor, which then stops
        # the parts in order instead of all of them at once.
        process = subprocess.Popen(
            self.command(*args),
            env=self.env,
            stdout=stdout,
            start_new_session=True,
            preexec_fn=_die_with_supervisor,
        )
        part = Part(name, process)
        self.parts.append(part)
        return part

    def start_local_aws(self, timeout: float = 60.0) -> str:
        """Start moto on a free loopback port; every later part inherits its endpoint."""
        part = self.start("local AWS (moto)", ["local-aws", "--port", "0"], stdout=subprocess.PIPE)
        assert part.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = part.process.stdout.readline().decode(errors="replace").strip()
            if line.startswith(ENDPOINT_PREFIX):
                endpoint = line.removeprefix(ENDPOINT_PREFIX)
                self.env.update(
                    AWS_ENDPOINT_URL=endpoint,
                    AWS_ACCESS_KEY_ID=self.env.get("AWS_ACCESS_KEY_ID", "testing"),
                    AWS_SECRET_ACCESS_KEY=self.env.get("AWS_SECRET_ACCESS_KEY", "testing"),
                    AWS_REGION=self.env.get("AWS_REGION", "us-east-1"),
                )
                return endpoint
            if not line and part.process.poll() is not None:
                break
        raise DemoError("the local AWS stack did not start (see its messages above)")

    def start_service(self, args: Sequence[str]) -> Part:
        """Start `clickstream serve`; it loads while the other parts start (`service_url`)."""
        return self.start("service", ["serve", *args], stdout=subprocess.PIPE)

    def service_url(self, part: Part, timeout: float = 60.0) -> str:
        """The service's URL, once it accepts requests."""
        assert part.process.stdout is not None
        stdout = part.process.stdout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = stdout.readline().decode(errors="replace").strip()
            if line.startswith(SERVICE_URL_PREFIX):
                # Keep reading its stdout so the service can never block on a full pipe.
                threading.Thread(target=stdout.read, name="service-stdout", daemon=True).start()
                return line.removeprefix(SERVICE_URL_PREFIX)
            if not line and part.process.poll() is not None:
                break
        raise DemoError("the service did not start (see its messages above)")

    def run_once(self, name: str, args: Sequence[str]) -> None:
        """A one-shot step (setup): it must succeed before anything depends on it."""
        log.info("running %s", name)
        result = subprocess.run(self.command(*args), env=self.env, check=False)
        if result.returncode != 0:
            raise DemoError(f"{name} failed with exit code {result.returncode}")

    def watch(self, should_stop: Callable[[], bool] | None = None) -> int:
        """Wait until interrupted or a part exits; return a non-zero code if a part failed."""
        while should_stop is None or not should_stop():
            for part in self.parts:
                code = part.process.poll()
                if code is not None:
                    if code == 0:
                        log.info("%s finished", part.name)
                        return 0
                    log.error("%s exited with code %s; stopping the demo", part.name, code)
                    return 1
            time.sleep(0.5)
        return 0

    def stop(self) -> None:
        for part in reversed(self.parts):
            if part.process.poll() is None:
                part.process.send_signal(signal.SIGTERM)
                try:
                    part.process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s did not stop within %.0f s; killing it", part.name, self.stop_timeout
                    )
                    part.process.kill()
                    part.process.wait()
            log.info("stopped %s", part.name)
        self.parts.clear()
