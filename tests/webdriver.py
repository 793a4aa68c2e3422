"""Just enough of the W3C WebDriver protocol to drive Debian's headless Chromium through
chromedriver in tests: open a page, find, read, type, click, wait, screenshot."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from opa_sidecar import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else (
    "Chromium and ChromeDriver are not installed (Debian packages chromium and "
    "chromium-driver): `make test` installs them when it runs as root; otherwise install "
    "them to run the browser tests")
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class Browser:
    def __init__(self) -> None:
        assert CHROMIUM and CHROMEDRIVER, MISSING
        port = free_port()
        self._driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._base = f"http://127.0.0.1:{port}"
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{self._base}/status", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "chromedriver did not start"
                time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                f"--user-data-dir={self._profile}"]
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}})
        self._session = f"/session/{session['sessionId']}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(method, self._base + path, json=body, timeout=60)
        payload = response.json()
        if response.status_code != 200:
            raise AssertionError(f"WebDriver {method} {path}: {payload}")
        return payload["value"]

    def _session_call(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, self._session + path, body)

    def get(self, url: str) -> None:
        self._session_call("POST", "/url", {"url": url})

    def elements(self, css: str) -> list[str]:
        found = self._session_call("POST", "/elements", {"using": "css selector", "value": css})
        return [element[_ELEMENT] for element in found]

    def wait_for(self, css: str, seconds: float = 15.0) -> str:
        deadline = time.monotonic() + seconds
        while True:
            found = self.elements(css)
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"nothing matched {css!r} within {seconds}s"
            time.sleep(0.1)

    def text(self, css: str) -> str:
        return str(self._session_call("GET", f"/element/{self.wait_for(css)}/text"))

    def texts(self, css: str) -> list[str]:
        return [str(self._session_call("GET", f"/element/{e}/text")) for e in self.elements(css)]

    def click(self, css: str) -> None:
        self._session_call("POST", f"/element/{self.wait_for(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        self._session_call("POST", f"/element/{self.wait_for(css)}/value", {"text": text})

    def clear(self, css: str) -> None:
        self._session_call("POST", f"/element/{self.wait_for(css)}/clear", {})

    def attribute(self, css: str, name: str) -> str | None:
        value = self._session_call("GET", f"/element/{self.wait_for(css)}/attribute/{name}")
        return None if value is None else str(value)

    def resize(self, width: int, height: int) -> None:
        """The window's size; headless, the page's viewport is as wide as the window."""
        self._session_call("POST", "/window/rect", {"width": width, "height": height})

    def run(self, script: str, *args: Any) -> Any:
        return self._session_call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._session_call("GET", "/screenshot")))

    def screenshot_page(self, path: Path, width: int, *, most: int = 6000) -> None:
        """The whole page at `width` (the window made as tall as the page, up to `most`
        pixels), then the window as it was."""
        self.run("window.scrollTo(0, 0)")
        height = int(self.run("return document.documentElement.scrollHeight"))
        frame = int(self.run("return window.outerHeight - window.innerHeight"))
        self.resize(width, min(max(height, 600), most) + frame)
        self.screenshot(path)
        self.resize(width, 1000)

    def quit(self) -> None:
        try:
            self._session_call("DELETE", "")
        finally:
            self._driver.terminate()
            self._driver.wait(timeout=10)
            shutil.rmtree(self._profile, ignore_errors=True)
