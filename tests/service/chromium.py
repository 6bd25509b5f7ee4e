"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, in a few lines.

A page that keeps a server-sent-events stream open never "finishes loading", so Chromium's
one-shot modes (`--dump-dom`, `--screenshot`, which wait for that) cannot test it. The DevTools
protocol can: navigate, evaluate JavaScript in the page as often as needed, take a screenshot.
aiohttp (already installed with aiobotocore) speaks the WebSocket; no browser-automation package
is needed for three calls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
)
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab: `navigate`, `evaluate`, `screenshot`."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._socket.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await self._socket.receive_json(timeout=30)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def navigate(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` in the page (exceptions raised here)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(result["data"]))
        return path


@contextlib.asynccontextmanager
async def headless_page(
    profile_dir: Path, width: int = 1280, height: int = 1600
) -> AsyncIterator[Page]:
    """A fresh Chromium (own profile directory, killed at the end) and its first tab."""
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    argv = [binary, *FLAGS, f"--window-size={width},{height}", "--remote-debugging-port=0"]
    argv += [f"--user-data-dir={profile_dir}", "about:blank"]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"},
    )
    drain: asyncio.Task[None] | None = None
    try:
        browser_url = await asyncio.wait_for(_devtools_url(process), 60)
        # Keep draining stderr so Chromium never blocks on a full pipe.
        drain = asyncio.create_task(_drain(process))
        port = browser_url.split("/")[2]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{port}/json/list") as response:
                targets = json.loads(await response.text())
            target = next(t for t in targets if t.get("type") == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                yield Page(socket)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if drain is not None:
            drain.cancel()


async def _devtools_url(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    seen = b""
    while True:
        line = await process.stderr.readline()
        if not line:
            raise RuntimeError(f"chromium exited before listening: {seen[-2000:]!r}")
        seen += line
        if found := _LISTENING.search(line):
            return found.group(1).decode()


async def _drain(process: asyncio.subprocess.Process) -> None:
    assert process.stderr is not None
    while await process.stderr.readline():
        pass
