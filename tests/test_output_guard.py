"""A user's mistake never costs data: no output is, contains or lies inside what the command reads, and --force
replaces only an earlier output of distillery or an empty folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workflow_scripts.kd.tiny_dataset import write_tiny_dataset

CLAIMS = Path(__file__).resolve().parents[1] / "config" / "icm" / "tiny-claims.jsonl"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes: equal snapshots mean the folder was left byte-identical."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_refusal(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture
def work(tiny_model_store, tmp_path, run_cli) -> Path:
    """A model folder, a parquet dataset, a claims file and a KD manifest over them."""
    shutil.copytree(tiny_model_store("llama"), tmp_path / "model")
    write_tiny_dataset(tmp_path / "data", files=1, rows=8, row_group_rows=8)
    (tmp_path / "claims").mkdir()
    shutil.copy(CLAIMS, tmp_path / "claims" / "claims.jsonl")
    (tmp_path / "link-to-model").symlink_to(tmp_path / "model")
    flags = ["--model-path", tmp_path / "model", "--dataset", tmp_path / "data", "--chunk-rows", "8"]
    result = run_cli("kd-manifest", "--output", tmp_path / "job" / "manifest.json", *flags)
    assert result.exit_code == 0, result.stderr
    return tmp_path


def _kd(work: Path) -> list:
    return ["--model-path", work / "model", "--dataset", work / "data"]


def _chunk(work: Path) -> str:
    return json.loads((work / "job/manifest.json").read_text())["chunks"][0]["part"] + "/000000000-000000008"


# (command line, the input folder it must leave byte-identical), for every command that writes an output.
COMMANDS = {
    "consolidate-output-is-input": lambda w: (
        ["consolidate", "--input", w / "model", "--output", w / "model", "--force", "--dtype", "bfloat16"], "model"),
    "consolidate-output-inside-input": lambda w: (
        ["consolidate", "--input", w / "model", "--output", w / "model/merged"], "model"),
    "consolidate-output-through-a-symlink": lambda w: (
        ["consolidate", "--input", w / "model", "--output", w / "link-to-model", "--force"], "model"),
    "consolidate-output-through-dot-dot": lambda w: (
        ["consolidate", "--input", w / "model", "--output", w / "claims/../model/out"], "model"),
    "batch-consolidate": lambda w: (["batch-consolidate", "--input-dir", w / "model", "--output-dir", w / "model"],
                                    "model"),
    "titan-to-hf": lambda w: (["titan-to-hf", "--input", w / "model", "--output", w / "model/hf", "--flavor",
                               "llama3:debugmodel"], "model"),
    "maxtext-to-hf": lambda w: (["maxtext-to-hf", "--orbax-checkpoint", w / "model", "--hf-model-path",
                                 w / "model/hf", "--model-size", "llama3.1-1b"], "model"),
    "maxtext-param-only": lambda w: (["maxtext-param-only", "--load-full-state-path", w / "model/items",
                                      "--checkpoint-dir", w / "model"], "model"),
    "kd-manifest": lambda w: (["kd-manifest", "--output", w / "model/manifest.json", *_kd(w)], "model"),
    "kd-teacher": lambda w: (["kd-teacher", "--output", w / "data/teacher.json", *_kd(w)], "data"),
    "kd-chunk": lambda w: (["kd-chunk", "--manifest", w / "job/manifest.json", "--chunk", _chunk(w), "--output",
                            w / "model/chunk.jsonl"], "model"),
    "kd-dataset": lambda w: (["kd-dataset", "--manifest", w / "job/manifest.json", "--output", w / "data/kd.jsonl",
                              "--summary", w / "job/summary.json"], "data"),
    "generate": lambda w: (["generate", "--output-dir", w / "data", *_kd(w)], "data"),
    "icm": lambda w: (["icm", "--data", w / "claims/claims.jsonl", "--output-dir", w / "claims", "--model",
                       w / "model", "--engine", "transformers"], "claims"),
    "report-model": lambda w: (["report-model", "--verification", w / "job/manifest.json", "--verification-html",
                                w / "job/manifest.json", "--plans-html", w / "plans.html"], "job"),
    "report-kd": lambda w: (["report-kd", "--summary", w / "job/manifest.json", "--dataset", w / "claims/claims.jsonl",
                             "--summary-html", w / "summary.html", "--throughput-svg", w / "throughput.svg",
                             "--samples-html", w / "claims/claims.jsonl"], "claims"),
    "report-icm": lambda w: (["report-icm", "--job", "j", "--report", w / "job/manifest.json", "--labels",
                              w / "claims/claims.jsonl", "--summary-html", w / "claims/claims.jsonl",
                              "--objective-svg", w / "objective.svg"], "claims"),
}  # fmt: skip


@pytest.mark.parametrize("case", COMMANDS)
def test_output_that_is_contains_or_lies_inside_the_input_is_refused(case, work, run_cli):
    argv, protected = COMMANDS[case](work)
    before = snapshot(work / protected)
    result = run_cli(*argv)
    assert_one_line_refusal(result, "the input")
    assert snapshot(work / protected) == before


def test_consolidating_a_checkpoint_into_its_run_folder_keeps_the_run(tiny_model_store, run_cli, tmp_path):
    run = tmp_path / "run"
    for step in (100, 200):
        shutil.copytree(tiny_model_store("llama"), run / f"checkpoint-{step}")
    (run / "logs").mkdir()
    (run / "logs" / "train.log").write_text("step 200 loss 1.2\n")
    before = snapshot(run)
    result = run_cli("consolidate", "--input", run / "checkpoint-200", "--output", run, "--force")
    assert_one_line_refusal(result, "contains the input")
    assert snapshot(run) == before


# --force: an earlier output of distillery or an empty folder is replaced; any other folder is left as it is.

WRITERS = {
    "consolidate": lambda source, output: ["consolidate", "--input", source, "--output", output],
    "make-tiny-model": lambda source, output: ["make-tiny-model", "--output", output],
    "make-tiny-dataset": lambda source, output: ["make-tiny-dataset", "--output", output, "--files", "1"],
}


@pytest.mark.parametrize("command", WRITERS)
def test_force_replaces_an_earlier_output_of_distillery(command, tiny_model, run_cli, tmp_path):
    argv = WRITERS[command](tiny_model("llama"), tmp_path / "out")
    assert run_cli(*argv).exit_code == 0
    (tmp_path / "out" / "stale.txt").write_text("from the earlier run")
    result = run_cli(*argv, "--force")
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "out" / "stale.txt").exists() and (tmp_path / "out" / "provenance.json").is_file()


@pytest.mark.parametrize("command", WRITERS)
def test_force_replaces_an_empty_folder(command, tiny_model, run_cli, tmp_path):
    (tmp_path / "out").mkdir()
    result = run_cli(*WRITERS[command](tiny_model("llama"), tmp_path / "out"), "--force")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "provenance.json").is_file()


@pytest.mark.parametrize("provenance", [None, {"tool": "another-tool"}])
@pytest.mark.parametrize("command", WRITERS)
def test_force_refuses_a_folder_distillery_did_not_write(command, provenance, tiny_model, run_cli, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "thesis.tex").write_text("three years of work")
    if provenance is not None:
        (output / "provenance.json").write_text(json.dumps(provenance))
    before = snapshot(output)
    result = run_cli(*WRITERS[command](tiny_model("llama"), output), "--force")
    assert_one_line_refusal(result, str(output), "not an earlier output of distillery", "--force")
    assert snapshot(output) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
