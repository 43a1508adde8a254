# Layouts: a model's HF folder written as the training checkpoints users bring (config `layouts:`); the models
# whose source is one of them convert it back (rules/convert.smk). The plan is workflow/layouts.py.
lay_out_flags = lambda wildcards: LAYOUTS.flags(wildcards.model)
lay_out_mem_mb = lambda wildcards, input: sizing.lay_out_mem_mb(
    input.hf, wildcards.layout, LAYOUTS.options(wildcards.model).max_shard_size
)
lay_out_runtime_min = lambda wildcards, input: sizing.lay_out_runtime_min(input.hf)
for message in LAYOUTS.messages():
    logger.info(message)


rule lay_out:
    input:
        hf=lambda wildcards: hf_model_dir(wildcards.model),
    output:
        directory(f"{WORK}/layouts/{{model}}/{{layout}}"),
    log:
        "logs/lay_out/{model}/{layout}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lay_out/{{model}}/{{layout}}.tsv"
    wildcard_constraints:
        model=LAYOUTS.model_constraint(),
        layout=LAYOUTS.layout_constraint(),
    conda:
        "../envs/convert-torch.yaml"
    threads: 1
    resources:
        mem_mb=lay_out_mem_mb,
        runtime=lay_out_runtime_min,
    params:
        flags=lay_out_flags,
    shell:
        "distillery lay-out --input {input.hf} --output {output} --as {wildcards.layout} {params.flags}"
        " > {log} 2>&1"
