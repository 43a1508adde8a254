# Tiny source checkpoints the default config builds for itself, so it runs anywhere without downloads.


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
