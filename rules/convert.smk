# Conversions: training checkpoints -> HF model folders (config, safetensors, tokenizer, provenance.json).


rule hf_merge:
    input:
        source_path,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/hf_merge/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/hf_merge/{{model}}.tsv"
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input: sizing.merge_mem_mb(input[0]),
        runtime=lambda wildcards, input: sizing.merge_runtime_min(input[0]),
    params:
        flags=consolidate_flags,
    shell:
        "distillery consolidate --input {input} --output {output} --type hf_sharded {params.flags} > {log} 2>&1"
