"""In-process vLLM (`vllm.LLM`): offline batch generation on one or more GPUs.

Requests are fed to the engine all at once and results are taken as each request finishes (LLMEngine's
`add_request` / `step` loop, which `LLM.generate` itself runs), so the caller can save finished rows while the
engine keeps its batch full; waiting for a whole window would leave GPUs idle on every window's stragglers.
Per-request `seed` makes sampling reproducible for a given vLLM version, GPU and batch schedule (vLLM does not
promise bit-identical outputs across different batch compositions).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib import metadata

from ..errors import DistilleryError, first_line
from ..setting import fields_of
from .base import Completion, EngineSettings, GenerationRequest, GenerationResult, SamplingSettings, TokenLogprob


def vllm_engine_arguments(settings: EngineSettings) -> dict:
    """The keyword arguments of `vllm.LLM` for these settings (plain data: tested without vLLM): each setting
    declared with its vLLM name (`vllm=` in engines/base.py) unless None (vLLM's default: the model's tokenizer,
    its context length), then the extra ones."""
    arguments = {}
    for field in fields_of(EngineSettings):
        value = getattr(settings, field.name)
        if field.setting.vllm and value is not None:
            arguments[field.setting.vllm] = value
    return {**arguments, **settings.extra}


def vllm_missing() -> DistilleryError:
    """The error of both vLLM engines (offline and async) where the package is not installed."""
    return DistilleryError(
        "engine 'vllm' needs the vllm package",
        hint="pip install vllm on a GPU machine, or use engine: transformers",
    )


def vllm_load_failed(exc: Exception, settings: EngineSettings) -> DistilleryError:
    return DistilleryError(f"vLLM cannot load the model: {first_line(exc)}", settings.model_path)


def vllm_sampling_arguments(sampling: SamplingSettings, seed: int, max_tokens: int | None = None) -> dict:
    return {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "max_tokens": min(sampling.max_tokens, max_tokens or sampling.max_tokens),
        "stop": list(sampling.stop) or None,
        "seed": seed,
    }


class VllmEngine:
    kind = "vllm"

    def __init__(self, settings: EngineSettings) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise vllm_missing() from None
        self.settings = settings
        try:
            self.llm = LLM(**vllm_engine_arguments(settings))
        except (OSError, ValueError) as exc:
            raise vllm_load_failed(exc, settings) from None
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def versions(self) -> dict[str, str]:
        return {package: metadata.version(package) for package in ("vllm", "torch", "transformers")}

    def close(self) -> None:
        self.llm = None

    def generate(self, requests: Iterable[GenerationRequest], sampling: SamplingSettings) -> Iterator[GenerationResult]:
        from vllm import SamplingParams

        engine = self.llm.llm_engine
        ours: dict[str, str] = {}
        for request in requests:
            params = SamplingParams(**vllm_sampling_arguments(sampling, request.seed, request.max_tokens))
            # Some vLLM versions rename requests on the way in; results come back under the returned name.
            assigned = engine.add_request(request.request_id, {"prompt_token_ids": request.prompt_token_ids}, params)
            ours[assigned if isinstance(assigned, str) else request.request_id] = request.request_id
        while engine.has_unfinished_requests():
            for output in engine.step():
                if not output.finished:
                    continue
                completions = [
                    Completion(choice.text, list(choice.token_ids), finish_reason_of(choice.finish_reason))
                    for choice in sorted(output.outputs, key=lambda choice: choice.index)
                ]
                yield GenerationResult(ours.get(output.request_id, output.request_id), completions)

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int) -> list[list[TokenLogprob]]:
        """One `LLM.generate` call for all prompts (max_tokens=1, greedy, `logprobs=top_k`): vLLM schedules
        them together and its prefix cache shares the demonstrations they have in common."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=top_k, seed=self.settings.seed)
        outputs = self.llm.generate(
            [{"prompt_token_ids": prompt} for prompt in prompts], sampling_params=params, use_tqdm=False
        )
        results = []
        for output in outputs:
            candidates = output.outputs[0].logprobs[0]  # {token_id: Logprob} for the first generated position
            # vLLM adds the sampled token when it is outside the top k; keep exactly the k best.
            ranked = sorted(candidates.items(), key=lambda item: -item[1].logprob)[:top_k]
            results.append([TokenLogprob(int(token), _decoded(self.llm, token, entry), float(entry.logprob))
                            for token, entry in ranked])  # fmt: skip
        return results

    def prefix_cache_counters(self) -> dict[str, float] | None:
        """vLLM's prefix-cache query and hit token counters (needs `disable_log_stats: False` in extra)."""
        try:
            metrics = self.llm.get_metrics()
        except Exception:  # older vLLM or stats disabled: the caller reports the rate as unknown
            return None
        return counters_from_metrics((metric.name, getattr(metric, "value", None)) for metric in metrics)


def counters_from_metrics(pairs: Iterable[tuple[str, object]]) -> dict[str, float] | None:
    """Sum vLLM's `prefix_cache_queries` / `prefix_cache_hits` counters (over engines) from (name, value) pairs."""
    totals = {"queries": 0.0, "hits": 0.0}
    found = False
    for name, value in pairs:
        for key in totals:
            if name.removeprefix("vllm:").removesuffix("_total") == f"prefix_cache_{key}" and value is not None:
                totals[key] += float(value)
                found = True
    return totals if found else None


def _decoded(llm, token: int, entry) -> str:
    if entry.decoded_token is not None:
        return entry.decoded_token
    return llm.get_tokenizer().decode([token])


def finish_reason_of(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"
