# Conversions: training checkpoints -> HF model folders (config, safetensors, tokenizer, provenance.json).
# hf_merge (HF folders), deepspeed_consolidate (DeepSpeed ZeRO), titan_to_hf (TorchTitan DCP or .pt),
# maxtext_param_only and maxtext_to_hf (MaxText Orbax), gguf_to_hf (llama.cpp GGUF).


rule hf_merge:
    input:
        checkpoint=source_path,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/hf_merge/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/hf_merge/{{model}}.tsv"
    wildcard_constraints:
        model=models_of_rule("hf_merge"),
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=conversion_mem_mb,
        runtime=conversion_runtime_min,
    params:
        flags=conversion_flags,
    shell:
        "distillery consolidate --input {input.checkpoint} --output {output} --type hf_sharded {params.flags}"
        " > {log} 2>&1"


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
        model=models_of_rule("deepspeed_consolidate"),
    conda:
        "../envs/convert-torch.yaml"
    threads: 2
    resources:
        mem_mb=conversion_mem_mb,
        runtime=conversion_runtime_min,
    params:
        flags=conversion_flags,
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
        model=models_of_rule("maxtext_param_only"),
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
        checkpoint=conversion_input,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/maxtext_to_hf/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/maxtext_to_hf/{{model}}.tsv"
    wildcard_constraints:
        model=models_of_rule("maxtext_to_hf"),
    conda:
        "../envs/convert-jax.yaml"
    threads: 4
    resources:
        mem_mb=conversion_mem_mb,
        runtime=conversion_runtime_min,
    params:
        checkpoint=conversion_path,
        flags=conversion_flags,
    shell:
        "distillery maxtext-to-hf --orbax-checkpoint {params.checkpoint} --hf-model-path {output}"
        " {params.flags} > {log} 2>&1"


rule titan_to_hf:
    input:
        checkpoint=source_path,
        extra=conversion_extra_inputs,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/titan_to_hf/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/titan_to_hf/{{model}}.tsv"
    wildcard_constraints:
        model=models_of_rule("titan_to_hf"),
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=conversion_mem_mb,
        runtime=conversion_runtime_min,
    params:
        flags=conversion_flags,
    shell:
        "distillery titan-to-hf --input {input.checkpoint} --output {output} {params.flags} > {log} 2>&1"


rule gguf_to_hf:
    input:
        checkpoint=source_path,
    output:
        directory(f"{RESULTS}/models/{{model}}/hf"),
    log:
        "logs/gguf_to_hf/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/gguf_to_hf/{{model}}.tsv"
    wildcard_constraints:
        model=models_of_rule("gguf_to_hf"),
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=conversion_mem_mb,
        runtime=conversion_runtime_min,
    params:
        flags=conversion_flags,
    shell:
        "distillery gguf-to-hf --input {input.checkpoint} --output {output} {params.flags} > {log} 2>&1"
