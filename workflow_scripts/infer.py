"""`distillery infer`: the inference script of TorchTitan's vLLM guide, with a transformers fallback.

vLLM (in-process `vllm.LLM`) when it is importable, after registering distillery's TorchTitan model classes so a
TorchTitan-named folder loads too; transformers `generate` otherwise (HF-named folders only). Kept deliberately
small: the workflow's generation steps use the engine layer, not this.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

from .architectures.remote_code import allow_remote_code
from .errors import DistilleryError, require_folder
from .formats.torch_bin import pickle_refusal
from .vllm_models import ARCHITECTURES, require_registered_architecture

DEFAULT_PROMPT = "Hello, how are you?"


@dataclass(frozen=True)
class InferSettings:
    max_tokens: int = 100
    temperature: float = 0.8
    top_p: float = 0.95
    tensor_parallel_size: int = 1
    seed: int = 0
    trust_remote_code: bool = False  # run the model folder's own code (auto_map)


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
    have_vllm = importlib.util.find_spec("vllm") is not None
    if requested == "vllm" and not have_vllm:
        raise DistilleryError("vLLM is not installed", hint="pip install vllm, or use --engine transformers")
    return requested if requested != "auto" else ("vllm" if have_vllm else "transformers")


def run_inference(
    model_path: Path, prompts: list[str], settings: InferSettings, engine: str = "auto"
) -> tuple[str, list[str]]:
    """(the engine used, one completion per prompt)."""
    require_folder(model_path, "pass the model folder with --model-path")
    allow_remote_code(model_path, settings.trust_remote_code)
    require_registered_architecture(model_path / "config.json")
    if settings.max_tokens < 1 or settings.tensor_parallel_size < 1:
        raise DistilleryError("--max-tokens and --tensor-parallel-size must be at least 1")
    engine = choose_engine(engine)
    if engine == "vllm":
        return engine, _generate_vllm(model_path, prompts, settings)
    return engine, _generate_transformers(model_path, prompts, settings)


def _generate_vllm(model_path: Path, prompts: list[str], settings: InferSettings) -> list[str]:
    from vllm import LLM, SamplingParams

    from .vllm_models import register

    register()
    llm = LLM(
        model=str(model_path),
        tensor_parallel_size=settings.tensor_parallel_size,
        seed=settings.seed,
        trust_remote_code=settings.trust_remote_code,
    )
    params = SamplingParams(max_tokens=settings.max_tokens, temperature=settings.temperature, top_p=settings.top_p)
    return [output.outputs[0].text for output in llm.generate(prompts, params)]


def _generate_transformers(model_path: Path, prompts: list[str], settings: InferSettings) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architectures = json.loads((model_path / "config.json").read_text()).get("architectures") or []
    if any(a in ARCHITECTURES for a in architectures):
        raise DistilleryError(
            f"has TorchTitan names ({architectures[0]}), which only the vLLM engine loads",
            model_path,
            "run on a machine with vLLM, or convert it first with `distillery titan-to-hf`",
        )
    try:
        trust = settings.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True, trust_remote_code=trust)
        model.eval()
    except pickle.UnpicklingError as exc:
        raise pickle_refusal(exc, model_path) from None
    except (OSError, ValueError) as exc:
        raise DistilleryError(f"transformers cannot load it ({exc})", model_path) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    torch.manual_seed(settings.seed)
    sampling = {"do_sample": False}
    if settings.temperature > 0:
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
    completions = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=settings.max_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
        completions.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return completions
