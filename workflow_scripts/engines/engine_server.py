"""One engine, served on a Unix socket to any number of clients at once: a slot of a KD engine job.

`python -m workflow_scripts.engines.engine_server --socket PATH --spec JSON` opens the engine the spec names
(`async_engines.py`), binds PATH only once it is ready (a client that can connect can generate), and answers
every client's requests as they finish, in the protocol of `wire.py`. It stops on SIGTERM, or when the process
that started it dies (Linux: PR_SET_PDEATHSIG), so no engine outlives its job and holds GPUs on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass

from ..errors import DistilleryError, first_line
from ..setting import from_dict, to_dict
from .base import EngineSettings, SamplingSettings, new_engine_id
from .wire import line, parse_request, result_line

# A request line carries its prompt's token ids: long chat prompts exceed asyncio's 64 KiB default.
MAX_LINE_BYTES = 64 << 20


@dataclass(frozen=True)
class SlotSpec:
    """What a slot serves: its engine and sampling settings, the tag clients must ask for (the KD job's
    settings hash), its number in the job and the GPUs it was given."""

    engine: EngineSettings
    sampling: SamplingSettings
    tag: str
    slot: int = 0
    gpus: str = ""

    def to_json(self) -> str:
        data = {"engine": to_dict(self.engine), "sampling": to_dict(self.sampling)}
        return json.dumps({**data, "tag": self.tag, "slot": self.slot, "gpus": self.gpus})

    @classmethod
    def from_json(cls, text: str) -> SlotSpec:
        data = json.loads(text)
        engine, sampling = from_dict(EngineSettings, data["engine"]), from_dict(SamplingSettings, data["sampling"])
        return cls(engine, sampling, data["tag"], data["slot"], data["gpus"])


class EngineServer:
    def __init__(self, engine, spec: SlotSpec, start_seconds: float) -> None:
        self.engine = engine
        self.spec = spec
        self.engine_id = new_engine_id()
        self.ready = {
            "engine_id": self.engine_id,
            "kind": engine.kind,
            "max_model_len": engine.max_model_len,
            "start_seconds": round(start_seconds, 3),
            "versions": engine.versions(),
            "slot": spec.slot,
            "gpus": spec.gpus,
            "pid": os.getpid(),
        }
        self.dead = asyncio.Event()  # the engine failed as a whole: the server stops
        self.clients: set[asyncio.StreamWriter] = set()

    def drop_clients(self) -> None:
        """Close every connection at once: a stopping engine answers nothing more, and its clients must hear it
        now (they keep what they saved), not after the rows still queued."""
        for writer in self.clients:
            writer.transport.abort()

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        outbox: asyncio.Queue = asyncio.Queue()
        sender = asyncio.create_task(_send(outbox, writer))
        pending: set[asyncio.Task] = set()
        client, served = "?", 0
        try:
            hello = _parse(await reader.readline()).get("hello") or {}
            client = str(hello.get("client", "?"))
            if hello.get("tag") != self.spec.tag:
                outbox.put_nowait(line({"error": self._refusal(hello.get("tag"))}))
                return
            outbox.put_nowait(line({"ready": self.ready}))
            print(f"slot {self.spec.slot}: {client} connected", flush=True)
            while raw := await reader.readline():
                task = asyncio.create_task(self._answer(parse_request(_parse(raw)), outbox))
                pending.add(task)
                task.add_done_callback(pending.discard)
                served += 1
        except (ConnectionError, ValueError, KeyError) as exc:
            print(f"slot {self.spec.slot}: {client}: dropped ({first_line(exc)})", flush=True)
        finally:
            left = len(pending)
            for task in pending:
                task.cancel()
            outbox.put_nowait(None)
            await sender
            writer.close()
            self.clients.discard(writer)
            note = f", {left} unanswered (cancelled)" if left else ""
            print(f"slot {self.spec.slot}: {client} done: {served} requests{note}", flush=True)

    def _refusal(self, tag) -> str:
        return (
            f"this engine serves the KD settings {self.spec.tag}, not {tag}: "
            "the engine address belongs to another job or to other settings"
        )

    async def _answer(self, request, outbox: asyncio.Queue) -> None:
        try:
            result = await self.engine.generate(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outbox.put_nowait(line({"id": request.request_id, "error": f"{type(exc).__name__}: {first_line(exc)}"}))
            if type(exc).__name__ == "EngineDeadError":  # vLLM's engine core is gone: nothing more can run here
                self.dead.set()
            return
        outbox.put_nowait(result_line(result))


async def _send(outbox: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
    """Write queued lines in order until the None that ends the connection; a gone client drops the rest."""
    while (data := await outbox.get()) is not None:
        try:
            writer.write(data)
            await writer.drain()
        except ConnectionError:
            while await outbox.get() is not None:
                pass
            return


def _parse(raw: bytes) -> dict:
    message = json.loads(raw) if raw.strip() else {}
    if not isinstance(message, dict):
        raise ValueError("a line that is not a JSON object")
    return message


async def serve(spec: SlotSpec, socket_path: str) -> int:
    """Open the engine, bind the socket, serve until SIGTERM (0) or until the engine dies (1)."""
    from .async_engines import open_async_engine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    where = f"GPUs {spec.gpus}" if spec.gpus else "no GPU"
    print(f"slot {spec.slot}: starting engine {spec.engine.kind} ({where}), pid {os.getpid()}", flush=True)
    started = time.perf_counter()
    engine = await open_async_engine(spec.engine, spec.sampling)
    server = EngineServer(engine, spec, time.perf_counter() - started)
    listener = await asyncio.start_unix_server(server.serve_client, path=socket_path, limit=MAX_LINE_BYTES)
    os.chmod(socket_path, 0o600)
    ready = server.ready
    print(f"slot {spec.slot}: engine {server.engine_id} ready in {ready['start_seconds']:.1f} s ({where}, "
          f"{ready['kind']}, max_model_len {ready['max_model_len']}) at {socket_path}", flush=True)  # fmt: skip
    stopped = asyncio.create_task(stop.wait())
    died = asyncio.create_task(server.dead.wait())
    await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
    listener.close()
    server.drop_clients()
    await engine.close()
    if server.dead.is_set():
        print(f"slot {spec.slot}: the engine died; stopping", file=sys.stderr, flush=True)
        return 1
    print(f"slot {spec.slot}: engine {server.engine_id} stopped", flush=True)
    return 0


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--spec", required=True, help="the slot's SlotSpec as JSON")
    args = parser.parse_args(argv)
    die_with_parent()
    try:
        return asyncio.run(serve(SlotSpec.from_json(args.spec), args.socket))
    except DistilleryError as exc:
        print(f"engine server: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
