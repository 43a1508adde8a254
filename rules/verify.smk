# Verification: files, headers, config, tensors, NaN/Inf and logits against the source, as a report.


rule verify_model:
    input:
        model=f"{RESULTS}/models/{{model}}/hf",
        reference=reference_path,
        plans=plan_reports,
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
        plans=plans_flags,
        flags=verify_flags,
    shell:
        "distillery verify --model-path {input.model} {params.reference} {params.plans} {params.flags}"
        " --report {output.json} --markdown {output.markdown} > {log} 2>&1"


rule validate_plans:
    input:
        model=f"{RESULTS}/models/{{model}}/hf",
    output:
        json=f"{RESULTS}/models/{{model}}/plans/tp{{tp}}_pp{{pp}}.json",
        markdown=f"{RESULTS}/models/{{model}}/plans/tp{{tp}}_pp{{pp}}.md",
    log:
        "logs/validate_plans/{model}_tp{tp}_pp{pp}.log",
    benchmark:
        f"{RESULTS}/benchmarks/validate_plans/{{model}}_tp{{tp}}_pp{{pp}}.tsv"
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    params:
        budget=budget_flags,
    shell:
        "distillery validate-plans {input.model} --tp {wildcards.tp} --pp {wildcards.pp} {params.budget}"
        " --output {output.json} --report-only > {log} 2>&1"
