# Config lookups and input functions; the rules themselves stay declarative.
import shlex
from pathlib import Path

from workflow_scripts.workflow import resources as sizing
from workflow_scripts.workflow.model_targets import names_regex, model_targets

RESULTS = config["results"]
WORK = config["work"]
VERIFY = config["verify"]
MODELS = model_targets(config["models"])
HF_MODELS = names_regex(MODELS, "hf")
DEEPSPEED_MODELS = names_regex(MODELS, "deepspeed")
MAXTEXT_MODELS = names_regex(MODELS, "maxtext")
MAXTEXT_FULL_STATE_MODELS = names_regex(MODELS, "maxtext", full_state=True)
TITAN_MODELS = names_regex(MODELS, "titan")


wildcard_constraints:
    model="[^/]+",
    source="[^/]+",
    tp="\\d+",
    pp="\\d+",
    job="[^/]+",
    part="[^/]+",
    start="\\d{9}",
    stop="\\d{9}",
    dataset="[^/]+",


def model_config(model):
    return MODELS[model].settings


def hf_model_dir(model):
    return f"{RESULTS}/models/{model}/hf"


def verification_report(model):
    return f"{RESULTS}/models/{model}/verification.json"


def stored(path):
    """A path in a bucket (s3://, gs://) is fetched through Snakemake's storage plugins; a local one is as is."""
    return storage(path) if path.startswith(("s3://", "gs://", "gcs://")) else path


def source_path(wildcards):
    return stored(MODELS[wildcards.model].source)


def local_source(wildcards):
    """The source as an input Snakemake can check; a gs:// source is passed as a parameter only."""
    source = source_path(wildcards)
    return [] if "://" in source else source


def maxtext_param_only_path(wildcards):
    """The param-only checkpoint maxtext_to_hf converts: made by maxtext_param_only, or the source itself."""
    plan = MODELS[wildcards.model]
    return (
        f"{RESULTS}/models/{wildcards.model}/param_only"
        if plan.full_state
        else plan.source
    )


def maxtext_param_only_input(wildcards):
    path = maxtext_param_only_path(wildcards)
    return [] if "://" in path else path


def maxtext_flags(wildcards):
    settings = model_config(wildcards.model)
    source = settings["source"]
    dtype = "bfloat16" if settings["dtype"] == "original" else settings["dtype"]
    flags = [
        f"--model-size {shlex.quote(source['model_size'])}",
        f"--dtype {dtype}",
        f"--max-shard-size {settings['max_shard_size']}",
    ]
    if source.get("config"):
        flags.append(f"--config {shlex.quote(source['config'])}")
    if source.get("tokenizer"):
        flags.append(f"--tokenizer-path {shlex.quote(source['tokenizer'])}")
    return " ".join(flags)


def reference_path(wildcards):
    """The numeric reference for verify_model: the model's own source by default."""
    reference = (
        model_config(wildcards.model).get("verify", {}).get("reference", "source")
    )
    if reference == "none":
        return []
    if reference != "source":
        return stored(reference)
    plan = MODELS[wildcards.model]
    if plan.format == "maxtext":
        # MaxText's math on the param-only arrays (verify/maxtext_reference.py); local checkpoints only.
        return maxtext_param_only_input(wildcards)
    # A DeepSpeed checkpoint is a reference only where HF Trainer also saved model weights beside it.
    if plan.format == "deepspeed":
        # Imported here: the module loads torch, which every parse of the Snakefile would pay for.
        from workflow_scripts.formats.hf_checkpoint import has_hf_weights

        if not has_hf_weights(Path(plan.source)):
            return []
    return stored(plan.source)


def reference_flag(wildcards, input):
    return f"--reference {input.reference}" if input.get("reference") else ""


def consolidate_flags(wildcards):
    settings = model_config(wildcards.model)
    flags = [f"--max-shard-size {settings['max_shard_size']}"]
    if settings["dtype"] == "original":
        flags.append("--keep-original-precision")
    else:
        flags.append(f"--dtype {settings['dtype']}")
    if settings["weights_format"] == "pytorch_bin":
        flags.append("--pytorch-bin")
    if settings.get("base_model"):
        flags.append(f"--base-model-name {settings['base_model']}")
    if settings["source"].get("trust_pickle"):
        flags.append("--trust-pickle")
    return " ".join(flags)


def titan_inputs(wildcards):
    """The config and tokenizer a TorchTitan conversion reads besides the checkpoint."""
    source = model_config(wildcards.model)["source"]
    return [source[key] for key in ("config", "tokenizer") if source.get(key)]


def titan_flags(wildcards):
    settings = model_config(wildcards.model)
    source = settings["source"]
    flags = [f"--max-shard-size {settings['max_shard_size']}"]
    if settings["dtype"] == "original":
        flags.append("--keep-original-precision")
    else:
        flags.append(f"--dtype {settings['dtype']}")
    for key in ("config", "flavor", "tokenizer"):
        if source.get(key):
            flags.append(f"--{key} {shlex.quote(str(source[key]))}")
    if not source.get("tokenizer") and settings.get("base_model"):
        flags.append(f"--tokenizer {settings['base_model']}")
    return " ".join(flags)


def verify_flags(wildcards):
    flags = [
        f"--probe-prompt {shlex.quote(prompt)}" for prompt in VERIFY["probe_prompts"]
    ]
    flags += [
        f"--tolerance {dtype}={value}" for dtype, value in VERIFY["tolerances"].items()
    ]
    if VERIFY["expect_single_file"]:
        flags.append("--expect-single-file")
    return " ".join(flags + trust_remote_code_flag(wildcards.model))


def tiny_model_flags(wildcards):
    settings = config["tiny_models"][wildcards.source]
    return " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in settings.items()
    )


def plan_reports(wildcards):
    return [
        f"{RESULTS}/models/{wildcards.model}/plans/tp{size['tp']}_pp{size['pp']}.json"
        for size in VERIFY["parallel_sizes"]
    ]


def plans_flags(wildcards, input):
    return " ".join(f"--plans {path}" for path in input.plans)


def budget_flags(wildcards):
    flags = [
        f"--max-model-len {VERIFY['max_model_len']}",
        f"--batch {VERIFY['serving_batch']}",
    ]
    if VERIFY.get("gpu_memory_gib"):
        flags.append(f"--gpu-memory {VERIFY['gpu_memory_gib']}")
    return " ".join(flags + trust_remote_code_flag(wildcards.model))


def trust_remote_code_flag(model):
    trusted = model_config(model).get("trust_remote_code")
    return ["--trust-remote-code"] if trusted else []


def all_outputs():
    # The models are targets too, so deleting one rebuilds it (and its report), not only a missing report.
    return (
        [
            path
            for model in MODELS
            for path in (
                hf_model_dir(model),
                verification_report(model),
                verification_report(model).replace(".json", ".md"),
            )
        ]
        + [path for job in KD_JOBS for path in kd_dataset_outputs(job)]
        + [icm_labels(job) for job in ICM_JOBS]
    )


def tiny_dataset_flags(wildcards):
    settings = config["tiny_datasets"][wildcards.dataset]
    return " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in settings.items()
    )
