"""The engine interface: settings, requests and results shared by the vLLM, transformers and OpenAI engines.

Prompts travel as token ids: the caller tokenizes once with the teacher's tokenizer (to cut prefixes, count
tokens, render chat templates), so every engine sees exactly the same prompt.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import DistilleryError

ENGINE_KINDS = ("auto", "vllm", "transformers", "openai")


@dataclass(frozen=True)
class EngineSettings:
    """How to start an engine. Keys mirror vLLM's engine arguments where they exist."""

    kind: str = "auto"
    model_path: str = ""
    tokenizer_path: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    max_num_seqs: int = 256  # the guide's GEN_BATCH_SIZE; transformers' batch size too
    enforce_eager: bool = False
    seed: int = 0
    trust_remote_code: bool = False  # run the model folder's own code (auto_map); see models/remote_code.py
    # openai engine only
    base_url: str | None = None
    api_key: str | None = None
    served_model_name: str | None = None
    max_concurrency: int = 64  # requests in flight to the server (its connections too)
    requests_per_minute: float | None = None  # a limit for external APIs; none for self-hosted servers
    self_hosted: bool | None = None  # None: decided from the URL (localhost, private address, node name)
    max_retries: int = 5  # on connection errors, timeouts, 429 and 5xx, with exponential backoff; every server
    retry_base_delay_s: float = 1.0
    retry_max_delay_s: float = 60.0
    request_timeout_s: float = 600.0  # one request's answer (a long generation under load included)
    prompts_per_request: int | None = None  # scoring batch split; None: all in one request when self-hosted
    extra: dict = field(default_factory=dict)

    @property
    def tokenizer(self) -> str:
        return self.tokenizer_path or self.model_path


# The OpenAI engine's request settings, written once: field -> (flag, help). The CLI's flags, the KD commands' and
# the flags the workflow's rules pass all come from here; the config schema names the fields.
REQUEST_FLAGS = {
    "max_concurrency": ("--max-concurrency", "requests in flight to a server"),
    "request_timeout_s": ("--request-timeout", "seconds for one answer"),
    "max_retries": ("--max-retries", "retries of a dropped, timed-out, 429 or 5xx request, with backoff"),
}


def add_request_flags(group) -> None:
    """`--max-concurrency`, `--request-timeout`, `--max-retries`, with EngineSettings' defaults."""
    for name, (flag, help_text) in REQUEST_FLAGS.items():
        default = getattr(EngineSettings, name)
        group.add_argument(flag, dest=name, type=type(default), default=default, help=f"{help_text} ({default:g})")


def request_settings(args) -> dict:
    return {name: getattr(args, name) for name in REQUEST_FLAGS}


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = -1  # -1: off, as in vLLM
    max_tokens: int = 100
    stop: tuple[str, ...] = ()
    return_token_ids: bool = False

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
        }


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt. `seed` makes its samples reproducible wherever the engine allows it."""

    request_id: str
    prompt_token_ids: list[int]
    seed: int
    max_tokens: int | None = None  # this request's cap, below the sampling settings' (e.g. a total-length budget)


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    completions: list[Completion]


@dataclass(frozen=True)
class TokenLogprob:
    """One candidate for the next token: its id (None where a server returns only text), text and log-prob."""

    token_id: int | None
    text: str
    logprob: float


class Engine(Protocol):
    kind: str

    def generate(self, requests: Iterable[GenerationRequest], sampling: SamplingSettings) -> Iterator[GenerationResult]:
        """Yield one result per request as it finishes, in any order."""
        ...

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int) -> list[list[TokenLogprob]]:
        """The `top_k` most likely next tokens after each prompt, best first: all prompts in one batched call
        (one `LLM.generate`, one HTTP request, or batched forward passes), so shared prefixes are cached."""
        ...

    def versions(self) -> dict[str, str]: ...

    def close(self) -> None: ...


def derive_seed(job_seed: int, *parts: object) -> int:
    """A 63-bit seed from the job's seed and a row's identity: the same row samples the same way in any chunk,
    any batch, any resumed run."""
    digest = hashlib.sha256(repr((job_seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def gpu_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_engine_kind(kind: str) -> str:
    """`auto` is vLLM where a GPU and vLLM are present, transformers otherwise."""
    if kind not in ENGINE_KINDS:
        raise DistilleryError(f"unknown engine {kind!r}", hint=f"choose one of {', '.join(ENGINE_KINDS)}")
    if kind != "auto":
        return kind
    if gpu_available() and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "transformers"
