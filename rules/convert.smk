# Conversions: training checkpoints -> HF model folders (config, safetensors, tokenizer, provenance.json).
# hf_merge (HF folders), deepspeed_consolidate (DeepSpeed ZeRO), titan_to_hf (TorchTitan DCP or .pt).


rule hf_merge:
    input:
        source_path,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/hf_merge/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/hf_merge/{{model}}.tsv"
    wildcard_constraints:
        model=HF_MODELS,
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


rule deepspeed_consolidate:
    input:
        checkpoint=source_path,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/deepspeed_consolidate/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/deepspeed_consolidate/{{model}}.tsv"
    wildcard_constraints:
        model=DEEPSPEED_MODELS,
    conda:
        "../envs/convert-torch.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input: sizing.deepspeed_mem_mb(input.checkpoint),
        runtime=lambda wildcards, input: sizing.merge_runtime_min(input.checkpoint),
    params:
        flags=consolidate_flags,
    shell:
        "distillery consolidate --input {input.checkpoint} --output {output} --type deepspeed {params.flags}"
        " > {log} 2>&1"


rule titan_to_hf:
    input:
        checkpoint=source_path,
        extra=titan_inputs,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/titan_to_hf/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/titan_to_hf/{{model}}.tsv"
    wildcard_constraints:
        model=TITAN_MODELS,
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input: sizing.titan_mem_mb(input.checkpoint),
        runtime=lambda wildcards, input: sizing.merge_runtime_min(input.checkpoint),
    params:
        flags=titan_flags,
    shell:
        "distillery titan-to-hf --input {input.checkpoint} --output {output} {params.flags} > {log} 2>&1"
