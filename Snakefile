# distillery: training checkpoints -> vLLM-ready teacher models -> verified, ready for data generation.
# The DAG and artifact paths are described in README.md; every step is a `distillery` CLI command.
from snakemake.utils import min_version, validate

from workflow_scripts.workflow.config_check import check_config_sources, one_line_errors
from workflow_scripts.workflow.slurm_states import read_cancelled_jobs_as_failed

min_version("9.0")
# `scancel` of a job is a failure that the profile's retries answer, not a job that never ends (see the module).
read_cancelled_jobs_as_failed()


# The demo config runs only when no --configfile is given: a `configfile:` always loaded would merge the demo's
# models and jobs under the user's config (Snakemake puts --configfile on top of it).
DEMO_CONFIG = f"{workflow.basedir}/config/config.yaml"
with one_line_errors():
    check_config_sources(
        workflow.overwrite_configfiles or [DEMO_CONFIG], workflow.config_settings.config
    )
if not workflow.overwrite_configfiles:

    configfile: DEMO_CONFIG


validate(config, "config/schema/config.schema.yaml")


report: "report/workflow.rst"


# A user's mistake found while planning (a missing model, an unset variable) is one line, without a traceback.
with one_line_errors():

    include: "rules/common.smk"
    include: "rules/sources.smk"
    include: "rules/convert.smk"
    include: "rules/layouts.smk"
    include: "rules/verify.smk"
    include: "rules/generate.smk"
    include: "rules/icm.smk"
    include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
        kd_missing_chunks,


rule models:
    input:
        [hf_model_dir(model) for model in MODELS],


rule layouts:
    input:
        LAYOUTS.outputs(),


rule verification:
    input:
        [verification_report(model) for model in MODELS],


rule kd:
    input:
        [path for job in KD_JOBS for path in kd_dataset_outputs(job)],
        kd_missing_chunks,


rule icm:
    input:
        [icm_labels(job) for job in ICM_JOBS],
