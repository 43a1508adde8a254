"""Where the figures of `snakemake --report` go: one folder per model and job under `{results}/report/`, a file per
figure. rules/report.smk writes them (its outputs are these paths with the wildcard left in) and `rule all` asks
for every one, so a run leaves what `snakemake --report report.html` collects.

Plain paths, not `expand(rules.report_model.output, ...)`: with `--default-storage-provider` a rule's outputs are
storage objects, which expand() refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

# stage -> (the wildcard naming a model or job, {figure: file name})
FIGURES = {
    "models": ("model", {"verification": "verification.html", "plans": "plans.html"}),
    "kd": ("job", {"summary": "summary.html", "throughput": "throughput.svg", "samples": "samples.html"}),
    "icm": ("job", {"summary": "summary.html", "objective": "objective.svg"}),
}


@dataclass(frozen=True)
class ReportFigures:
    results: str

    def path(self, stage: str, figure: str, name: str | None = None) -> str:
        """A figure's file for model or job `name`; without a name, the rule's pattern with its wildcard."""
        wildcard, files = FIGURES[stage]
        return f"{self.results}/report/{stage}/{name or '{' + wildcard + '}'}/{files[figure]}"

    def all(self, models: list[str], kd_jobs: list[str], icm_jobs: list[str]) -> list[str]:
        names = {"models": models, "kd": kd_jobs, "icm": icm_jobs}
        return [
            self.path(stage, figure, name)
            for stage, (_, files) in FIGURES.items()
            for name in names[stage]
            for figure in files
        ]
