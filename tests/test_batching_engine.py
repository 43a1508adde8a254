"""The engine server's `BatchingEngine` on the CPU: requests of many clients batched together, each answered once.

The engine behind it here is a test double that completes each prompt with its own token ids, so every answer
says which request it belongs to.
"""

from __future__ import annotations

import asyncio
import time

from workflow_scripts.engines.async_engines import BatchingEngine
from workflow_scripts.engines.base import Completion, GenerationRequest, GenerationResult, SamplingSettings


class EchoEngine:
    """Answers every request of a batch with its prompt, out of order, and remembers the batches it saw."""

    kind = "echo"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def generate(self, requests, sampling):
        requests = list(requests)
        self.batches.append([request.request_id for request in requests])
        time.sleep(0.05)  # long enough for the other clients' requests to queue up for the next batch
        for request in reversed(requests):
            yield GenerationResult(request.request_id, [Completion(str(request.prompt_token_ids), [], "stop")])

    def versions(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


def test_two_clients_numbering_their_requests_alike_each_get_their_own_answers():
    """Two chunks of different files both number their rows from 0, and their rows share batches."""

    async def clients():
        engine = BatchingEngine(echo := EchoEngine(), SamplingSettings(), batch_size=8)
        rows = range(6)
        first = [GenerationRequest(str(row), [1, row], seed=row) for row in rows]
        second = [GenerationRequest(str(row), [2, row], seed=row) for row in rows]
        interleaved = [request for pair in zip(first, second, strict=True) for request in pair]
        results = await asyncio.wait_for(asyncio.gather(*map(engine.generate, interleaved)), 30)
        await engine.close()
        return echo, results

    echo, results = asyncio.run(clients())
    expected = [(str(row), str([client, row])) for row in range(6) for client in (1, 2)]
    assert [(result.request_id, result.completions[0].text) for result in results] == expected
    assert any(len(batch) > 1 for batch in echo.batches), "the requests were batched"


def test_an_engine_that_fails_tells_every_caller_of_its_batch():
    class Failing(EchoEngine):
        def generate(self, requests, sampling):
            raise RuntimeError("out of memory")

    async def caller():
        engine = BatchingEngine(Failing(), SamplingSettings(), batch_size=4)
        calls = (engine.generate(GenerationRequest("0", [row], seed=0)) for row in range(3))
        outcome = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
        await engine.close()
        return outcome

    assert [str(error) for error in asyncio.run(caller())] == ["out of memory"] * 3
