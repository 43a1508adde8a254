"""A client of an engine server (`engine_server.py`): the engine of a KD chunk job whose GPUs an engine job holds.

It offers the `Engine` interface, so a chunk job saves each row as its result arrives, as with an engine of its
own. All of a call's requests are sent at once (a thread writes them while results are read), so the server's
engine sees every row and batches them with the other clients' rows. The protocol is `wire.py`'s.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from ..errors import DistilleryError
from .base import GenerationRequest, GenerationResult, SamplingSettings, TokenLogprob
from .wire import hello, parse_result, request_line

SEND_BLOCK_BYTES = 1 << 20
HANDSHAKE_TIMEOUT_S = 120.0


class EngineGone(DistilleryError):
    """The server closed the connection, or never got ready: the rows generated so far are kept by the caller."""


class RemoteEngine:
    def __init__(self, connection: socket.socket, lines, ready: dict, describe: str) -> None:
        self.connection = connection
        self.lines = lines  # the connection's buffered reader (made once: a second one would lose read-ahead)
        self.describe = describe
        self.kind: str = ready["kind"]
        self.max_model_len: int | None = ready.get("max_model_len")
        self.engine_id: str = ready["engine_id"]
        self.start_seconds: float = float(ready.get("start_seconds") or 0.0)
        self.slot: int = ready.get("slot", 0)
        self.gpus: str = ready.get("gpus") or ""
        self._versions: dict[str, str] = ready.get("versions") or {}
        self.wait_seconds = 0.0  # how long the client waited for the server to get ready

    @classmethod
    def connect(
        cls, path: str, tag: str, client: str, is_running: Callable[[], bool], timeout_s: float, describe: str
    ) -> RemoteEngine:
        """Wait until the server at `path` accepts (it binds once its engine is ready), then say hello.
        `is_running` tells a server still starting from one that died: waiting on a dead one fails at once."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                connection.close()
            if not is_running():
                raise EngineGone(f"the engine ({describe}) stopped before it was ready", hint="its log says why")
            if time.monotonic() > deadline:
                raise EngineGone(f"the engine ({describe}) was not ready within {timeout_s:.0f} s", hint="see its log")
            time.sleep(0.5)
        connection.settimeout(HANDSHAKE_TIMEOUT_S)
        lines = connection.makefile("rb")
        try:
            connection.sendall(hello(tag, client))
            answer = json.loads(lines.readline() or b"{}")
        except (OSError, ValueError) as exc:
            connection.close()
            raise EngineGone(f"the engine ({describe}) did not answer: {exc}") from None
        connection.settimeout(None)
        if "ready" not in answer:
            connection.close()
            raise DistilleryError(f"the engine ({describe}) refused this chunk: {answer.get('error', answer)}")
        engine = cls(connection, lines, answer["ready"], describe)
        engine.wait_seconds = time.monotonic() - started
        return engine

    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    def close(self) -> None:
        self.connection.close()

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int) -> list[list[TokenLogprob]]:
        raise DistilleryError("the KD engine server generates only; scoring needs an engine of its own")

    def generate(self, requests: Iterable[GenerationRequest], sampling: SamplingSettings) -> Iterator[GenerationResult]:
        """Results in the order they finish. The sampling settings are the server's (checked by the tag)."""
        requests = list(requests)
        if not requests:
            return
        sender = threading.Thread(target=self._send, args=(requests,), name="engine-client-send", daemon=True)
        sender.start()
        outstanding = {request.request_id for request in requests}
        while outstanding:
            try:
                raw = self.lines.readline()
            except OSError:  # reset rather than closed: the server died with requests of ours unread
                raw = b""
            if not raw:
                raise EngineGone(
                    f"the engine ({self.describe}) closed the connection with {len(outstanding)} of "
                    f"{len(requests)} rows unanswered",
                    hint="the rows saved so far are kept: run the chunk again to resume (the engine's log says why)",
                )
            message = json.loads(raw)
            if "error" in message:
                row = message.get("id")
                raise DistilleryError(f"the engine ({self.describe}) failed row {row}: {message['error']}")
            result = parse_result(message)
            outstanding.discard(result.request_id)
            yield result
        sender.join()

    def _send(self, requests: list[GenerationRequest]) -> None:
        """Write every request; a server that is gone shows as end of file to the reader, so errors stop here."""
        block = bytearray()
        try:
            for request in requests:
                block += request_line(request)
                if len(block) >= SEND_BLOCK_BYTES:
                    self.connection.sendall(block)
                    block.clear()
            if block:
                self.connection.sendall(block)
        except OSError:
            return
