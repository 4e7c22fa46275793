"""A minimal Chrome DevTools Protocol client (aiohttp WebSocket) for headless Chromium tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import aiohttp

from stream.kafka.embedded import free_port


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, target_id: str = "") -> None:
        self.ws, self.target_id = ws, target_id
        self._ids = itertools.count(1)

    async def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        """One CDP command's result; a page that stops answering (a dialog blocks its script)
        fails the caller after ``timeout`` instead of hanging it."""
        mid = next(self._ids)
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params or {}}))
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads((await self.ws.receive()).data)
                if msg.get("id") == mid:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]

    async def eval(self, expr: str):
        r = await self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"page error: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expr: str, timeout: float = 30.0):
        """Until ``expr`` is truthy. A name the page's script has not defined yet (a new tab is
        still loading: seen under load, where the tab answered before its script had run) is
        "not yet", not an error; any other page error fails at once."""
        end = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                v = await self.eval(expr)
            except RuntimeError as exc:
                if "ReferenceError" not in str(exc):
                    raise
                v = None
            if v:
                return v
            if asyncio.get_running_loop().time() > end:
                raise AssertionError(f"page never satisfied: {expr}")
            await asyncio.sleep(0.2)

    async def screenshot(self, path: Path) -> Path:
        r = await self.send("Page.captureScreenshot", {"format": "png"})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(r["data"]))
        return path


class Chromium:
    def __init__(self, binary: str, width: int = 1400, height: int = 900) -> None:
        self.binary, self.port = binary, free_port()
        self.size = f"{width},{height}"
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.proc: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Chromium:
        self.proc = subprocess.Popen(
            [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--window-size={self.size}", f"--user-data-dir={self.profile}",
             f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.session = aiohttp.ClientSession()
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(f"http://127.0.0.1:{self.port}/json/version") as r:
                    if r.status == 200:
                        return self
            await asyncio.sleep(0.2)
        raise RuntimeError("chromium did not start")

    async def open(self, url: str) -> Page:
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?{url}") as r:
            target = await r.json()
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws, target["id"])
        await page.send("Page.enable")
        return page

    async def close(self, page: Page) -> None:
        """Close the page's tab: a benchmark measures one page at a time."""
        await page.ws.close()
        async with self.session.get(f"http://127.0.0.1:{self.port}/json/close/{page.target_id}"):
            pass

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the browser and every process it started, as far as they
        still run: what drawing the page costs, renderer, compositor and all."""
        procs: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
        tick = os.sysconf("SC_CLK_TCK")
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                procs[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        tree, total = {self.proc.pid}, 0.0
        for _ in range(6):  # browser -> zygotes -> renderers: a few levels deep
            tree |= {pid for pid, (ppid, _) in procs.items() if ppid in tree}
        for pid in tree:
            total += procs.get(pid, (0, 0.0))[1]
        return total

    async def __aexit__(self, *exc) -> None:
        if self.session:
            await self.session.close()
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
