# Config lookups and input functions; the rules themselves stay declarative.
import re
import shlex
from pathlib import Path

from workflow_scripts.kd.manifest import load_manifest
from workflow_scripts.verify import settings as verify_settings
from workflow_scripts.workflow import formats
from workflow_scripts.workflow import icm_jobs
from workflow_scripts.workflow import resources as sizing
from workflow_scripts.workflow.kd_jobs import (
    check_teachers,
    chunk_files,
    manifest_is_current,
    missing_chunk_files,
    wire_kd_jobs,
)
from workflow_scripts.workflow.model_targets import model_targets

RESULTS = config["results"]
WORK = config["work"]
VERIFY = config["verify"]
MODELS = model_targets(config["models"])


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
    target = MODELS[wildcards.model]
    return formats.format_of(target).extra_inputs(target)


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


# --- sequence-KD generation -------------------------------------------------------------------------------------

BUILT_DATASETS = {
    name: f"{WORK}/datasets/{name}" for name in config.get("tiny_datasets", {})
}
KD_JOBS = wire_kd_jobs(
    config.get("kd", {}),
    {model: hf_model_dir(model) for model in MODELS},
    BUILT_DATASETS,
)
check_teachers(KD_JOBS, config.get("kd", {}), MODELS)

# Each job name matches the dataset step of its own output format only; "(?!)" matches no name at all.
KD_JOBS_BY_FORMAT = {
    output_format: "|".join(
        re.escape(job)
        for job, plan in KD_JOBS.items()
        if plan.output_format == output_format
    )
    or "(?!)"
    for output_format in ("jsonl", "parquet")
}


def tiny_dataset_flags(wildcards):
    settings = config["tiny_datasets"][wildcards.dataset]
    return " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in settings.items()
    )


def kd_manifest_path(job):
    return f"{RESULTS}/kd/{job}/manifest.json"


def kd_dataset_outputs(job):
    folder = f"{RESULTS}/kd/{job}"
    return [
        f"{folder}/dataset.{KD_JOBS[job].output_format}",
        f"{folder}/summary.json",
    ]


def _kd_model(plan):
    """The teacher folder as an input: the workflow's own model follows --default-storage-provider, a folder of
    the user's is read where it is."""
    if not plan.model_input:
        return None
    return plan.model_input if plan.model_is_built else local(plan.model_input)


def kd_manifest_inputs(wildcards):
    plan = KD_JOBS[wildcards.job]
    if plan.built_dataset:
        return {"data": plan.built_dataset}
    return {"data": [local(path) for path in plan.dataset_inputs]}


def kd_teacher_inputs(wildcards):
    model = _kd_model(KD_JOBS[wildcards.job])
    return {"model": model} if model else {}


def kd_local_dataset(wildcards, input):
    """Where a job reads the built dataset: the storage plugin's copy, or the folder itself."""
    built = KD_JOBS[wildcards.job].built_dataset
    return f"--local-dataset={shlex.quote(str(input.data))}" if built else ""


def kd_local_model(wildcards, input):
    return (
        f"--local-model={shlex.quote(str(input.model))}" if input.get("model") else ""
    )


def kd_chunk_model(wildcards):
    return _kd_model(KD_JOBS[wildcards.job]) or []


def kd_chunk_data(wildcards):
    return KD_JOBS[wildcards.job].built_dataset or []


# A chunk job is outdated by teacher.json (the model or the settings changed), never by the manifest: a new parquet
# file rewrites the manifest, and that must not redo finished chunks. With a storage provider every job fetches
# what it reads, so the manifest (`ancient`), the teacher and the built dataset become inputs (a new teacher also
# makes a new teacher.json; a rebuilt dataset has other rows, so its chunks are redone). Without one they are
# read by path: as inputs, the manifest would put the checkpoint among the dependencies of every chunk, which
# Snakemake re-evaluates (it tripled the planning time of 10,000 chunks).
USES_STORAGE = workflow.storage_settings.default_storage_provider is not None
KD_MANIFEST = f"{RESULTS}/kd/{{job}}/manifest.json"
KD_TEACHER = f"{RESULTS}/kd/{{job}}/teacher.json"
if USES_STORAGE:
    KD_CHUNK_INPUTS = {
        "teacher": KD_TEACHER,
        "manifest": ancient(KD_MANIFEST),
        "model": kd_chunk_model,
        "data": kd_chunk_data,
    }
    KD_CHUNK_PARAMS = {
        "manifest": lambda wildcards, input: input.manifest,
        "copies": lambda wildcards, input: " ".join(
            (kd_local_model(wildcards, input), kd_local_dataset(wildcards, input))
        ),
    }
else:
    KD_CHUNK_INPUTS = {"teacher": KD_TEACHER}
    KD_CHUNK_PARAMS = {"manifest": KD_MANIFEST, "copies": ""}


def kd_dataset_inputs(wildcards):
    chunks = {"chunks": kd_chunk_files(wildcards)}
    if USES_STORAGE:
        return {"manifest": kd_manifest_path(wildcards.job), **chunks}
    return chunks


def kd_dataset_manifest(wildcards, input):
    """The storage plugin's copy where there is one (the inputs are complete only once the checkpoint ran)."""
    return input.get("manifest") or kd_manifest_path(wildcards.job)


def kd_chunk_files(wildcards):
    """The chunks of the job's manifest. A current manifest is read directly: a checkpoint in the DAG makes
    Snakemake redo its bookkeeping after every job, which at 10,000 chunks costs more than the planning itself.
    """
    path = kd_manifest_path(wildcards.job)
    if manifest_is_current(path, KD_JOBS[wildcards.job]):
        chunks = load_manifest(path).chunks
    else:
        manifest = checkpoints.kd_manifest.get(job=wildcards.job).output[0]
        # open(): where a storage provider keeps the manifest, Snakemake fetches it first and asks again.
        with manifest.open():
            chunks = load_manifest(manifest).chunks
    return chunk_files(f"{RESULTS}/kd/{wildcards.job}", chunks)


def kd_missing_chunks(wildcards):
    """Chunk files deleted beside a finished dataset, as targets of `all` and `kd` (see missing_chunk_files)."""
    return [
        path
        for job, plan in KD_JOBS.items()
        for path in missing_chunk_files(
            plan, f"{RESULTS}/kd/{job}", kd_dataset_outputs(job)
        )
    ]


def kd_gpus(wildcards):
    return KD_JOBS[wildcards.job].gpus


def _same_for_all_jobs(value_of, per_job_function):
    """A plain value when every KD job has the same one, else the per-job function."""
    values = {value_of(plan) for plan in KD_JOBS.values()}
    return values.pop() if len(values) == 1 else per_job_function


KD_CHUNK_RESOURCES = {
    "gpu": _same_for_all_jobs(lambda plan: plan.gpus, kd_gpus),
    "mem_mb": _same_for_all_jobs(
        lambda plan: 32768 if plan.gpus else 4096,
        lambda wildcards: 32768 if kd_gpus(wildcards) else 4096,
    ),
}
# vLLM's environment (it pins its own torch) where any job runs on GPUs, else the CPU one.
KD_CHUNK_ENV = (
    "../envs/vllm.yaml"
    if any(plan.gpus for plan in KD_JOBS.values())
    else "../envs/generate.yaml"
)


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
    """The user's data file, read where it is (also with --default-storage-provider). A relative path missing
    from the working directory is looked up beside the Snakefile (config/icm/)."""
    path = Path(icm_settings(wildcards.job)["data"]["path"])
    if not (path.is_absolute() or path.exists()):
        path = Path(workflow.basedir) / path
    return local(str(path))


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
