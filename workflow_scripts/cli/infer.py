"""`distillery infer`: the inference script of TorchTitan's vLLM guide."""

from __future__ import annotations

import argparse
from pathlib import Path

from .engine_flags import add_trust_remote_code


def _add_infer(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The inference script of TorchTitan's vLLM guide: vLLM when it is importable (TorchTitan-named "
        "checkpoints load through distillery's registered model classes), transformers otherwise."
    )
    parser.add_argument("--model-path", required=True, type=Path, help="model folder (HF, or TorchTitan-named)")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", help='one prompt (default: "Hello, how are you?")')
    prompts.add_argument("--prompts-file", type=Path, help="a file with one prompt per line")
    parser.add_argument("--max-tokens", type=int, default=100, help="most new tokens per prompt (100)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0.8; 0 is greedy)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (0.95)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs for tensor parallelism (1)")
    parser.add_argument("--engine", default="auto", choices=["auto", "vllm", "transformers"], help="(auto)")
    parser.add_argument("--seed", type=int, default=0)
    add_trust_remote_code(parser)
    parser.set_defaults(handler=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from ..infer import InferSettings, read_prompts, run_inference

    prompts = read_prompts(args.prompt, args.prompts_file)
    settings = InferSettings(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        tensor_parallel_size=args.tensor_parallel_size,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
    )
    engine, completions = run_inference(args.model_path, prompts, settings, args.engine)
    print(f"engine: {engine}")
    for prompt, completion in zip(prompts, completions, strict=True):
        print(f"\nPrompt: {prompt}\nCompletion: {completion}")
    return 0


PARSERS = {
    "infer": _add_infer,
}
