# Sequence-KD generation: chunk manifest (a checkpoint) -> one JSONL per chunk -> dataset + summary.
# The wiring (inputs, params, resources, with or without a storage provider) is workflow/kd_wiring.py; these
# wrappers only bind wildcards and pass Snakemake's own objects in.
from workflow_scripts.workflow.kd_wiring import KdWiring

KD = KdWiring.from_config(
    config,
    {model: hf_model_dir(model) for model in MODELS},
    uses_storage=workflow.storage_settings.default_storage_provider is not None,
)
KD_JOBS = KD.jobs
KD_JOBS_BY_FORMAT = KD.jobs_by_format()


kd_dataset_outputs = lambda job: KD.dataset_outputs(job)
kd_flags = lambda wildcards: KD.flags(wildcards.job)
kd_manifest_inputs = lambda wildcards: KD.manifest_inputs(wildcards.job, local)
kd_teacher_inputs = lambda wildcards: KD.teacher_inputs(wildcards.job, local)
kd_local_dataset = lambda wildcards, input: KD.local_dataset_flag(
    wildcards.job, input.data
)
kd_local_model = lambda wildcards, input: KD.local_model_flag(input.get("model"))
kd_chunk_model = lambda wildcards: KD.chunk_model(wildcards.job, local)
kd_chunk_data = lambda wildcards: KD.chunk_data(wildcards.job)
kd_chunk_copies = lambda wildcards, input: KD.copies_flags(
    wildcards.job, input.get("model"), input.get("data")
)
kd_gpus = lambda wildcards: KD.gpus(wildcards.job)
kd_chunk_mem_mb = lambda wildcards: KD.chunk_mem_mb(wildcards.job)
kd_dataset_inputs = lambda wildcards: KD.dataset_inputs(
    wildcards.job, checkpoints.kd_manifest
)
kd_dataset_manifest = lambda wildcards, input: KD.dataset_manifest(
    wildcards.job, input.get("manifest")
)
kd_missing_chunks = lambda wildcards: KD.missing_chunks()
kd_chunk_engine = lambda wildcards: KD.chunk_engine(
    wildcards.job, f"{wildcards.part}/{wildcards.start}-{wildcards.stop}", service
)
kd_chunk_stats_engine = lambda wildcards: KD.chunk_engine(
    wildcards.job,
    f"{wildcards.part}/{wildcards.start}-{wildcards.stop}",
    service,
    (".stats.json",),
)
kd_chunk_threads = lambda wildcards: KD.chunk_threads(wildcards.job)
kd_engine_flags = lambda wildcards: KD.engine_flags(wildcards.job)
kd_engine_gpus = lambda wildcards: KD.engine_gpus(wildcards.job)
kd_engine_mem_mb = lambda wildcards: KD.engine_mem_mb(wildcards.job)
kd_engine_threads = lambda wildcards: KD.engine_threads(wildcards.job)
KD_CHUNK_INPUTS = KD.chunk_inputs(
    ancient, kd_chunk_model, kd_chunk_data, kd_chunk_engine
)
KD_CHUNK_PARAMS = KD.chunk_params(kd_chunk_copies)
KD_CHUNK_RESOURCES = KD.chunk_resources(kd_gpus, kd_chunk_mem_mb, kd_chunk_threads)


checkpoint kd_manifest:
    input:
        unpack(kd_manifest_inputs),
    output:
        f"{RESULTS}/kd/{{job}}/manifest.json",
    log:
        "logs/kd_manifest/{job}.log",
    benchmark:
        f"{RESULTS}/benchmarks/kd_manifest/{{job}}.tsv"
    conda:
        "../envs/generate.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=15,
    params:
        flags=kd_flags,
        local_dataset=kd_local_dataset,
    shell:
        "distillery kd-manifest --output {output} {params.flags} {params.local_dataset} > {log} 2>&1"


