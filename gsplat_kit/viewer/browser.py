"""Headless Chromium driven over the DevTools protocol: screenshots of the viewer for tests and checks.

`--screenshot` with `--virtual-time-budget` fires on the browser's virtual clock, which does not wait for
frames streamed over the websocket; driving the page over DevTools lets the caller take screenshots
when the server says a frame went out.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

FLAGS = ["--headless", "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-quic", "--hide-scrollbars", "--mute-audio"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page. Use as a context manager."""

    def __init__(self, width: int = 1024, height: int = 768, timeout: float = 60.0):
        exe = find_chromium()
        if exe is None:
            raise FileNotFoundError("chromium not found (Debian: apt-get install -y chromium; or `make browser`)")
        self.profile = Path(tempfile.mkdtemp(prefix="gk-chromium-"))
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.size = (width, height)
        self._id = 0
        self._ws = None
        try:
            port = self._devtools_port(timeout)
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(t for t in targets if t.get("type") == "page")
            from websockets.sync.client import connect

            self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout: float) -> int:
        marker = self.profile / "DevToolsActivePort"   # Chromium writes its port here
        t_end = time.time() + timeout
        while time.time() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode} before it was ready")
            if marker.is_file():
                lines = marker.read_text().splitlines()
                if lines and lines[0].strip().isdigit():
                    return int(lines[0])
            time.sleep(0.05)
        raise TimeoutError(f"chromium did not open its DevTools port within {timeout:.0f} s")

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        self._id += 1
        my_id = self._id
        self._ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        t_end = time.time() + timeout
        while True:
            msg = json.loads(self._ws.recv(timeout=max(t_end - time.time(), 0.01)))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"DevTools {method} failed: {msg['error']}")
                return msg.get("result", {})

    def navigate(self, url: str):
        # headless windows lose some height to (invisible) browser chrome: pin the viewport itself
        self.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def screenshot(self) -> np.ndarray:
        """The page as an RGB uint8 array [H, W, 3]."""
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self):
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
