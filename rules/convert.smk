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


rule maxtext_param_only:
    input:
        full_state=local_source,
    output:
        directory(f"{RESULTS}/models/{{model}}/param_only"),
    log:
        "logs/maxtext_param_only/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/maxtext_param_only/{{model}}.tsv"
    wildcard_constraints:
        model=MAXTEXT_FULL_STATE_MODELS,
    conda:
        "../envs/convert-jax.yaml"
    threads: 4
    resources:
        mem_mb=lambda wildcards: sizing.maxtext_param_only_mem_mb(
            source_path(wildcards)
        ),
        runtime=lambda wildcards: sizing.maxtext_runtime_min(source_path(wildcards)),
    params:
        source=source_path,
    shell:
        "distillery maxtext-param-only --load-full-state-path {params.source} --checkpoint-dir {output}"
        " > {log} 2>&1"


rule maxtext_to_hf:
    input:
        checkpoint=maxtext_param_only_input,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/maxtext_to_hf/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/maxtext_to_hf/{{model}}.tsv"
    wildcard_constraints:
        model=MAXTEXT_MODELS,
    conda:
        "../envs/convert-jax.yaml"
    threads: 4
    resources:
        mem_mb=lambda wildcards: sizing.maxtext_to_hf_mem_mb(
            maxtext_param_only_path(wildcards)
        ),
        runtime=lambda wildcards: sizing.maxtext_runtime_min(
            maxtext_param_only_path(wildcards)
        ),
    params:
        checkpoint=maxtext_param_only_path,
        flags=maxtext_flags,
    shell:
        "distillery maxtext-to-hf --orbax-checkpoint {params.checkpoint} --hf-model-path {output}"
        " {params.flags} > {log} 2>&1"


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
