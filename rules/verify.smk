# Verification: files, headers, config, tensors, NaN/Inf and logits against the source, as a report.


rule verify_model:
    input:
        model=f"{RESULTS}/models/{{model}}/hf",
        reference=reference_path,
    output:
        json=f"{RESULTS}/models/{{model}}/verification.json",
        markdown=f"{RESULTS}/models/{{model}}/verification.md",
    log:
        "logs/verify_model/{model}.log",
    benchmark:
        f"{RESULTS}/benchmarks/verify_model/{{model}}.tsv"
    conda:
        "../envs/convert-torch.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, input: sizing.verify_mem_mb(
            input.model, input.get("reference")
        ),
        runtime=lambda wildcards, input: sizing.verify_runtime_min(input.model),
    params:
        reference=reference_flag,
        flags=verify_flags,
    shell:
        "distillery verify --model-path {input.model} {params.reference} {params.flags}"
        " --report {output.json} --markdown {output.markdown} > {log} 2>&1"
