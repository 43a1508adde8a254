"""A local OpenAI-compatible completions server that misbehaves on purpose, to test the client under load.

It answers `GET /v1/models` and `POST /v1/completions` (token-id prompts, single or batched, as distillery sends
them) with bodies computed from each prompt, so a test can tell which request a result answers: `expected_choice`
says what a prompt's choice must be. With `faults=True` some requests, picked by their arrival number, are not
answered properly: the connection is dropped, the answer is a 500 or a 429 (Retry-After: 0), the bytes sent are
not HTTP, or a 200's body is cut short. `stall_first=N` leaves the first N completions requests unanswered for
STALL_S (a client's timeout must fire). `completions_reply` replaces every completions answer by a fixed
(status, content type, body), e.g. a 200 that is not JSON.

It binds 127.0.0.1 only, on a free port, and runs in its own thread and event loop; `with FlakyServer() as server`
starts it and stops it (connections included). Each connection serves at most MAX_REQUESTS_PER_CONNECTION requests
and waits at most IDLE_S for the next one, so no loop of the server is unbounded.
"""

from __future__ import annotations

import asyncio
import json
import threading

MAX_REQUESTS_PER_CONNECTION = 1000
IDLE_S = 30.0
MAX_BODY_BYTES = 1 << 20
STALL_S = 3.0
# By arrival number modulo 100: 5% of the requests fail, each way once in a hundred.
FAULTS = {7: "drop", 23: "500", 41: "429", 59: "garbage", 83: "truncated"}
MODEL = "stub-model"


def expected_choice(prompt: list[int], index: int = 0) -> dict:
    """The choice the server answers for `prompt`: a text, token ids and next-token logprobs derived from it."""
    total = sum(prompt)
    return {
        "index": index,
        "text": f"t{total}",
        "token_ids": [total % 50_000, len(prompt)],
        "finish_reason": "length",
        "logprobs": {"top_logprobs": [{f"s{total}": -0.25, "other": -1.5}]},
    }


def completions_answer(body: dict) -> dict:
    prompt = body["prompt"]
    prompts = [prompt] if prompt and isinstance(prompt[0], int) else prompt
    n = int(body.get("n") or 1)
    choices = [expected_choice(p, i * n + j) for i, p in enumerate(prompts) for j in range(n)]
    return {"object": "text_completion", "model": body.get("model"), "choices": choices}


def http_response(status: int, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}.get(status, "?")
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


class FlakyServer:
    def __init__(
        self, faults: bool = True, completions_reply: tuple[int, str, bytes] | None = None, stall_first: int = 0
    ) -> None:
        self.faults = faults
        self.stalls_left = stall_first
        self.completions_reply = completions_reply
        self.arrivals = 0
        self.faults_served: dict[str, int] = {}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flaky-server", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FlakyServer:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop)
        self._server = started.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _stop(self) -> None:
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(asyncio.current_task())
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                request = await self._read_request(reader)
                if request is None or not await self._answer(writer, *request):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._connections.discard(asyncio.current_task())
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, dict | None] | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = int({k.strip().lower(): v.strip() for k, v in headers.items()}.get("content-length", 0))
        if length > MAX_BODY_BYTES:
            return None
        raw = await reader.readexactly(length) if length else b""
        return method, path, json.loads(raw) if raw else None

    async def _answer(self, writer: asyncio.StreamWriter, method: str, path: str, body: dict | None) -> bool:
        """Send one answer; False when the connection is to be closed."""
        self.arrivals += 1
        fault = FAULTS.get(self.arrivals % 100) if self.faults else None
        if fault:
            self.faults_served[fault] = self.faults_served.get(fault, 0) + 1
            return await self._misbehave(writer, fault)
        if path == "/v1/completions" and self.stalls_left > 0:
            self.stalls_left -= 1
            await asyncio.sleep(STALL_S)
            return False
        if (method, path) == ("GET", "/v1/models"):
            payload = http_response(200, json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode())
        elif (method, path) == ("POST", "/v1/completions") and self.completions_reply:
            status, kind, data = self.completions_reply
            payload = http_response(status, data, kind)
        elif (method, path) == ("POST", "/v1/completions"):
            payload = http_response(200, json.dumps(completions_answer(body)).encode())
        else:
            payload = http_response(404, b"not found", "text/plain")
        writer.write(payload)
        await writer.drain()
        return True

    async def _misbehave(self, writer: asyncio.StreamWriter, fault: str) -> bool:
        error = json.dumps({"error": {"message": f"injected {fault}"}}).encode()
        if fault == "500":
            writer.write(http_response(500, error))
        elif fault == "429":
            writer.write(http_response(429, error, extra="retry-after: 0\r\n"))
        elif fault == "garbage":
            writer.write(b"\x00\xff this is not HTTP \xfe\r\n\r\n")
        elif fault == "truncated":
            writer.write(http_response(200, b'{"choices": [')[:-4])
        await writer.drain()
        return fault in ("500", "429")  # the others end the connection
