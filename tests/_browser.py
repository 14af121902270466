"""Headless Chromium driven over its DevTools protocol, for the tests that look at the MLflow UI.

Uses the system's Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it) and the
``websocket-client`` package, never a downloaded browser. :func:`find_chromium` says why a
browser test cannot run here (the test then skips with that reason; in CI it never does).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> tuple[str | None, str]:
    """(path of a Chromium binary, "") or (None, why not)."""
    try:
        import websocket  # noqa: F401
    except ImportError:
        return None, "the websocket-client package is not installed (pip install -e '.[test]')"
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path, ""
    return None, "no Chromium on PATH (Debian: apt-get install chromium)"


class Browser:
    """One headless Chromium with one page; `evaluate`, `navigate`, `wait_for_text`, `screenshot`."""

    def __init__(self, binary: str, profile: Path, width: int = 1600, height: int = 1000) -> None:
        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a profile used before holds the old port
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        self.ws = None
        try:
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
                pages = [t for t in json.loads(resp.read()) if t.get("type") == "page"]
            self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        except Exception:
            self.close()
            raise
        self._id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float = 90.0) -> str:
        """The page's text once every needle is in it (the UI is a React app that fills in as
        its requests return); AssertionError naming what is missing after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"not on the page after {timeout:g} s: {missing}; page text: {text[:1500]!r}")

    def click_text(self, label: str, prefix: bool = False) -> bool:
        """Click the innermost element whose text is `label` (or starts with it); False when there is none."""
        test = "t.startsWith(want)" if prefix else "t === want"
        js = ("(() => { const want = %s; const all = [...document.querySelectorAll('button, a, span, div, label')];"
              " const hit = all.filter(e => { const t = (e.innerText || '').trim(); return t && " + test + "; })"
              ".sort((a, b) => a.innerText.length - b.innerText.length || b.querySelectorAll('*').length -"
              " a.querySelectorAll('*').length).pop();"
              " if (!hit) return false; hit.click(); return true; })()") % json.dumps(label)
        return bool(self.evaluate(js))

    def click_css(self, selector: str) -> int:
        """Click every element matching the CSS `selector`; how many there were."""
        js = "(() => { const hits = [...document.querySelectorAll(%s)]; hits.forEach(e => e.click()); " \
             "return hits.length; })()" % json.dumps(selector)
        return int(self.evaluate(js) or 0)

    def type_into(self, selector: str, text: str) -> bool:
        """Focus the first element matching `selector`, select what it holds and type `text`
        (as a user would: React sees the input events)."""
        js = "(() => { const e = document.querySelector(%s); if (!e) return false; e.focus(); " \
             "if (e.select) e.select(); return true; })()" % json.dumps(selector)
        if not self.evaluate(js):
            return False
        self.call("Input.insertText", text=text)
        return True

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=30)
