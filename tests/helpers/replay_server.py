"""A local HTTP server that replays recorded exchanges with a real `vllm serve` (tests/fixtures/*.jsonl).

A request is answered with the recorded response whose method, path and JSON body match it exactly (bodies are
compared as parsed JSON, so key order does not matter); anything else gets a plain-text 404, as a wrong URL
would. `fail_next` queues failures (status and headers) served before the recording, to test retries.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def load_exchanges(*paths: Path) -> list[dict]:
    exchanges = []
    for path in paths:
        exchanges += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return exchanges


class ReplayServer:
    def __init__(self, exchanges: list[dict]) -> None:
        self.exchanges = exchanges
        self.received: list[tuple[str, str, object]] = []
        self.failures: deque[tuple[int, dict]] = deque()
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                replay.received.append((method, self.path, body))
                if replay.failures:
                    status, headers = replay.failures.popleft()
                    self._send(status, {"error": {"message": "injected failure", "code": status}}, headers)
                    return
                for exchange in replay.exchanges:
                    if (exchange["method"], exchange["path"], exchange["request"]) == (method, self.path, body):
                        self._send(exchange["status"], exchange["response"])
                        return
                self._send(404, "no recorded exchange for this request")

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                if isinstance(payload, str):
                    data, kind = payload.encode(), "text/plain; version=0.0.4"
                else:
                    data, kind = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._answer("GET")

            def do_POST(self):  # noqa: N802
                self._answer("POST")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def fail_next(self, status: int, count: int = 1, headers: dict | None = None) -> None:
        self.failures.extend([(status, headers or {})] * count)

    def __enter__(self) -> ReplayServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
