"""The Snakemake workflow end to end on the default config: reports, no-op reruns, targeted rebuilds."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.snakemake_runs import planned_jobs, snakemake

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.long]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_default_config_leaves_a_passing_report_per_model(finished_run):
    for model in ("tiny-llama", "tiny-qwen3"):
        report = json.loads((finished_run / f"results/models/{model}/verification.json").read_text())
        assert report["passed"], report["failed_checks"]
        numerics = next(c for c in report["checks"] if c["name"] == "numerics")
        assert numerics["status"] == "pass"
        assert (finished_run / f"results/models/{model}/hf/model.safetensors").is_file()
        assert (finished_run / f"logs/verify_model/{model}.log").read_text().rstrip().endswith("Ready for vLLM")
        assert (finished_run / f"results/benchmarks/hf_merge/{model}.tsv").is_file()
        # The TP/PP section: one line per configured size, each from its validate_plans report.
        parallel = {c["name"]: c["status"] for c in report["checks"] if c["name"].startswith("parallel:")}
        assert parallel == {"parallel:T=2, P=1": "pass", "parallel:T=1, P=2": "pass"}
        plan = json.loads((finished_run / f"results/models/{model}/plans/tp2_pp1.json").read_text())
        assert plan["passed"]


def test_default_config_generates_the_kd_dataset_on_the_cpu(finished_run):
    summary = json.loads((finished_run / "results/kd/tiny-web-kd/summary.json").read_text())
    assert summary["engines"] == ["transformers"]
    assert summary["chunks"] == 10 and summary["rows"] == 141
    assert summary["generated_rows"] + summary["skipped_rows"] == summary["rows"]
    lines = (finished_run / "results/kd/tiny-web-kd/dataset.jsonl").read_text().splitlines()
    assert len(lines) == summary["samples"] == 2 * summary["generated_rows"]


def test_default_config_labels_the_tiny_claims_with_icm(finished_run):
    rows = (finished_run / "results/icm/tiny-claims/labels.jsonl").read_text().splitlines()
    assert len(rows) == 20
    report = json.loads((finished_run / "results/icm/tiny-claims/report.json").read_text())
    assert report["iterations"] == 40
    assert report["engine"] == "transformers"
    assert (finished_run / "logs/icm_labels/tiny-claims.log").is_file()
    assert (finished_run / "work/icm/tiny-claims/state.json").is_file()


def test_finished_run_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_deleting_a_model_reruns_exactly_its_dependents(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    shutil.rmtree(workdir / "results/models/tiny-llama/hf")
    # tiny-llama is the teacher of the KD job (its teacher record and every chunk are redone) and the ICM model;
    # the report's figures of all three are redone with them.
    planned = planned_jobs(snakemake(workdir, "-n"))
    assert [job for job in planned if job[0] != "kd_chunk"] == [
        ("hf_merge", "model=tiny-llama"),
        ("icm_labels", "job=tiny-claims"),
        ("kd_dataset", "job=tiny-web-kd"),
        ("kd_teacher", "job=tiny-web-kd"),
        ("report_icm", "job=tiny-claims"),
        ("report_kd", "job=tiny-web-kd"),
        ("report_model", "model=tiny-llama"),
        ("validate_plans", "model=tiny-llama, tp=1, pp=2"),
        ("validate_plans", "model=tiny-llama, tp=2, pp=1"),
        ("verify_model", "model=tiny-llama"),
    ]
    assert len([job for job in planned if job[0] == "kd_chunk"]) == 10


def test_deleting_a_report_reruns_only_its_verification_and_its_figures(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    (workdir / "results/models/tiny-qwen3/verification.md").unlink()
    assert planned_jobs(snakemake(workdir, "-n")) == [
        ("report_model", "model=tiny-qwen3"),
        ("verify_model", "model=tiny-qwen3"),
    ]


def test_deleted_source_is_not_rebuilt_while_its_model_is_up_to_date(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    shutil.rmtree(workdir / "work/sources/tiny-qwen3-src")
    assert planned_jobs(snakemake(workdir, "-n")) == []


def expected_figures(run: Path) -> dict[tuple[str, str, str], tuple[str, ...]]:
    """(category, subcategory, figure) -> lines its page shows, its title first (none for a plot), for each model
    and job of the default config, with figures read from the run's artifacts."""
    from workflow_scripts.report.artifacts import first_records
    from workflow_scripts.workflow.layouts import LayoutPlan
    from workflow_scripts.workflow.model_targets import model_targets

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    read = lambda path: json.loads((run / "results" / path).read_text())  # noqa: E731
    layouts = LayoutPlan.from_config(config)  # the models as rules/common.smk plans them
    figures = {}
    for model in layouts.readable_models(model_targets(config["models"], built=layouts.built_sources())):
        plans = [f"T={size['tp']}, P={size['pp']}\tpassed" for size in config["verify"]["parallel_sizes"]]
        figures[("Models", model, "verification")] = (f"Verification of results/models/{model}/hf", "verdict\tpassed")
        figures[("Models", model, "parallel plans")] = (f"Parallel plans of results/models/{model}/hf", *plans)
    for job in config.get("kd") or {}:
        summary = read(f"kd/{job}/summary.json")
        first = first_records(next((run / "results" / f"kd/{job}").glob("dataset.*")), 1)[0]
        figures[("KD datasets", job, "summary")] = (
            f"KD job {job}",
            f"rows\t{summary['rows']:,}",
            f"rows skipped\t{summary['skipped_rows']:,}",
        )
        figures[("KD datasets", job, "tokens/s per chunk")] = ()
        figures[("KD datasets", job, "sample completions")] = (f"KD job {job}: sample completions", first["id"])
    for job in (config.get("icm") or {}).get("jobs") or {}:
        report = read(f"icm/{job}/report.json")
        balance = " / ".join(str(report["label_balance"][key]) for key in ("true", "false", "unlabeled"))
        figures[("ICM labels", job, "accuracy and label balance")] = (
            f"ICM job {job}",
            f"accuracy\t{report['accuracy']:.1%}",
            f"labeled True / False / unlabeled\t{balance}",
        )
        figures[("ICM labels", job, "objective per iteration")] = ()
    return figures


