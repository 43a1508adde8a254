"""`distillery infer`: the inference script of TorchTitan's vLLM guide, on distillery's engines.

vLLM (in-process, through `engines/`) where it can run, after registering distillery's TorchTitan model classes
so a TorchTitan-named folder loads too; the transformers engine otherwise (HF-named folders only). Flags and
defaults are the guide's (--max-tokens 100, --temperature 0.8, --top-p 0.95).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

from .architectures.remote_code import allow_remote_code
from .engines import EngineSettings, GenerationRequest, SamplingSettings, open_engine, resolve_engine_kind
from .engines.base import derive_seed
from .errors import DistilleryError, first_line, require_folder
from .setting import setting
from .vllm_models import ARCHITECTURES, require_registered_architecture

DEFAULT_PROMPT = "Hello, how are you?"


@dataclass(frozen=True)
class InferSettings:
    """The guide's flags (`--model-path` and the prompts are the command's own)."""

    max_tokens: int = setting(100, help="most new tokens per prompt")
    temperature: float = setting(0.8, help="sampling temperature (0 is greedy)")
    top_p: float = setting(0.95, help="nucleus sampling threshold")
    tensor_parallel_size: int = setting(1, help="GPUs for tensor parallelism")
    engine: str = setting(
        "auto", help="vllm where it can run, else transformers", choices=("auto", "vllm", "transformers")
    )
    seed: int = setting(0, help="sampling seed")
    trust_remote_code: bool = setting(False, help="run the model folder's own code (auto_map); never asked")


def read_prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    if prompts_file is None:
        return [prompt if prompt is not None else DEFAULT_PROMPT]
    if not prompts_file.is_file():
        raise DistilleryError("does not exist", prompts_file, "pass a file with one prompt per line")
    prompts = [line for line in prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise DistilleryError("holds no prompts", prompts_file, "write one prompt per line")
    return prompts


def choose_engine(requested: str) -> str:
    if requested == "vllm" and importlib.util.find_spec("vllm") is None:
        raise DistilleryError("vLLM is not installed", hint="pip install vllm, or use --engine transformers")
    return resolve_engine_kind(requested)


def run_inference(model_path: Path, prompts: list[str], settings: InferSettings) -> tuple[str, list[str]]:
    """(the engine used, one completion per prompt)."""
    require_folder(model_path, "pass the model folder with --model-path")
    allow_remote_code(model_path, settings.trust_remote_code)  # before the tokenizer runs any of the folder's code
    require_registered_architecture(model_path / "config.json")
    if settings.max_tokens < 1 or settings.tensor_parallel_size < 1:
        raise DistilleryError("--max-tokens and --tensor-parallel-size must be at least 1")
    kind = choose_engine(settings.engine)
    if kind == "vllm":
        from .vllm_models import register

        register()
    else:
        _refuse_torchtitan_names(model_path)
    engine_settings = EngineSettings(
        kind=kind,
        model_path=str(model_path),
        tensor_parallel_size=settings.tensor_parallel_size,
        seed=settings.seed,
        trust_remote_code=settings.trust_remote_code,
    )
    sampling = SamplingSettings(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens)
    tokenizer = _load_tokenizer(model_path, settings.trust_remote_code)
    requests = [
        GenerationRequest(str(index), tokenizer(prompt)["input_ids"], derive_seed(settings.seed, index))
        for index, prompt in enumerate(prompts)
    ]
    engine = _open(engine_settings)
    try:
        results = {result.request_id: result for result in engine.generate(requests, sampling)}
    finally:
        engine.close()
    return kind, [results[request.request_id].completions[0].text for request in requests]


def _refuse_torchtitan_names(model_path: Path) -> None:
    """TorchTitan-named folders load through distillery's vLLM model classes only."""
    architectures = json.loads((model_path / "config.json").read_text()).get("architectures") or []
    if any(a in ARCHITECTURES for a in architectures):
        raise DistilleryError(
            f"has TorchTitan names ({architectures[0]}), which only the vLLM engine loads",
            model_path,
            "run on a machine with vLLM, or convert it first with `distillery titan-to-hf`",
        )


def _load_tokenizer(model_path: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DistilleryError(f"transformers cannot load its tokenizer ({first_line(exc)})", model_path) from None


def _open(settings: EngineSettings):
    """The engine, with a refused pickle or an unloadable model worded in one line."""
    from .formats.torch_bin import pickle_refusal  # imports torch: not for `distillery infer --help`

    try:
        return open_engine(settings)
    except pickle.UnpicklingError as exc:
        raise pickle_refusal(exc, Path(settings.model_path)) from None
    except ValueError as exc:
        raise DistilleryError(f"{settings.kind} cannot load it ({first_line(exc)})", settings.model_path) from None
