"""A real Chromium without a screen, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: no
port, nothing beyond the standard library): open a page, run JavaScript in it or in one of its frames, take
screenshots, and collect what the page logged as an error.

The protocol is JSON messages, each ended by a NUL byte, read by Chromium from fd 3 and written to fd 4
(https://chromedevtools.github.io/devtools-protocol/). `.ci/install-chromium.sh` installs Debian's package.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REQUIRE = "DISTILLERY_REQUIRE_BROWSER"


def chromium_or_skip() -> str:
    """Chromium's path; without one the test is skipped, or fails where DISTILLERY_REQUIRE_BROWSER=1 (CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = "no Chromium here (.ci/install-chromium.sh installs Debian's package)"
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but {reason}")
        pytest.skip(reason)
    return found


def _high(fd: int) -> int:
    """The fd moved above 3 and 4, so that placing the pipe ends there in the child cannot close one another."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium with one page; `with Browser(path, profile) as page: page.open(url) ...`."""

    def __init__(self, executable: str, profile: Path, width: int = 1400, height: int = 900, timeout: float = 60):
        self.executable, self.profile, self.size, self.timeout = executable, profile, (width, height), timeout
        self.errors: list[str] = []  # exceptions thrown and console errors, in any frame
        self._buffer, self._next_id, self._session = b"", 0, None

    def __enter__(self) -> Browser:
        to_browser, self._to_browser = map(_high, os.pipe())
        self._from_browser, from_browser = map(_high, os.pipe())

        def pipes_at_3_and_4() -> None:
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        width, height = self.size
        command = [
            self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            "--no-first-run", f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip
        self.log = open(self.profile.parent / f"{self.profile.name}.log", "w")  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(
            command, pass_fds=(3, 4, to_browser, from_browser), preexec_fn=pipes_at_3_and_4,
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(OSError, AssertionError):  # it may be gone already
            self._call("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.log.close()

    # --- the protocol ---
    def _call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self._note(reply)

    def call(self, method: str, **params) -> dict:
        """A command to the page."""
        return self._call(method, self._session, **params)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"Chromium did not answer within {self.timeout} s (log: {self.log.name})"
            block = os.read(self._from_browser, 1 << 20)
            assert block, f"Chromium closed the pipe (log: {self.log.name})"
            self._buffer += block
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _note(self, event: dict) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))

    # --- what a test does with the page ---
    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str, context: int | None = None):
        """The value of a JavaScript expression in the page (or in a frame's execution context)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.call("Runtime.evaluate", **params, **({"contextId": context} if context else {}))
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str, context: int | None = None, timeout: float | None = None):
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression, context)
            if value:
                return value
            assert time.monotonic() < deadline, f"never true: {expression}"
            time.sleep(0.1)

    def frame_context(self, url_prefix: str) -> int:
        """An execution context in the page's child frame whose URL starts with `url_prefix` (a data: iframe
        is another origin, which the page's own JavaScript cannot read)."""
        deadline = time.monotonic() + self.timeout
        while True:
            tree = self.call("Page.getFrameTree")["frameTree"]
            frames = [child["frame"] for child in tree.get("childFrames", [])]
            frame = next((f for f in frames if f.get("url", "").startswith(url_prefix)), None)
            if frame:
                return self.call("Page.createIsolatedWorld", frameId=frame["id"])["executionContextId"]
            assert time.monotonic() < deadline, (
                f"no frame at {url_prefix[:40]}...: {[f.get('url', '')[:40] for f in frames]}"
            )
            time.sleep(0.1)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
