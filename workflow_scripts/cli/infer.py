"""`distillery infer`: the inference script of TorchTitan's vLLM guide."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..infer import InferSettings
from ..setting import add_flags


def _add_infer(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The inference script of TorchTitan's vLLM guide: vLLM where it can run (TorchTitan-named checkpoints "
        "load through distillery's registered model classes), transformers otherwise."
    )
    parser.add_argument("--model-path", required=True, type=Path, help="model folder (HF, or TorchTitan-named)")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", help='one prompt (default: "Hello, how are you?")')
    prompts.add_argument("--prompts-file", type=Path, help="a file with one prompt per line")
    add_flags(parser, InferSettings)
    parser.set_defaults(handler=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from ..infer import read_prompts, run_inference
    from ..setting import from_args

    prompts = read_prompts(args.prompt, args.prompts_file)
    engine, completions = run_inference(args.model_path, prompts, from_args(InferSettings, args))
    print(f"engine: {engine}")
    for prompt, completion in zip(prompts, completions, strict=True):
        print(f"\nPrompt: {prompt}\nCompletion: {completion}")
    return 0


PARSERS = {
    "infer": _add_infer,
}
