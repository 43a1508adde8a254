# ICM label elicitation: a label set per job, and (optionally) the vLLM server its job talks to.
# The wiring is workflow/icm_wiring.py; these wrappers only bind wildcards and pass Snakemake's local() in.
from workflow_scripts.workflow.icm_wiring import IcmWiring

ICM = IcmWiring.from_config(
    config, {model: hf_model_dir(model) for model in MODELS}, workflow.basedir
)
ICM_JOBS = ICM.jobs


icm_labels = lambda job: ICM.labels_path(job)
icm_model_input = lambda wildcards: ICM.model_input(wildcards.job)
icm_data_input = lambda wildcards: ICM.data_input(wildcards.job, local)
icm_server_input = lambda wildcards: ICM.server_input(wildcards.job)
icm_model_flag = lambda wildcards, input: ICM.model_flag(
    wildcards.job, input.get("model")
)
icm_server_flag = lambda wildcards, input: ICM.server_flag(input.get("server"))
icm_flags = lambda wildcards: ICM.flags(wildcards.job)
icm_serve_flags = lambda wildcards: ICM.serve_flags(wildcards.job)
icm_gpus = lambda wildcards: ICM.gpus(wildcards.job)
icm_server_gpus = lambda wildcards: ICM.server_gpus(wildcards.job)
icm_mem_mb = lambda wildcards, input: ICM.mem_mb(wildcards.job, input.get("model"))
icm_server_mem_mb = lambda wildcards, input: ICM.server_mem_mb(input.model)
icm_runtime = lambda wildcards: ICM.runtime(wildcards.job)


rule icm_labels:
    input:
        model=icm_model_input,
        data=icm_data_input,
        server=icm_server_input,
    output:
        labels=f"{RESULTS}/icm/{{job}}/labels.jsonl",
        report=f"{RESULTS}/icm/{{job}}/report.json",
    log:
        "logs/icm_labels/{job}.log",
    benchmark:
        f"{RESULTS}/benchmarks/icm_labels/{{job}}.tsv"
    conda:
        "../envs/vllm.yaml"
    threads: 2
    resources:
        gpu=icm_gpus,
        mem_mb=icm_mem_mb,
        runtime=icm_runtime,
    params:
        model=icm_model_flag,
        server=icm_server_flag,
        flags=icm_flags,
        output_dir=lambda wildcards, output: Path(output.labels).parent,
        state=f"{WORK}/icm/{{job}}/state.json",
    shell:
        "distillery icm --data {input.data} {params.model} {params.server} {params.flags}"
        " --output-dir {params.output_dir} --state {params.state} > {log} 2>&1"


# A `vllm serve` for the jobs that ask for one (engine: openai, server: {start: true}): a service job that
# runs while its consumer does and is stopped when the consumer is done. exec: Snakemake stops a service by
# signalling its shell, which would leave vLLM running on the GPUs.
rule vllm_server:
    input:
        model=icm_model_input,
    output:
        service(f"{WORK}/icm/{{job}}/server.url"),
    log:
        "logs/vllm_server/{job}.log",
    conda:
        "../envs/vllm.yaml"
    threads: 4
    resources:
        gpu=icm_server_gpus,
        mem_mb=icm_server_mem_mb,
        runtime=icm_runtime,
    params:
        flags=icm_serve_flags,
    shell:
        "exec distillery serve --model {input.model} {params.flags} --url-file {output} > {log} 2>&1"
