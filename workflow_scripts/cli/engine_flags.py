"""The engine flags commands share: how to reach the model (in-process vLLM or transformers, or a server)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..engines.base import ENGINE_KINDS
from ..errors import DistilleryError


def add_engine_flags(parser: argparse.ArgumentParser, default_engine: str = "auto") -> None:
    """How to reach the model: in-process vLLM or transformers, or an OpenAI-compatible server."""
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", default=default_engine, choices=ENGINE_KINDS, help=f"({default_engine})")
    group.add_argument("--model", help="model folder (vllm, transformers) or the served model's name (openai)")
    group.add_argument("--tokenizer", help="tokenizer folder, if not the model's (openai: the served model's, here)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    group.add_argument("--tensor-parallel-size", type=int, default=1)
    group.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    group.add_argument("--max-model-len", type=int)
    group.add_argument("--max-num-seqs", type=int, default=256, help="sequences per engine batch (256)")
    group.add_argument("--enforce-eager", action="store_true", help="vLLM without CUDA graphs (faster start)")
    group.add_argument(
        "--base-url",
        help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (default: OPENAI_BASE_URL or VLLM_BASE_URL)",
    )
    group.add_argument("--base-url-file", type=Path, help="read the server URL from this file (written by serve)")
    group.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the API key (OPENAI_API_KEY)")
    group.add_argument("--served-model-name", help="the model's name on the server (default: the server's first)")
    group.add_argument("--requests-per-minute", type=float, help="rate limit for external APIs (never self-hosted)")
    group.add_argument("--max-concurrency", type=int, default=64, help="requests in flight to a server (64)")
    group.add_argument(
        "--self-hosted",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="treat the server as self-hosted: no rate limit (default: from the URL)",
    )


def engine_settings(args: argparse.Namespace):
    from ..engines import EngineSettings

    base_url = args.base_url
    if args.base_url_file:
        if not args.base_url_file.is_file():
            raise DistilleryError("does not exist", args.base_url_file, "is the server rule running?")
        base_url = args.base_url_file.read_text().strip()
    return EngineSettings(
        kind=args.engine,
        model_path=args.model or "",
        tokenizer_path=args.tokenizer,
        dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        enforce_eager=args.enforce_eager,
        base_url=base_url,
        api_key=os.environ.get(args.api_key_env) or None,
        served_model_name=args.served_model_name,
        requests_per_minute=args.requests_per_minute,
        max_concurrency=args.max_concurrency,
        self_hosted=args.self_hosted,
    )
