"""`distillery serve` and `check-server`: a vLLM server from a size preset, and a readiness check of one."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import DistilleryError


def _add_serve(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start an OpenAI-compatible vLLM server with a preset's tensor-parallel size, --max-num-seqs, "
        "--max-num-batched-tokens and GPU memory (config/vllm-serve-presets.yaml); arguments after -- go to vLLM."
    )
    parser.add_argument("--preset", required=True, help="model size preset: 8B, 70B, 405B (or one of --presets)")
    parser.add_argument("--model", default=os.environ.get("MODEL_PATH"), help="model folder (default: MODEL_PATH)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1; 0.0.0.0 for remote)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", help="the name clients ask for (default: the model path)")
    for key in ("tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help="override the preset")
    parser.add_argument("--gpu-memory-utilization", type=float, help="override the preset")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (faster start, slower decode)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", type=Path, help="presets YAML (default: config/vllm-serve-presets.yaml)")
    parser.add_argument("--url-file", type=Path, help="write the server's URL here once it answers")
    parser.add_argument("--start-timeout", type=float, default=1800, help="seconds to wait for vLLM to answer")
    parser.add_argument("--dry-run", action="store_true", help="print the vllm command and exit")
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="after --: more vllm serve arguments")
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from ..serve import PRESETS_FILE, ServerSettings, load_presets, run_server, serve_arguments, vllm_command

    if not args.model:
        raise DistilleryError("no model given", hint="pass --model FOLDER or set MODEL_PATH")
    presets = load_presets(args.presets or PRESETS_FILE)
    keys = ("tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization")
    settings = ServerSettings(
        model=args.model,
        preset=args.preset,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        overrides={key: getattr(args, key) for key in keys},
        enforce_eager=args.enforce_eager,
        seed=args.seed,
        extra_args=tuple(arg for arg in args.vllm_args if arg != "--"),
    )
    if args.dry_run:
        import shlex

        print(shlex.join(vllm_command(serve_arguments(settings, presets))))
        return 0
    return run_server(settings, presets, args.url_file, args.start_timeout)


def _add_check_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="server URL (default: OPENAI_BASE_URL or VLLM_BASE_URL)")
    parser.add_argument("--model", help="the served model to probe (default: the first one the server lists)")
    parser.add_argument("--api-key-env", help="variable holding the API key (default: OPENAI_API_KEY or API_KEY)")
    parser.set_defaults(handler=_run_check_server)


def _run_check_server(args: argparse.Namespace) -> int:
    from ..serve import api_key_from_environment, check_server

    checks = check_server(args.base_url, api_key_from_environment(args.api_key_env), args.model)
    for check in checks:
        mark = {True: "✓", False: "✗", None: "?"}[check.passed]
        print(f"{mark} {check.name}: {check.detail}")
    failed = [check for check in checks if check.passed is False]
    print("✗ the server is not ready for ICM" if failed else "✓ the server is ready for ICM")
    return 1 if failed else 0


PARSERS = {
    "serve": _add_serve,
    "check-server": _add_check_server,
}
