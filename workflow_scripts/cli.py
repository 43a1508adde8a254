"""`distillery <command>`: one subcommand per workflow step, with the flags of the scripts users migrate from.

Heavy libraries are imported inside the commands, so `distillery --help` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .choices import TINY_ARCHITECTURES, TINY_LAYOUTS
from .engines.base import ENGINE_KINDS
from .errors import DistilleryError
from .icm.data import FORMATS as ICM_FORMATS
from .kd.commands import add_kd_commands
from .setting import add_flags, from_args
from .verify.settings import add_verify_flags, verify_settings_from_args

log = logging.getLogger("distillery")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_conversion_flags(parser: argparse.ArgumentParser) -> None:
    """The flags consolidate and batch-consolidate share, as consolidate_for_vllm.py names them."""
    from .convert.options import ConsolidateOptions

    add_flags(parser, ConsolidateOptions)
    _add_precision_aliases(parser)
    parser.add_argument("--safetensors", dest="weights_format", action="store_const", const="safetensors")
    parser.add_argument("--pytorch-bin", dest="weights_format", action="store_const", const="pytorch_bin")


def _add_precision_aliases(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-original-precision", action="store_true",
                        help="keep each tensor's dtype, whatever --dtype says (--dtype original)")  # fmt: skip


def _precision(args: argparse.Namespace) -> dict:
    return {"dtype": "original"} if getattr(args, "keep_original_precision", False) else {}


def _options(cls, args: argparse.Namespace, **paths):
    """A converter's options: its settings from the flags, with the paths and the command line set here."""
    settings = from_args(cls, args, **_precision(args))
    return dataclasses.replace(settings, command=["distillery", *args.argv], **paths)


def _conversion_options(args: argparse.Namespace, **paths):
    from .convert.options import ConsolidateOptions

    return _options(ConsolidateOptions, args, **paths)


def _add_consolidate(commands) -> None:
    parser = commands.add_parser(
        "consolidate",
        help="merge a sharded or DeepSpeed checkpoint into one vLLM-ready HF model folder",
        description="Merge a DeepSpeed ZeRO checkpoint or an HF model folder (sharded safetensors or .bin, nested "
        "shards, single file) into one vLLM-ready folder: weights streamed tensor by tensor, config, tokenizer "
        "and provenance.json.",
    )
    parser.add_argument("--input", required=True, type=Path, help="input folder (a model or a training run)")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    _add_conversion_flags(parser)
    deepspeed_flags = parser.add_argument_group("DeepSpeed options")
    deepspeed_flags.add_argument(
        "--checkpoint-dir", type=Path, help="this checkpoint folder (checkpoint-N or global_stepN), not the latest"
    )
    deepspeed_flags.add_argument("--tag", help="global_stepN to use instead of the one 'latest' names")
    parser.set_defaults(handler=_run_consolidate)


def _run_consolidate(args: argparse.Namespace) -> int:
    from .convert.consolidate import consolidate

    result = consolidate(
        _conversion_options(
            args, input=args.input, output=args.output, checkpoint_dir=args.checkpoint_dir, tag=args.tag
        )
    )
    files = ", ".join(f.name for f in result.files)
    print(f"✓ {result.output}: {result.num_tensors} tensors from {result.input_type} input into {files}")
    if result.dropped_tied:
        print(f"  tied weights left to the loader: {', '.join(result.dropped_tied)}")
    return 0


