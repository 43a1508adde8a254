"""Engines for the engine server: one request at a time from many clients, batched together by the engine.

`open_async_engine(settings, sampling)`: vLLM's own async engine on GPUs (`vllm_async_engine.py`, continuous
batching across every client's requests, as `LLM.generate` batches one caller's), or any engine of
`open_engine` behind `BatchingEngine`: a worker thread that takes whatever requests are waiting, up to the
engine's batch size, and generates them as one batch (the transformers engine on CPUs).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import replace
from typing import Protocol

from .base import Engine, EngineSettings, GenerationRequest, GenerationResult, SamplingSettings, resolve_engine_kind

BATCH_LINGER_S = 0.1


class AsyncEngine(Protocol):
    kind: str
    max_model_len: int | None

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def versions(self) -> dict[str, str]: ...

    async def close(self) -> None: ...


class BatchingEngine:
    """A synchronous engine shared by concurrent callers: requests queue up while a batch runs, and the next
    batch takes what is waiting. A request whose caller gave up before its batch started is dropped."""

    def __init__(self, engine: Engine, sampling: SamplingSettings, batch_size: int) -> None:
        self.engine = engine
        self.kind = engine.kind
        self.max_model_len = getattr(engine, "max_model_len", None)
        self.sampling = sampling
        self.batch_size = max(1, batch_size // max(1, sampling.n))
        self._waiting: queue.Queue = queue.Queue()
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="batching-engine", daemon=True)
        self._worker.start()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.put((request, future, loop))
        return await future

    def versions(self) -> dict[str, str]:
        return self.engine.versions()

    async def close(self) -> None:
        """Stop after the batch that is running; the requests still waiting are cancelled."""
        self._closing = True
        self._waiting.put(None)
        await asyncio.to_thread(self._worker.join)
        while True:
            try:
                item = self._waiting.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        self.engine.close()

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            # Clients number their requests on their own (a chunk by row index), so two chunks of one batch can
            # share an id: the engine sees the batch's positions instead, and each result gets its id back.
            futures = {str(position): item for position, item in enumerate(batch)}
            requests = [replace(request, request_id=position) for position, (request, _, _) in futures.items()]
            try:
                for result in self.engine.generate(requests, self.sampling):
                    request, future, loop = futures.pop(result.request_id)
                    result = replace(result, request_id=request.request_id)
                    loop.call_soon_threadsafe(_settle, future, result, None)
                missing = RuntimeError("the engine returned no result for this request")
            except Exception as exc:  # the engine failed: every caller of this batch hears it
                missing = exc
            for _, future, loop in futures.values():
                loop.call_soon_threadsafe(_settle, future, None, missing)

    def _next_batch(self) -> list | None:
        """What is waiting, up to a batch (at least one request), after lingering a moment for the rest of the
        requests on their way (the first of a client's rows would otherwise be a batch of its own); None once
        closed."""
        while True:
            item = self._waiting.get()
            if item is None or self._closing:
                return None
            batch = [] if item[1].cancelled() else [item]
            deadline = time.monotonic() + BATCH_LINGER_S
            while len(batch) < self.batch_size:
                try:
                    item = self._waiting.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._waiting.put(None)  # close once this batch is done
                    break
                if not item[1].cancelled():
                    batch.append(item)
            if batch:
                return batch


def _settle(future: asyncio.Future, result: GenerationResult | None, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def open_async_engine(settings: EngineSettings, sampling: SamplingSettings) -> AsyncEngine:
    """The engine the settings name, ready for concurrent requests (`openai` has no place here: it is a server
    already, and chunk jobs call it directly)."""
    from ..errors import DistilleryError
    from . import refuse_untrusted_code

    kind = resolve_engine_kind(settings.kind)
    if kind == "openai":
        raise DistilleryError("engine 'openai' is a server already: chunk jobs call it directly, not through ours")
    refuse_untrusted_code(settings)
    if kind == "vllm":
        from .vllm_async_engine import VllmAsyncEngine

        return await VllmAsyncEngine.start(settings, sampling)
    from . import open_engine

    engine = await asyncio.to_thread(open_engine, settings)
    return BatchingEngine(engine, sampling, settings.max_num_seqs)