def test_snakemake_report_shows_every_figure_in_a_real_browser(finished_run, tmp_path):
    """`snakemake --report report.html` after the run, opened in headless Chromium and clicked through as a person
    would: every figure is there, shows its artifact's numbers, and nothing failed to render."""
    from helpers.headless_chromium import Browser, chromium_or_skip
    from helpers.snakemake_report import menu_text, show_every_result

    chromium = chromium_or_skip()
    result = snakemake(finished_run, "--report", str(tmp_path / "report.html"))
    assert result.returncode == 0, result.stderr[-3000:]
    expected = expected_figures(finished_run)
    with Browser(chromium, tmp_path / "chromium-profile") as browser:
        browser.open((tmp_path / "report.html").as_uri())
        menu = set(menu_text(browser).splitlines())
        description = browser.wait_for("document.querySelector('.prose') && document.querySelector('.prose').innerText")
        browser.screenshot(tmp_path / "report.png")
        captions = browser.evaluate("Object.values(results).map(result => result.caption)")
        shown = show_every_result(browser, tmp_path)  # and a screenshot of each
        errors = browser.errors
    assert {"Workflow", "Statistics", *(category for category, _, _ in expected)} <= menu
    models, kd_jobs, icm_jobs = (len({sub for category, sub, _ in expected if category == name})
                                 for name in ("Models", "KD datasets", "ICM labels"))  # fmt: skip
    assert f"has {models} model(s), {kd_jobs} KD job(s) and {icm_jobs} ICM job(s)" in description
    assert set(shown) == set(expected)
    for figure, lines in expected.items():
        if not lines:  # a plot: an image the browser decoded, at the SVG's own width
            assert shown[figure].kind == "image" and shown[figure].width == 760, figure
            continue
        text = shown[figure].text
        assert shown[figure].kind == "html" and text.startswith(lines[0]), (figure, text[:200])
        assert all(line in text for line in lines[1:]), (figure, lines, text[:1000])
        assert not re.search(r"\b(None|nan|Traceback)\b", text), (figure, text)
    assert len(captions) == len(expected) and all(captions) and not any("system-message" in c for c in captions)
    assert errors == []


def test_shell_lines_are_distillery_commands_a_person_can_rerun(finished_run):
    result = snakemake(finished_run, "-n", "-p", "--forcerun", "hf_merge")
    assert "distillery consolidate --input work/sources/tiny-llama-src --output results/models/tiny-llama/hf" in (
        result.stdout
    )


def write_config(tmp_path: Path, change) -> Path:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.pop("icm")  # the default ICM job labels with a default model that these configs replace
    change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_invalid_config_is_refused_by_the_schema(tmp_path):
    def bad_dtype(config):
        config["models"]["tiny-llama"]["dtype"] = "float8"

    result = snakemake(tmp_path, "-n", configfile=write_config(tmp_path, bad_dtype))
    assert result.returncode != 0
    assert "float8" in result.stdout + result.stderr and "is not one of" in result.stdout + result.stderr


