"""ICM end to end on the CPU: the transformers engine on a tiny Llama whose tokenizer has the label words."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_scripts.architectures.tiny import build_tiny_icm_model

pytestmark = pytest.mark.integration
CLAIMS = Path(__file__).resolve().parents[1] / "config" / "icm" / "tiny-claims.jsonl"
ARGS = ["--testbed", "generic", "--engine", "transformers", "--batch-size", "12", "--num_seed", "4", "--seed", "5"]


@pytest.fixture(scope="module")
def icm_model(tmp_path_factory):
    return build_tiny_icm_model(tmp_path_factory.mktemp("icm-model") / "model")


def labels_of(folder: Path) -> list:
    return [json.loads(line)["label"] for line in (folder / "labels.jsonl").read_text().splitlines()]


def test_icm_on_cpu_writes_labels_and_a_report(icm_model, tmp_path, run_cli):
    out = tmp_path / "out"
    result = run_cli("icm", "--data", CLAIMS, "--model", icm_model, *ARGS, "--K", "12", "--output-dir", out)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    assert {row["label"] for row in rows} <= {0, 1, None}
    assert any(row["score"] not in (None, 0.0) for row in rows)  # the label words reach the top 20
    groups = [row["consistency_id"] for row in rows]
    assert all(groups.count(group) == 2 for group in groups)  # whole consistency groups
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"] == 12
    assert report["engine"] == "transformers"
    assert report["gold_labels_compared"] == sum(row["label"] is not None for row in rows)
    assert 0.0 <= report["accuracy"] <= 1.0
    balance = report["label_balance"]
    assert balance["true"] + balance["false"] + balance["unlabeled"] == 12
    assert report["consistency_violations_left"] == 0
    assert report["prefix_cache"]["hit_rate"] is None  # transformers has no prefix cache
    assert report["seconds_per_iteration"]["mean"] > 0
    assert report["prompt_tokens_per_iteration"] > 0


def test_a_killed_run_resumes_and_ends_with_the_labels_of_an_uninterrupted_run(icm_model, tmp_path):
    command = [sys.executable, "-m", "workflow_scripts.cli", "icm", "--data", str(CLAIMS), "--model", str(icm_model),
               *ARGS, "--K", "16", "--save-every", "2"]  # fmt: skip
    whole = tmp_path / "whole"
    subprocess.run([*command, "--output-dir", str(whole)], check=True, capture_output=True)

    killed = tmp_path / "killed"
    state = tmp_path / "state.json"
    process = subprocess.Popen([*command, "--output-dir", str(killed), "--state", str(state)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["iteration"] >= 6:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "labels.jsonl").exists()

    resumed = subprocess.run([*command, "--output-dir", str(killed), "--state", str(state)], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    report = json.loads((killed / "report.json").read_text())
    assert report["resumed_from_iteration"] >= 6
    assert labels_of(killed) == labels_of(whole)
