"""Text generation and scoring engines behind one small interface (DESIGN.md, "Engines").

`open_engine(settings)` returns the engine the settings name: `vllm` (in-process `vllm.LLM`), `transformers`
(HF forward passes, what `auto` picks without a GPU) or `openai` (any OpenAI-compatible server). Each module
imports its library only when that engine is opened, so CI imports this package without vLLM or a GPU.
"""

from __future__ import annotations

from .base import (
    Completion,
    Engine,
    EngineSettings,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    TokenLogprob,
    resolve_engine_kind,
)


def refuse_untrusted_code(settings: EngineSettings) -> None:
    """Refuses, in one line, a model or tokenizer folder with its own code unless the settings trust it."""
    from ..architectures.remote_code import allow_remote_code

    for folder in {settings.model_path, settings.tokenizer}:
        allow_remote_code(folder, settings.trust_remote_code)


def open_engine(settings: EngineSettings) -> Engine:
    refuse_untrusted_code(settings)
    kind = resolve_engine_kind(settings.kind)
    if kind == "vllm":
        from .vllm_engine import VllmEngine

        return VllmEngine(settings)
    if kind == "transformers":
        from .transformers_engine import TransformersEngine

        return TransformersEngine(settings)
    from .openai_engine import OpenAIEngine

    return OpenAIEngine(settings)


__all__ = [
    "Completion",
    "Engine",
    "EngineSettings",
    "GenerationRequest",
    "GenerationResult",
    "SamplingSettings",
    "TokenLogprob",
    "open_engine",
    "resolve_engine_kind",
]
