# distillery: training checkpoints -> vLLM-ready teacher models -> verified, ready for data generation.
# The DAG and artifact paths are described in README.md; every step is a `distillery` CLI command.
from snakemake.utils import min_version, validate

min_version("9.0")


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