rule kd_teacher:
    input:
        unpack(kd_teacher_inputs),
    output:
        f"{RESULTS}/kd/{{job}}/teacher.json",
    log:
        "logs/kd_teacher/{job}.log",
    conda:
        "../envs/generate.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        flags=kd_flags,
        local_model=kd_local_model,
    shell:
        "distillery kd-teacher --output {output} {params.flags} {params.local_model} > {log} 2>&1"


# The engines of a group of chunk jobs (`chunks_per_engine` of them, one engine per slot), for jobs with
# engine_server: a service that runs as long as its chunk jobs do (workflow/kd_engines.py says which).
rule kd_engine:
    input:
        teacher=f"{RESULTS}/kd/{{job}}/teacher.json",
    output:
        service(KD.engine_address_pattern()),
    log:
        "logs/kd_engine/{job}/{engine}.log",
    wildcard_constraints:
        engine="\\d{6}",
    conda:
        KD.chunk_env()
    threads: kd_engine_threads
    resources:
        gpu=kd_engine_gpus,
        mem_mb=kd_engine_mem_mb,
        disk_mb=1000,
        runtime=240,
    params:
        manifest=f"{RESULTS}/kd/{{job}}/manifest.json",
        flags=kd_engine_flags,
    # exec: Snakemake stops a service by signalling its shell, which would leave the engines running.
    shell:
        "exec distillery kd-engine --manifest {params.manifest} --address {output} {params.flags} > {log} 2>&1"


rule kd_chunk:
    input:
        **KD_CHUNK_INPUTS,  # teacher.json, its engine job's address, what a job fetches with a storage provider
    output:
        **KD.chunk_outputs(),  # the chunk file; its .stats.json too with a storage provider
    log:
        KD.chunk_log(),  # its progress lines are what `distillery kd-status` reads
    conda:
        KD.chunk_env()
    threads: KD_CHUNK_RESOURCES["threads"]
    # Plain values where the config allows: Snakemake evaluates a function per job, which costs seconds at 10k chunks.
    resources:
        gpu=KD_CHUNK_RESOURCES["gpu"],
        mem_mb=KD_CHUNK_RESOURCES["mem_mb"],
        disk_mb=1000,
        runtime=240,
    params:
        **KD_CHUNK_PARAMS,
    shell:
        "distillery kd-chunk --manifest {params.manifest} --chunk {wildcards.part}/{wildcards.start}-{wildcards.stop}"
        " --output {output} --engine-address={input.engine} {params.copies} > {log} 2>&1"


# A chunk whose .stats.json alone is gone: its job again (kd_chunk declares only the chunk file, see KD.chunk_outputs).
use rule kd_chunk as kd_chunk_stats with:
    input:
        **KD.chunk_inputs(ancient, kd_chunk_model, kd_chunk_data, kd_chunk_stats_engine),
    output:
        stats=KD.lone_stats_output(),
    wildcard_constraints:
        job=KD.lone_stats_jobs(),


rule kd_dataset:
    input:
        unpack(kd_dataset_inputs),
    output:
        dataset=f"{RESULTS}/kd/{{job}}/dataset.jsonl",
        summary=f"{RESULTS}/kd/{{job}}/summary.json",
    log:
        "logs/kd_dataset/{job}.log",
    benchmark:
        f"{RESULTS}/benchmarks/kd_dataset/{{job}}.tsv"
    wildcard_constraints:
        job=KD_JOBS_BY_FORMAT["jsonl"],
    conda:
        "../envs/generate.yaml"
    threads: 1
    resources:
        mem_mb=4096,
        runtime=60,
    params:
        manifest=kd_dataset_manifest,
    shell:
        "distillery kd-dataset --manifest {params.manifest} --output {output.dataset} --summary {output.summary}"
        " > {log} 2>&1"


use rule kd_dataset as kd_dataset_parquet with:
    output:
        dataset=f"{RESULTS}/kd/{{job}}/dataset.parquet",
        summary=f"{RESULTS}/kd/{{job}}/summary.json",
    wildcard_constraints:
        job=KD_JOBS_BY_FORMAT["parquet"],
