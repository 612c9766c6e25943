"""Open a report in headless Chromium over the DevTools protocol (tests and the benchmark).

Why not Selenium or Playwright: a report check needs five protocol commands (navigate,
evaluate, screenshot, and the console/exception/log events), which a websocket and JSON do;
the ``websockets`` client is the only dependency. Chromium is found on PATH (Debian's
``chromium``) or at ``$CHROMIUM``.

Console errors are every ``Runtime.consoleAPICalled`` of type error/assert, every
``Runtime.exceptionThrown`` and every ``Log.entryAdded`` of level error (where Chromium
reports Content-Security-Policy violations and failed loads).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class BrowserUnavailable(RuntimeError):
    """No Chromium binary or no websocket client: browser checks cannot run here."""


def find_chromium() -> str | None:
    """The Chromium binary ($CHROMIUM, then chromium / chromium-browser / google-chrome on PATH)."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


@dataclass
class PageLoad:
    """What loading one page produced."""
    url: str
    load_ms: float                   # navigation start -> load event end (the page's own timing)
    dom_content_loaded_ms: float
    wall_ms: float                   # navigate command -> load event, as this client saw it
    errors: list[str] = field(default_factory=list)


class Chromium:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, binary: str | None = None, timeout_s: float = 60.0, width: int = 1400, height: int = 1000):
        try:
            from websockets.sync.client import connect
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise BrowserUnavailable(f"the websockets package is not installed ({e})") from None
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserUnavailable("no Chromium found (apt-get install chromium, or set $CHROMIUM)")
        self.timeout_s = timeout_s
        self._profile = tempfile.mkdtemp(prefix="af-chromium-")
        self._stack = contextlib.ExitStack()
        self._proc = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--remote-debugging-port=0", f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port, path = self._devtools_address()
            self._ws = self._stack.enter_context(
                connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=timeout_s))
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)
        self._events: list[dict] = []
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def _devtools_address(self) -> tuple[str, str]:
        f = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserUnavailable(f"{self.binary} exited with {self._proc.returncode} at start")
            if f.is_file():
                lines = f.read_text().split("\n")
                if len(lines) >= 2 and lines[1]:
                    return lines[0], lines[1]
            time.sleep(0.05)
        raise BrowserUnavailable(f"{self.binary} did not open its DevTools port in {self.timeout_s:.0f} s")

    # ------------------------------------------------------------------ protocol

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        mid = next(self._ids)
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout_s
        while True:
            m = json.loads(self._ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if m.get("id") == mid:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self._events.append(m)

    def send(self, method: str, params: dict | None = None) -> dict:
        """A command to the page's session."""
        return self._call(method, params, self._session)

    def _wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for i, e in enumerate(self._events):
                if e.get("method") == method:
                    return self._events.pop(i)
            m = json.loads(self._ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if "method" in m:
                self._events.append(m)

    def console_errors(self) -> list[str]:
        """Errors seen so far (console.error, uncaught exceptions, error log entries incl. CSP)."""
        out = []
        for e in self._events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                en = p["entry"]
                out.append(f"log[{en.get('source')}]: {en.get('text')}")
        return out

    # ------------------------------------------------------------------ page

    def load(self, path: str | Path) -> PageLoad:
        """Navigate to a local file and wait for its load event."""
        url = Path(path).resolve().as_uri()
        self._events.clear()
        t0 = time.perf_counter()
        self.send("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired")
        wall = (time.perf_counter() - t0) * 1e3
        nav = self.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                            " return n ? {load: n.loadEventEnd, dcl: n.domContentLoadedEventEnd} : null; })()")
        nav = nav or {"load": wall, "dcl": wall}
        return PageLoad(url, float(nav["load"]), float(nav["dcl"]), wall, self.console_errors())

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate failed: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def screenshot(self, out: str | Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        p = Path(out)
        p.write_bytes(base64.b64decode(data))
        return p

    def close(self) -> None:
        try:
            self._stack.close()
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Chromium", "PageLoad", "BrowserUnavailable", "find_chromium"]
