# distillery: training checkpoints -> vLLM-ready teacher models -> verified, ready for data generation.
# The DAG and artifact paths are described in README.md; every step is a `distillery` CLI command.
from snakemake.utils import min_version, validate

from workflow_scripts.workflow.slurm_states import read_cancelled_jobs_as_failed

min_version("9.0")
# `scancel` of a job is a failure that the profile's retries answer, not a job that never ends (see the module).
read_cancelled_jobs_as_failed()


configfile: "config/config.yaml"


validate(config, "config/schema/config.schema.yaml")


include: "rules/common.smk"
include: "rules/sources.smk"
include: "rules/convert.smk"
include: "rules/verify.smk"
include: "rules/generate.smk"
include: "rules/icm.smk"


rule all:
    default_target: True
    input:
        all_outputs(),


rule models:
    input:
        [hf_model_dir(model) for model in MODELS],


rule verification:
    input:
        [verification_report(model) for model in MODELS],


rule kd:
    input:
        [path for job in KD_JOBS for path in kd_dataset_outputs(job)],


rule icm:
    input:
        [icm_labels(job) for job in ICM_JOBS],
