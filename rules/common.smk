# Config lookups and input functions; the rules themselves stay declarative.
import shlex
from pathlib import Path

from workflow_scripts.formats.hf_checkpoint import has_hf_weights
from workflow_scripts.workflow import icm_jobs
from workflow_scripts.workflow import resources as sizing
from workflow_scripts.workflow.models import names_regex, plan_models

RESULTS = config["results"]
WORK = config["work"]
VERIFY = config["verify"]
MODELS = plan_models(config["models"])
HF_MODELS = names_regex(MODELS, "hf")
DEEPSPEED_MODELS = names_regex(MODELS, "deepspeed")


wildcard_constraints:
    model="[^/]+",
    source="[^/]+",
    tp="\\d+",
    pp="\\d+",
    job="[^/]+",


def model_config(model):
    return MODELS[model].settings


def hf_model_dir(model):
    return f"{RESULTS}/models/{model}/hf"


def verification_report(model):
    return f"{RESULTS}/models/{model}/verification.json"


def source_path(wildcards):
    return MODELS[wildcards.model].source


def reference_path(wildcards):
    """The numeric reference for verify_model: the model's own source by default."""
    reference = (
        model_config(wildcards.model).get("verify", {}).get("reference", "source")
    )
    if reference == "none":
        return []
    if reference != "source":
        return reference
    plan = MODELS[wildcards.model]
    # A DeepSpeed checkpoint is a reference only where HF Trainer also saved model weights beside it.
    if plan.format == "deepspeed" and not has_hf_weights(Path(plan.source)):
        return []
    return plan.source


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


def verify_flags(wildcards):
    flags = [
        f"--probe-prompt {shlex.quote(prompt)}" for prompt in VERIFY["probe_prompts"]
    ]
    flags += [
        f"--tolerance {dtype}={value}" for dtype, value in VERIFY["tolerances"].items()
    ]
    if VERIFY["expect_single_file"]:
        flags.append("--expect-single-file")
    return " ".join(flags)


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
    return " ".join(flags)


def all_outputs():
    # The models are targets too, so deleting one rebuilds it (and its report), not only a missing report.
    return [
        path
        for model in MODELS
        for path in (
            hf_model_dir(model),
            verification_report(model),
            verification_report(model).replace(".json", ".md"),
        )
    ] + [icm_labels(job) for job in ICM_JOBS]


# ICM label elicitation (rules/icm.smk).
ICM = config.get("icm", {})
ICM_JOBS = list(ICM.get("jobs", {}))
icm_jobs.check_jobs(ICM, MODELS)


def icm_settings(job):
    return icm_jobs.job_settings(ICM, job)


def icm_labels(job):
    return f"{RESULTS}/icm/{job}/labels.jsonl"


def icm_model_input(wildcards):
    """A workflow model is built first; a folder is used as is; a served model name is no file at all."""
    model = icm_settings(wildcards.job)["model"]
    if model in MODELS:
        return hf_model_dir(model)
    return model if Path(model).exists() else []


def icm_model_flag(wildcards, input):
    model = input.get("model") or icm_settings(wildcards.job)["model"]
    return f"--model {shlex.quote(str(model))}"


def icm_data_input(wildcards):
    """A relative path missing from the working directory is looked up beside the Snakefile (config/icm/)."""
    path = Path(icm_settings(wildcards.job)["data"]["path"])
    if path.is_absolute() or path.exists():
        return str(path)
    return str(Path(workflow.basedir) / path)


def icm_server_input(wildcards):
    if icm_jobs.starts_server(icm_settings(wildcards.job)):
        return f"{WORK}/icm/{wildcards.job}/server.url"
    return []


def icm_server_flag(wildcards, input):
    return f"--base-url-file {input.server}" if input.get("server") else ""


def icm_flags(wildcards):
    return icm_jobs.icm_flags(icm_settings(wildcards.job))


def icm_serve_flags(wildcards):
    return icm_jobs.serve_flags(icm_settings(wildcards.job))


def icm_gpus(wildcards):
    return icm_jobs.icm_gpus(icm_settings(wildcards.job))


def icm_server_gpus(wildcards):
    return int(icm_settings(wildcards.job)["tensor_parallel_size"])


def icm_mem_mb(wildcards, input):
    model = input.get("model")
    return icm_jobs.icm_mem_mb(
        icm_settings(wildcards.job), sizing.weights_mb(model) if model else 0
    )


def icm_runtime(wildcards):
    return icm_jobs.icm_runtime_min(icm_settings(wildcards.job))
