# Figures of `snakemake --report report.html`: each model's and job's JSON artifacts as HTML tables and SVG plots
# (workflow_scripts/report/), with a caption per figure in report/. Local jobs: each reads a few small files in
# about a second, less than a cluster job's queue wait.
from workflow_scripts.workflow.report_figures import ReportFigures

FIGURES = ReportFigures(RESULTS)

figure_path = lambda stage, name: FIGURES.path(stage, name)
report_figures = lambda: FIGURES.all(list(MODELS), KD_JOBS, ICM_JOBS)
kd_report_dataset = lambda wildcards: KD.dataset_path(wildcards.job)


rule report_model:
    input:
        verification=f"{RESULTS}/models/{{model}}/verification.json",
        plans=plan_reports,
    output:
        verification=report(
            figure_path("models", "verification"),
            caption="../report/verification.rst",
            category="Models",
            subcategory="{model}",
            labels={"figure": "verification"},
        ),
        plans=report(
            figure_path("models", "plans"),
            caption="../report/plans.rst",
            category="Models",
            subcategory="{model}",
            labels={"figure": "parallel plans"},
        ),
    log:
        "logs/report_model/{model}.log",
    localrule: True
    conda:
        "../envs/generate.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=5,
    params:
        plans=plans_flags,
    shell:
        "distillery report-model --verification {input.verification} {params.plans}"
        " --verification-html {output.verification} --plans-html {output.plans} > {log} 2>&1"


rule report_kd:
    input:
        summary=f"{RESULTS}/kd/{{job}}/summary.json",
        dataset=kd_report_dataset,
    output:
        summary=report(
            figure_path("kd", "summary"),
            caption="../report/kd_summary.rst",
            category="KD datasets",
            subcategory="{job}",
            labels={"figure": "summary"},
        ),
        throughput=report(
            figure_path("kd", "throughput"),
            caption="../report/kd_throughput.rst",
            category="KD datasets",
            subcategory="{job}",
            labels={"figure": "tokens/s per chunk"},
        ),
        samples=report(
            figure_path("kd", "samples"),
            caption="../report/kd_samples.rst",
            category="KD datasets",
            subcategory="{job}",
            labels={"figure": "sample completions"},
        ),
    log:
        "logs/report_kd/{job}.log",
    localrule: True
    conda:
        "../envs/generate.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=5,
    shell:
        "distillery report-kd --summary {input.summary} --dataset {input.dataset} --summary-html {output.summary}"
        " --throughput-svg {output.throughput} --samples-html {output.samples} > {log} 2>&1"


rule report_icm:
    input:
        report=f"{RESULTS}/icm/{{job}}/report.json",
        labels=f"{RESULTS}/icm/{{job}}/labels.jsonl",
    output:
        summary=report(
            figure_path("icm", "summary"),
            caption="../report/icm_summary.rst",
            category="ICM labels",
            subcategory="{job}",
            labels={"figure": "accuracy and label balance"},
        ),
        objective=report(
            figure_path("icm", "objective"),
            caption="../report/icm_objective.rst",
            category="ICM labels",
            subcategory="{job}",
            labels={"figure": "objective per iteration"},
        ),
    log:
        "logs/report_icm/{job}.log",
    localrule: True
    conda:
        "../envs/generate.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=5,
    shell:
        "distillery report-icm --job {wildcards.job} --report {input.report} --labels {input.labels}"
        " --summary-html {output.summary} --objective-svg {output.objective} > {log} 2>&1"