def _add_batch_consolidate(commands) -> None:
    parser = commands.add_parser(
        "batch-consolidate",
        help="consolidate many runs or checkpoints, one output folder each",
        description="Consolidate the latest (or every) checkpoint of several training runs or models.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-dir", type=Path, help="one run or model folder")
    source.add_argument("--input-pattern", help="glob of run or model folders, e.g. './ft_runs_*/qwen2.5-7b'")
    source.add_argument("--input-list", type=Path, help="file listing one folder per line")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--all-checkpoints", action="store_true", help="every checkpoint-N, not just the latest")
    parser.add_argument("--checkpoint-filter", help="checkpoint folders to take, e.g. 'checkpoint-{100,200,300}'")
    parser.add_argument("--max-workers", type=int, default=4, help="conversions run at once (4)")
    parser.add_argument(
        "--naming-template",
        default="{input_name}_step_{step}",
        help="output folder name from {input_name}, {run_name}, {step} (default: {input_name}_step_{step})",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and do nothing")
    parser.add_argument("--continue-on-error", action="store_true", help="go on after a failed conversion")
    _add_conversion_flags(parser)
    parser.set_defaults(handler=_run_batch_consolidate)


def _run_batch_consolidate(args: argparse.Namespace) -> int:
    from .convert.batch import collect_inputs, plan_batch, run_batch

    if args.max_workers < 1:
        raise DistilleryError(f"--max-workers must be at least 1, not {args.max_workers}")
    inputs = collect_inputs(args.input_dir, args.input_pattern, args.input_list)
    items = plan_batch(inputs, args.output_dir, args.naming_template, args.all_checkpoints, args.checkpoint_filter)
    print(f"{len(items)} conversion(s):")
    for item in items:
        print(f"  {item.checkpoint or item.input} -> {item.output}")
    if args.dry_run:
        print("dry run: nothing was written")
        return 0
    base = _conversion_options(args, input=Path(), output=Path())
    outcomes = run_batch(items, base, args.max_workers, args.continue_on_error)
    failures = [outcome for outcome in outcomes if outcome.error]
    print(f"\nsummary: {len(outcomes) - len(failures)} succeeded, {len(failures)} failed"
          + (f", {len(items) - len(outcomes)} not started" if len(outcomes) < len(items) else ""))  # fmt: skip
    for outcome in sorted(outcomes, key=lambda o: items.index(o.item)):
        mark = "✗" if outcome.error else "✓"
        print(f"  {mark} {outcome.item.output}: {outcome.error or outcome.detail}")
    return 1 if failures else 0


def _add_verify(commands) -> None:
    parser = commands.add_parser(
        "verify",
        help="check a model folder for vLLM: files, headers, config, tensors, NaN/Inf, logits vs a reference",
    )
    parser.add_argument("model", nargs="?", type=Path, help="model folder (or use --model-path)")
    parser.add_argument("--model-path", type=Path, help="model folder, as verify_model.py takes it")
    parser.add_argument("--reference", type=Path, help="source checkpoint or verified model to compare logits with")
    parser.add_argument("--report", type=Path, help="write the JSON report here (a .md is written beside it)")
    parser.add_argument("--markdown", type=Path, help="where to write the Markdown report")
    parser.add_argument(
        "--plans", action="append", default=[], type=Path, help="a validate-plans JSON report to include (repeatable)"
    )
    add_verify_flags(parser)
    parser.set_defaults(handler=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from .verify.run import verify_model

    model_path = args.model_path or args.model
    if model_path is None:
        raise DistilleryError("no model given", hint="pass --model-path FOLDER")
    settings = verify_settings_from_args(args)
    report = verify_model(
        model_path,
        reference_path=args.reference,
        expect_single_file=settings.expect_single_file,
        probe_prompts=settings.probe_prompts,
        tolerances=settings.tolerances,
        plan_reports=args.plans,
    )
    if args.report:
        report.write(args.report, args.markdown)
    print("\n".join(report.console_lines()))
    return 0 if report.passed else 1


def _add_print_structure(commands) -> None:
    parser = commands.add_parser(
        "print-structure", help="print a model's module tree with parameter shapes, built without its weights"
    )
    parser.add_argument("model", type=Path, help="model folder (only config.json is read)")
    parser.add_argument("--max-depth", type=int, help="deepest level to print")
    parser.add_argument("--show-params", action="store_true", help="list each module's parameters and shapes")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (auto_map)")
    parser.set_defaults(handler=_run_print_structure)


def _run_print_structure(args: argparse.Namespace) -> int:
    from .plans.structure import build_meta_model, structure_lines

    model = build_meta_model(args.model, args.trust_remote_code)
    print("\n".join(structure_lines(model, args.max_depth, args.show_params)))
    return 0


def _add_validate_plans(commands) -> None:
    parser = commands.add_parser(
        "validate-plans", help="check that vLLM can split a model at tensor-parallel T and pipeline-parallel P"
    )
    parser.add_argument("model", type=Path, help="model folder (only config.json is read)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size T")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size P")
    parser.add_argument("--strict", action="store_true", help="treat warnings as failures")
    parser.add_argument("--gpu-memory", type=float, help="memory of one GPU in GiB, for the memory estimate")
    parser.add_argument("--max-model-len", type=int, default=4096, help="tokens per sequence for the KV cache")
    parser.add_argument("--batch", type=int, default=1, help="sequences held in the KV cache at once")
    parser.add_argument("--output", type=Path, help="write the JSON report here (and a .md beside it)")
    parser.add_argument(
        "--report-only", action="store_true", help="exit 0 whatever the verdict (the workflow's verify step judges)"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code (auto_map)")
    parser.set_defaults(handler=_run_validate_plans)


def _run_validate_plans(args: argparse.Namespace) -> int:
    from .plans.structure import build_meta_model
    from .plans.validate import validate_plans, write_plan_report
    from .plans.vllm_limits import Budget

    if args.tp < 1 or args.pp < 1:
        raise DistilleryError(f"--tp and --pp must be at least 1 (got {args.tp}, {args.pp})")
    model = build_meta_model(args.model, args.trust_remote_code)
    budget = Budget(gpu_memory_gib=args.gpu_memory, max_model_len=args.max_model_len, batch=args.batch)
    report = validate_plans(model, args.tp, args.pp, budget, args.strict, name=str(args.model))
    if args.output:
        write_plan_report(report, args.output)
    lines = report.console_lines()
    lines[-1] = (
        f"✓ vLLM can split it at T={args.tp}, P={args.pp}"
        if report.passed
        else (f"✗ vLLM cannot split it at T={args.tp}, P={args.pp}: " + ", ".join(c.name for c in report.failures))
    )
    print("\n".join(lines))
    return 0 if report.passed or args.report_only else 1


def _add_maxtext_param_only(commands) -> None:
    parser = commands.add_parser(
        "maxtext-param-only",
        help="turn a MaxText full training-state checkpoint into a param-only one (no optimizer state)",
        description="What MaxText's generate_param_only_checkpoint does, without building the model or restoring "
        "the optimizer state: the parameters are copied array by array into CHECKPOINT_DIR/0/items.",
    )
    parser.add_argument(
        "--load-full-state-path", "--input", dest="full_state", required=True,
        help="the training checkpoint: .../checkpoints/N/items (or .../checkpoints/N, or .../checkpoints: newest N)",
    )  # fmt: skip
    parser.add_argument("--checkpoint-dir", "--output", dest="checkpoint_dir", required=True, type=Path,
                        help="where the param-only checkpoint goes (its arrays in CHECKPOINT_DIR/0/items)")  # fmt: skip
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "original"],
                        help="parameter precision (bfloat16, as MaxText writes it)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.set_defaults(handler=_run_maxtext_param_only)


def _run_maxtext_param_only(args: argparse.Namespace) -> int:
    from .convert.maxtext_param_only import ParamOnlyOptions, make_param_only_checkpoint

    result = make_param_only_checkpoint(
        ParamOnlyOptions(args.full_state, args.checkpoint_dir, args.dtype, args.force, ["distillery", *args.argv])
    )
    print(f"✓ {result.items}: {result.num_params} parameter arrays from {result.source_items}")
    return 0


def _add_maxtext_to_hf(commands) -> None:
    parser = commands.add_parser(
        "maxtext-to-hf",
        help="convert a MaxText param-only checkpoint of a Llama model into an HF model folder",
        description="The flags of llama_mistral_mixtral_orbax_to_hf: map MaxText's parameter tree onto HF Llama "
        "names with MaxText's rotary layout and query scaling undone, and write config, tokenizer and provenance.",
    )
    from .convert.options import MaxTextToHFOptions

    parser.add_argument("--orbax-checkpoint", required=True, help="param-only checkpoint: .../0/items (local or gs://)")
    parser.add_argument("--hf-model-path", required=True, type=Path, help="output folder")
    add_flags(parser, MaxTextToHFOptions)
    parser.set_defaults(handler=_run_maxtext_to_hf)


def _run_maxtext_to_hf(args: argparse.Namespace) -> int:
    from .convert.maxtext_to_hf import convert_maxtext_to_hf
    from .convert.options import MaxTextToHFOptions

    options = _options(MaxTextToHFOptions, args, orbax_checkpoint=args.orbax_checkpoint,
                       hf_model_path=args.hf_model_path)  # fmt: skip
    result = convert_maxtext_to_hf(options)
    files = ", ".join(f.name for f in result.files)
    print(f"✓ {result.output}: {result.num_tensors} tensors of {args.model_size} "
          f"(rope {result.math.rope_type}) into {files}")  # fmt: skip
    return 0


def _add_titan_to_hf(commands) -> None:
    from .convert.options import TitanToHFOptions

    parser = commands.add_parser(
        "titan-to-hf",
        help="convert a TorchTitan Llama 3 or Qwen3 checkpoint (DCP folder or .pt) into an HF model folder",
        description="Convert a TorchTitan checkpoint (torch.distributed.checkpoint folder or a .pt state dict, "
        "with the names of TorchTitan's vLLM guide or of torchtitan 0.3) into a vLLM-ready HF Llama or Qwen3 "
        "folder, reading one tensor at a time.",
    )
    parser.add_argument("--input", required=True, type=Path, help="DCP folder (e.g. checkpoint/step-1000) or .pt")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    add_flags(parser, TitanToHFOptions)
    _add_precision_aliases(parser)
    parser.set_defaults(handler=_run_titan_to_hf)


def _run_titan_to_hf(args: argparse.Namespace) -> int:
    from .convert.options import TitanToHFOptions
    from .convert.titan_to_hf import convert_titan_to_hf

    options = _options(TitanToHFOptions, args, input=args.input, output=args.output)
    result = convert_titan_to_hf(options)
    print(f"✓ {result.output}: {result.num_tensors} tensors of a {result.layout.describe}, config from "
          f"{result.config_source}")  # fmt: skip
    return 0


def _add_infer(commands) -> None:
    parser = commands.add_parser(
        "infer",
        help="generate completions of prompts with a model folder (vLLM where installed, else transformers)",
        description="The inference script of TorchTitan's vLLM guide: vLLM when it is importable (TorchTitan-named "
        "checkpoints load through distillery's registered model classes), transformers otherwise.",
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
    parser.set_defaults(handler=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from .infer import InferSettings, read_prompts, run_inference

    prompts = read_prompts(args.prompt, args.prompts_file)
    settings = InferSettings(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        tensor_parallel_size=args.tensor_parallel_size,
        seed=args.seed,
    )
    engine, completions = run_inference(args.model_path, prompts, settings, args.engine)
    print(f"engine: {engine}")
    for prompt, completion in zip(prompts, completions, strict=True):
        print(f"\nPrompt: {prompt}\nCompletion: {completion}")
    return 0


def _add_make_tiny_model(commands) -> None:
    parser = commands.add_parser(
        "make-tiny-model", help="build a tiny random Llama or Qwen3 with a locally trained tokenizer (for tests)"
    )
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--architecture", default="llama", choices=TINY_ARCHITECTURES)
    parser.add_argument("--layout", default="safetensors", choices=TINY_LAYOUTS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", default="40KB", help="shard size for the sharded layouts")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--intermediate-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-kv-heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--max-position-embeddings", type=int, default=512, help="context length (512)")
    parser.add_argument("--force", action="store_true")
    parser.set_defaults(handler=_run_make_tiny_model)


def _run_make_tiny_model(args: argparse.Namespace) -> int:
    from .architectures.tiny import TinyModelSpec, build_tiny_model
    from .atomic import atomic_output_dir

    spec = TinyModelSpec(
        architecture=args.architecture,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        vocab_size=args.vocab_size,
        max_position_embeddings=args.max_position_embeddings,
    )
    with atomic_output_dir(args.output, force=args.force) as staging:
        build_tiny_model(staging, spec, args.layout, args.seed, args.dtype, args.max_shard_size)
    print(f"✓ {args.output}: tiny {args.architecture} ({args.layout}, {args.dtype})")
    return 0


def _add_make_tiny_dataset(commands) -> None:
    parser = commands.add_parser(
        "make-tiny-dataset",
        help="write a small parquet dataset (text, chat messages, ids; nulls and blanks included)",
    )
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--rows", type=int, default=40, help="rows of the first file (each next one has 7 more)")
    parser.add_argument("--row-group-rows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    parser.set_defaults(handler=_run_make_tiny_dataset)


def _run_make_tiny_dataset(args: argparse.Namespace) -> int:
    from .atomic import atomic_output_dir
    from .kd.tiny_dataset import write_tiny_dataset

    with atomic_output_dir(args.output, force=args.force) as staging:
        write_tiny_dataset(staging, args.files, args.rows, args.row_group_rows, args.seed)
    print(f"✓ {args.output}: {args.files} parquet files")
    return 0


def _add_engine_flags(parser: argparse.ArgumentParser, default_engine: str = "auto") -> None:
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


def _engine_settings(args: argparse.Namespace):
    from .engines import EngineSettings

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


def _add_icm(commands) -> None:
    parser = commands.add_parser(
        "icm",
        help="label a dataset without gold labels by Internal Coherence Maximization (Wen et al. 2025)",
        description="Search for the labels a base model finds most mutually predictable and logically consistent "
        "(ICM). Flags keep the reference ICM.py's names (--alpha, --num_seed, --K, ...); writes labels.jsonl and "
        "report.json into --output-dir, and saves its state so a killed run resumes.",
    )
    parser.add_argument("--data", required=True, type=Path, help="the claims (JSON list or JSONL)")
    parser.add_argument(
        "--testbed",
        "--format",
        dest="data_format",
        default="generic",
        type=str.lower,
        choices=ICM_FORMATS,
        help="data format and prompt: truthfulqa, gsm8k, alpaca, generic",
    )
    parser.add_argument("--prompt-template", help="prompt of a claim, from its fields, e.g. '{text}\\nI think ...'")
    parser.add_argument("--output-dir", required=True, type=Path, help="where labels.jsonl and report.json go")
    parser.add_argument("--state", type=Path, help="search state for resuming (default: OUTPUT_DIR/.icm-state.json)")
    search = parser.add_argument_group("search (the reference's flags and defaults)")
    search.add_argument("--alpha", type=float, default=30.0, help="weight of mutual predictability (30)")
    search.add_argument("--seed", type=int, default=27565976)
    search.add_argument("--batch-size", "--batch_size", type=int, default=256, help="claims labeled together (256)")
    search.add_argument("--num-seed", "--num_seed", type=int, default=8, help="randomly labeled claims at start (8)")
    search.add_argument("--K", "--iterations", dest="iterations", type=int, default=3000, help="iterations (3000)")
    search.add_argument(
        "--consistency-fix-K",
        "--consistency_fix_K",
        dest="consistency_fix_iterations",
        type=int,
        default=10,
        help="consistency-fix rounds for the seed labels (10)",
    )
    search.add_argument(
        "--proposal-fix-K",
        dest="proposal_fix_iterations",
        type=int,
        default=10,
        help="consistency-fix rounds after each proposal (10)",
    )
    search.add_argument("--decay", type=float, default=0.99, help="decay of the exp schedule (0.99)")
    search.add_argument("--initial-T", "--initial_T", dest="initial_temperature", type=float, default=10.0)
    search.add_argument("--final-T", "--final_T", dest="final_temperature", type=float, default=0.01)
    search.add_argument("--scheduler", dest="schedule", default="log", choices=["log", "exp"])
    search.add_argument("--top-logprobs", type=int, default=20, help="next-token candidates read per prompt (20)")
    search.add_argument(
        "--predictability",
        default="mean_logodds",
        choices=["mean_logodds", "sum_logprob"],
        help="mean log-odds (the reference's code) or sum of log P (the paper's formula)",
    )
    search.add_argument(
        "--demonstration-order",
        default="labeling",
        choices=["labeling", "dataset"],
        help="labeling: in the order claims got labels (cache-friendly); dataset: the reference's",
    )
    search.add_argument(
        "--score-unlabeled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score unlabeled claims in each batch (default: on, off for transformers)",
    )
    search.add_argument("--save-every", type=int, default=10, help="save the state every N iterations (10)")
    _add_engine_flags(parser)
    parser.set_defaults(handler=_run_icm)


def _run_icm(args: argparse.Namespace) -> int:
    from .engines import resolve_engine_kind
    from .icm.algorithm import ICMSettings
    from .icm.run import ICMJob, run_icm_job

    engine = _engine_settings(args)
    kind = resolve_engine_kind(engine.kind)
    score_unlabeled = args.score_unlabeled
    if score_unlabeled is None:
        # Without a prefix cache every extra prompt is a full forward pass: score unlabeled claims on demand.
        score_unlabeled = kind != "transformers"
    settings = ICMSettings(
        alpha=args.alpha,
        num_seed=args.num_seed,
        iterations=args.iterations,
        consistency_fix_iterations=args.consistency_fix_iterations,
        proposal_fix_iterations=args.proposal_fix_iterations,
        initial_temperature=args.initial_temperature,
        final_temperature=args.final_temperature,
        decay=args.decay,
        schedule=args.schedule,
        seed=args.seed,
        predictability=args.predictability,
        demonstration_order=args.demonstration_order,
        score_unlabeled=score_unlabeled,
        save_every=args.save_every,
    )
    if args.batch_size < 1:
        raise DistilleryError(f"--batch-size must be at least 1, not {args.batch_size}")
    job = ICMJob(
        data=args.data,
        data_format=args.data_format,
        output_dir=args.output_dir,
        state_path=args.state or args.output_dir / ".icm-state.json",
        settings=settings,
        engine=engine,
        batch_size=args.batch_size,
        prompt_template=args.prompt_template,
        top_logprobs=args.top_logprobs,
        command=("distillery", *args.argv),
    )
    report = run_icm_job(job, progress=True)
    accuracy = ""
    if report["accuracy"] is not None:
        accuracy = f", accuracy {report['accuracy']:.1%} on {report['gold_labels_compared']} gold labels"
    balance = report["label_balance"]
    print(
        f"✓ {args.output_dir}/labels.jsonl: {balance['true']} true, {balance['false']} false, "
        f"{balance['unlabeled']} unlabeled after {report['iterations']} iterations{accuracy}"
    )
    print(
        f"  acceptance {report['acceptance_rate']}, violations left {report['consistency_violations_left']}, "
        f"{report['seconds_per_iteration']['mean']} s and {report['engine_calls_per_iteration']} engine calls "
        f"per iteration, prefix-cache hit rate {report['prefix_cache']['hit_rate']}"
    )
    return 0


def _add_serve(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="start `vllm serve` from a size preset (8B, 70B, 405B), prefix caching always on",
        description="Start an OpenAI-compatible vLLM server with a preset's tensor-parallel size, --max-num-seqs, "
        "--max-num-batched-tokens and GPU memory (config/vllm-serve-presets.yaml); arguments after -- go to vLLM.",
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
    from .serve import PRESETS_FILE, ServerSettings, load_presets, run_server, serve_arguments, vllm_command

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


def _add_check_server(commands) -> None:
    parser = commands.add_parser(
        "check-server",
        help="check an OpenAI-compatible server: it answers, returns logprobs, has prefix caching on",
    )
    parser.add_argument("--base-url", help="server URL (default: OPENAI_BASE_URL or VLLM_BASE_URL)")
    parser.add_argument("--model", help="the served model to probe (default: the first one the server lists)")
    parser.add_argument("--api-key-env", help="variable holding the API key (default: OPENAI_API_KEY or API_KEY)")
    parser.set_defaults(handler=_run_check_server)


def _run_check_server(args: argparse.Namespace) -> int:
    from .serve import api_key_from_environment, check_server

    checks = check_server(args.base_url, api_key_from_environment(args.api_key_env), args.model)
    for check in checks:
        mark = {True: "✓", False: "✗", None: "?"}[check.passed]
        print(f"{mark} {check.name}: {check.detail}")
    failed = [check for check in checks if check.passed is False]
    print("✗ the server is not ready for ICM" if failed else "✓ the server is ready for ICM")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distillery", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"distillery {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_consolidate(commands)
    _add_batch_consolidate(commands)
    _add_verify(commands)
    _add_print_structure(commands)
    _add_validate_plans(commands)
    _add_maxtext_param_only(commands)
    _add_maxtext_to_hf(commands)
    _add_make_tiny_model(commands)
    _add_make_tiny_dataset(commands)
    add_kd_commands(commands)

    _add_icm(commands)
    _add_serve(commands)
    _add_check_server(commands)

    _add_titan_to_hf(commands)
    _add_infer(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if args.verbose or args.debug
        else "%(levelname)s: %(message)s",
    )
    try:
        return args.handler(args)
    except DistilleryError as exc:
        if args.debug:
            raise
        print(f"distillery {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"distillery {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
