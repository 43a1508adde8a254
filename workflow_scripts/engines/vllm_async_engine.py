"""vLLM's async engine (`AsyncLLMEngine`, V1's `AsyncLLM`): the engine of the KD engine server on GPUs.

Every request of every connected chunk job goes to the same engine as it arrives, so vLLM's scheduler batches
them continuously, as `LLM.generate` batches the requests of one caller. Each request asks for its final output
only (no streamed deltas). The engine arguments and per-request sampling are those of the in-process engine
(`vllm_engine.py`), so both paths sample a row the same way.
"""

from __future__ import annotations

import itertools
from importlib import metadata

from ..errors import DistilleryError
from .base import Completion, EngineSettings, GenerationRequest, GenerationResult, SamplingSettings
from .vllm_engine import (
    finish_reason_of,
    vllm_engine_arguments,
    vllm_load_failed,
    vllm_missing,
    vllm_sampling_arguments,
)


class VllmAsyncEngine:
    kind = "vllm"

    def __init__(self, engine, settings: EngineSettings, sampling: SamplingSettings, max_model_len: int) -> None:
        self.engine = engine
        self.settings = settings
        self.sampling = sampling
        self.max_model_len = max_model_len
        self._ids = itertools.count()

    @classmethod
    async def start(cls, settings: EngineSettings, sampling: SamplingSettings) -> VllmAsyncEngine:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError:
            raise vllm_missing() from None
        arguments = {**vllm_engine_arguments(settings), **_no_request_logging(AsyncEngineArgs)}
        try:
            engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**arguments))
        except (OSError, ValueError) as exc:
            raise vllm_load_failed(exc, settings) from None
        return cls(engine, settings, sampling, await _max_model_len(engine))

    def versions(self) -> dict[str, str]:
        return {package: metadata.version(package) for package in ("vllm", "torch", "transformers")}

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        from vllm import SamplingParams

        arguments = vllm_sampling_arguments(self.sampling, request.seed, request.max_tokens)
        params = SamplingParams(**arguments, **_final_output_only())
        # Request ids must be unique in the engine; callers' ids repeat across chunk jobs.
        engine_id = f"{next(self._ids)}-{request.request_id}"
        final = None
        async for output in self.engine.generate({"prompt_token_ids": request.prompt_token_ids}, params, engine_id):
            final = output
        if final is None or not final.finished:
            raise DistilleryError(f"vLLM stopped request {request.request_id} before it finished")
        completions = [
            Completion(choice.text, list(choice.token_ids), finish_reason_of(choice.finish_reason))
            for choice in sorted(final.outputs, key=lambda choice: choice.index)
        ]
        return GenerationResult(request.request_id, completions)

    async def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _no_request_logging(engine_args) -> dict:
    """No log line per request (100,000 rows are 100,000 lines), under the name this vLLM version uses."""
    import dataclasses

    names = {field.name for field in dataclasses.fields(engine_args)} if dataclasses.is_dataclass(engine_args) else ()
    if "enable_log_requests" in names:
        return {"enable_log_requests": False}
    if "disable_log_requests" in names:
        return {"disable_log_requests": True}
    return {}


def _final_output_only() -> dict:
    """Only the finished output of a request (vLLM >= 0.6); older versions stream every step."""
    try:
        from vllm.sampling_params import RequestOutputKind
    except ImportError:
        return {}
    return {"output_kind": RequestOutputKind.FINAL_ONLY}


async def _max_model_len(engine) -> int:
    """The context length vLLM settled on: where each version keeps its model config."""
    config = getattr(engine, "model_config", None)
    config = config or getattr(getattr(engine, "vllm_config", None), "model_config", None)
    if config is None:
        config = await engine.get_model_config()
    return int(config.max_model_len)
