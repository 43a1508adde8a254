"""The engine interface: settings, requests and results shared by the vLLM, transformers and OpenAI engines.

Prompts travel as token ids: the caller tokenizes once with the teacher's tokenizer (to cut prefixes, count
tokens, render chat templates), so every engine sees exactly the same prompt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import DistilleryError
from ..setting import setting, to_dict
from .gpus import visible_devices

ENGINE_KINDS = ("auto", "vllm", "transformers", "openai")


@dataclass(frozen=True)
class EngineSettings:
    """How to start an engine. Names mirror vLLM's engine arguments where they exist (`vllm=`: the in-process
    engine passes them to `vllm.LLM`); config keys are those of a KD job's `engine:` section (an ICM job's are
    flat keys of its entry: `ENGINE_KEYS` in icm/job.py)."""

    kind: str = setting("auto", help="engine", flag="--engine", choices=ENGINE_KINDS)
    model_path: str = setting(
        "", help="model folder (vllm, transformers) or the served model's name (openai)", aliases=("--model",),
        env="MODEL_PATH", config=None, vllm="model",
    )  # fmt: skip
    tokenizer_path: str | None = setting(
        None, help="tokenizer folder, if not the model's", aliases=("--tokenizer",), env="TOKENIZER_PATH",
        config="/tokenizer", vllm="tokenizer",
    )  # fmt: skip
    dtype: str = setting("auto", help="weights precision in the engine (auto, float32, float16, bfloat16)", vllm=True)
    tensor_parallel_size: int = setting(1, help="GPUs for tensor parallelism", env="TENSOR_PARALLEL_SIZE", vllm=True)
    pipeline_parallel_size: int = setting(1, help="GPUs for pipeline parallelism", vllm=True)
    max_model_len: int | None = setting(None, help="context length (default: the model's)", vllm=True)
    gpu_memory_utilization: float = setting(0.9, help="share of GPU memory vLLM may take", vllm=True)
    enable_prefix_caching: bool = setting(True, help="vLLM's prefix cache", flag="--prefix-caching", vllm=True)
    max_num_seqs: int = setting(
        256, help="sequences per engine batch (vLLM's max_num_seqs, transformers' batch size)",
        aliases=("--gen-batch-size",), env="GEN_BATCH_SIZE", config="gen_batch_size", vllm=True,
    )  # fmt: skip
    max_num_batched_tokens: int | None = setting(None, help="tokens per engine step (default: vLLM's)", vllm=True)
    enforce_eager: bool = setting(False, help="vLLM without CUDA graphs (faster start)", vllm=True)
    seed: int = setting(0, help="seed of the job's sampling", config="/sampling.seed", vllm=True)
    trust_remote_code: bool = setting(False, help="run the model folder's own code (auto_map); never asked", vllm=True)
    # openai engine only
    base_url: str | None = setting(
        None, help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (default: OPENAI_BASE_URL or VLLM_BASE_URL)"
    )
    api_key: str | None = setting(None, help="API key", flag=None, config=None, secret=True)
    served_model_name: str | None = setting(None, help="the model's name on the server (default: the server's first)")
    max_concurrency: int = setting(64, help="requests in flight to a server (its connections too)")
    requests_per_minute: float | None = setting(
        None, help="rate limit for external APIs (never self-hosted)", config=None
    )
    self_hosted: bool | None = setting(
        None, help="treat the server as self-hosted: no rate limit (default: from the URL)", config=None
    )
    max_retries: int = setting(5, help="retries of a dropped, timed-out, 429 or 5xx request, with backoff")
    retry_base_delay_s: float = setting(1.0, help="first retry delay (doubles)", flag=None, config=None)
    retry_max_delay_s: float = setting(60.0, help="longest retry delay", flag=None, config=None)
    request_timeout_s: float = setting(
        600.0, help="seconds for one answer (a long generation under load included)", flag="--request-timeout"
    )
    prompts_per_request: int | None = setting(
        None, help="scoring batch split (default: all in one request when self-hosted)", flag=None, config=None
    )
    extra: dict = setting(help="more vLLM engine arguments", default_factory=dict, flag=None, config=None)

    @property
    def tokenizer(self) -> str:
        return self.tokenizer_path or self.model_path


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled; config keys are those of a KD job's `sampling:` section."""

    n: int = setting(1, help="completions per row", flag="--num-samples", aliases=("-n",))
    temperature: float = setting(0.8, help="sampling temperature (0 is greedy)", env="TEMPERATURE")
    top_p: float = setting(0.95, help="nucleus sampling threshold", env="TOP_P")
    top_k: int = setting(-1, help="top-k sampling (-1: off, as in vLLM)")
    max_tokens: int = setting(256, help="completion length cap")
    stop: tuple[str, ...] = setting((), help="stop string (repeatable)")
    return_token_ids: bool = setting(
        False, help="also write prompt and completion token ids", config="/return_token_ids"
    )

    def as_dict(self) -> dict:
        """What decides the sampled text (token ids or not does not)."""
        data = to_dict(self)
        del data["return_token_ids"]
        return data


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


def new_engine_id() -> str:
    """An engine's name in logs and chunk stats: its host, process and start second."""
    import os
    import socket
    import time

    return f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"


def derive_seed(job_seed: int, *parts: object) -> int:
    """A 63-bit seed from the job's seed and a row's identity: the same row samples the same way in any chunk,
    any batch, any resumed run."""
    digest = hashlib.sha256(repr((job_seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def gpu_available() -> bool:
    """Whether this process sees a GPU, asked of the driver's tools (nvidia-smi) and CUDA_VISIBLE_DEVICES, not of
    CUDA: `torch.cuda.is_available()` initializes the driver, after which vLLM's forked engine core dies with
    "Cannot re-initialize CUDA in forked subprocess" (seen on an H200 with engine `auto`)."""
    return bool(visible_devices(os.environ))


def resolve_engine_kind(kind: str) -> str:
    """`auto` is vLLM where a GPU and vLLM are present, transformers otherwise."""
    if kind not in ENGINE_KINDS:
        raise DistilleryError(f"unknown engine {kind!r}", hint=f"choose one of {', '.join(ENGINE_KINDS)}")
    if kind != "auto":
        return kind
    # vLLM's presence first: it costs nothing, where counting GPUs runs nvidia-smi.
    if importlib.util.find_spec("vllm") is not None and gpu_available():
        return "vllm"
    return "transformers"