def test_model_without_numeric_reference_is_verified_statically(tmp_path):
    def no_reference(config):
        config["tiny_models"] = {"src": {"architecture": "qwen3", "layout": "safetensors"}}
        config["kd"] = {}
        config["models"] = {
            "m": {"source": {"format": "hf", "path": "work/sources/src"}, "verify": {"reference": "none"}}
        }

    result = snakemake(tmp_path, configfile=write_config(tmp_path, no_reference))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "results/models/m/verification.json").read_text())
    assert report["passed"]
    assert next(c for c in report["checks"] if c["name"] == "numerics")["status"] == "skip"


def deepspeed_config(tmp_path: Path, run: Path, base: Path, step) -> Path:
    def use_deepspeed(config):
        config["tiny_models"] = {}
        config["kd"] = {}
        config["verify"]["parallel_sizes"] = []
        config["models"] = {
            "ft": {"source": {"format": "deepspeed", "path": str(run), "step": step}, "base_model": str(base)}
        }

    return write_config(tmp_path, use_deepspeed)


def test_deepspeed_run_with_step_all_gives_one_verified_model_per_checkpoint(deepspeed_run, tiny_model_store, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(deepspeed_run(2), run)
    configfile = deepspeed_config(tmp_path, run, tiny_model_store("llama", "safetensors"), "all")
    workdir = tmp_path / "work"
    assert planned_jobs(snakemake(workdir, "-n", configfile=configfile)) == [
        ("deepspeed_consolidate", "model=ft_step_2"),
        ("deepspeed_consolidate", "model=ft_step_4"),
        ("report_model", "model=ft_step_2"),
        ("report_model", "model=ft_step_4"),
        ("verify_model", "model=ft_step_2"),
        ("verify_model", "model=ft_step_4"),
    ]
    result = snakemake(workdir, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    for step in (2, 4):
        report = json.loads((workdir / f"results/models/ft_step_{step}/verification.json").read_text())
        assert report["passed"], report["failed_checks"]
        # HF Trainer saved model weights beside the DeepSpeed state: they are the numeric reference.
        assert next(c for c in report["checks"] if c["name"] == "numerics")["status"] == "pass"

    # A new checkpoint of the run adds exactly its own jobs.
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-6")
    assert planned_jobs(snakemake(workdir, "-n", configfile=configfile)) == [
        ("deepspeed_consolidate", "model=ft_step_6"),
        ("report_model", "model=ft_step_6"),
        ("verify_model", "model=ft_step_6"),
    ]


def test_deepspeed_step_that_the_run_lacks_is_named(deepspeed_run, tiny_model_store, tmp_path):
    configfile = deepspeed_config(tmp_path, deepspeed_run(2), tiny_model_store("llama", "safetensors"), [2, 8])
    result = snakemake(tmp_path / "work", "-n", configfile=configfile)
    assert result.returncode != 0
    assert "asks for step(s) [8], which the run does not have" in result.stdout + result.stderr


def test_trust_remote_code_in_the_config_reaches_the_jobs_that_load_the_model(tmp_path):
    from snakemake.utils import validate

    from workflow_scripts.workflow import icm_jobs
    from workflow_scripts.workflow.kd_jobs import wire_kd_jobs

    def trust_tiny_llama(config):
        config["models"]["tiny-llama"]["trust_remote_code"] = True

    result = snakemake(tmp_path, "-n", "-p", configfile=write_config(tmp_path, trust_tiny_llama))
    assert result.returncode == 0, result.stderr[-2000:]
    loading = re.findall(r"Shell command: (distillery (?:verify|validate-plans) .*?2>&1)", result.stdout, re.S)
    assert len(loading) == 6  # per model: verify_model and two validate_plans
    assert all(("tiny-llama/" in command) == ("--trust-remote-code" in command) for command in loading)

    jobs = {"kd": {"j": {"model": "m", "dataset": {"path": "d"}, "engine": {"trust_remote_code": True}}}}
    validate(jobs, str(REPO / "config/schema/config.schema.yaml"))
    assert "--trust-remote-code" in wire_kd_jobs(jobs["kd"], {}, {})["j"].flags
    icm = {"model": "m", "data": {"path": "d"}, "engine": "vllm", "trust_remote_code": True}
    assert "--trust-remote-code" in icm_jobs.icm_flags(icm)
