"""A real browser for the screen's tests: Debian's headless ``chromium``, driven over the DevTools protocol.

:class:`Browser` starts Chromium on one page with ``--remote-debugging-port=0`` (the port it chose is in
``DevToolsActivePort`` in its profile directory), connects to the page's DevTools WebSocket with
websocket-client, and offers what the tests need: evaluate JavaScript, wait for a condition (polled in
the page, bounded), click an element, resize the viewport, take a screenshot and say how much of it is
not background. It runs in its own process group and is stopped (then killed) by its pid at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

WAIT_S = 30.0
CHROMIUM = "chromium"

# How much of a screenshot is drawn (not the black background), measured in the page itself:
# no image library is needed on the Python side.
_MEASURE_PNG = """
(async (b64) => {
  const img = new Image();
  img.src = "data:image/png;base64," + b64;
  await img.decode();
  const c = document.createElement("canvas");
  c.width = img.width; c.height = img.height;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let lit = 0;
  const colors = new Set();
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] + d[i + 1] + d[i + 2] > 96) lit++;
    if (i % 64 === 0) colors.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  }
  return {width: c.width, height: c.height, lit: lit / (d.length / 4), colors: colors.size};
})
"""


def available() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if shutil.which(CHROMIUM) is None:
        return "chromium is not installed (apt-get install chromium; provisioning/dev.sh does)"
    return None


class Browser:
    """One headless Chromium showing one page."""

    def __init__(self, profile: Path, url: str, width: int = 800, height: int = 480) -> None:
        self.profile = profile
        self.log_path = profile.parent / "chromium.log"
        profile.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio",
                "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its zygote and renderers go with it
        )
        self._next_id = 0
        try:
            self.ws = websocket.create_connection(self._page_socket(), timeout=WAIT_S, suppress_origin=True)
            self.resize(width, height)
            self.call("Page.navigate", {"url": url})
            self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")
        except BaseException:
            self.close()
            raise

    def _page_socket(self) -> str:
        deadline = time.monotonic() + WAIT_S
        port_file = self.profile / "DevToolsActivePort"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.proc.returncode}); see {self.log_path}")
            with contextlib.suppress(OSError, ValueError):
                port = int(port_file.read_text().split()[0])
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = json.load(r)
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            threading.Event().wait(0.05)  # the browser is starting: nothing to wait on but its files
        raise TimeoutError(f"chromium's DevTools did not come up in {WAIT_S:g} s; see {self.log_path}")

    # -- DevTools ----------------------------------------------------------------------------------
    def call(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = WAIT_S) -> dict[str, Any]:
        """One command; its result (events that arrive meanwhile are ignored)."""
        self._next_id += 1
        ident = self._next_id
        self.ws.settimeout(timeout_s)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def eval(self, expression: str, timeout_s: float = WAIT_S) -> Any:
        """The value of a JavaScript expression in the page (promises awaited; again after a navigation)."""
        for _ in range(20):
            try:
                result = self.call(
                    "Runtime.evaluate",
                    {"expression": expression, "returnByValue": True, "awaitPromise": True},
                    timeout_s + 5,
                )
                break
            except RuntimeError as e:
                if "context" not in str(e):  # "Execution context was destroyed": the page was (re)loading
                    raise
                threading.Event().wait(0.05)
        else:
            raise RuntimeError(f"{expression[:80]}: the page kept reloading")
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, condition: str, timeout_s: float = WAIT_S, what: str = "") -> Any:
        """Until the JavaScript ``condition`` is truthy (polled in the page every 10 ms); its value."""
        value = self.eval(
            f"""new Promise((resolve) => {{
              const end = performance.now() + {timeout_s * 1000};
              const poll = () => {{
                let v = null;
                try {{ v = ({condition}); }} catch (e) {{ v = null; }}
                if (v || performance.now() > end) resolve(v || null); else setTimeout(poll, 10);
              }};
              poll();
            }})""",
            timeout_s,
        )
        if not value:
            raise AssertionError(f"the page never showed {what or condition} within {timeout_s:g} s")
        return value

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def mouse(self, kind: str, selector: str) -> None:
        """``mousePressed`` or ``mouseReleased`` at the middle of the element (pointer events follow)."""
        box = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        self.call("Input.dispatchMouseEvent",
                  {"type": kind, "x": box[0], "y": box[1], "button": "left", "buttons": 1, "clickCount": 1})

    def click(self, selector: str) -> None:
        self.mouse("mousePressed", selector)
        self.mouse("mouseReleased", selector)

    def screenshot(self, path: Path) -> dict[str, Any]:
        """Write a PNG of the page to ``path``; its size, the share of drawn pixels and the colours seen."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return dict(self.eval(f"{_MEASURE_PNG}({json.dumps(data)})"))

    # -- the end -----------------------------------------------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its renderers, should any outlive it
        self._log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
