"""Sequence-KD generation on the CPU: manifest from parquet footers, chunk files, resume after a kill, dataset."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts.kd.manifest import load_manifest
from workflow_scripts.kd.records import SCHEMA_FILE
from workflow_scripts.kd.tiny_dataset import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "data"
    write_tiny_dataset(folder, files=2, rows=20, row_group_rows=8)
    return folder


@pytest.fixture
def model(tiny_model_store) -> Path:
    return tiny_model_store("llama")


def job_flags(model: Path, dataset: Path | str, **overrides) -> list[str]:
    settings = {
        "--model-path": model,
        "--dataset": dataset,
        "--chunk-rows": 8,
        "--max-prompt-tokens": 12,
        "--max-tokens": 8,
        "--gen-batch-size": 4,
        "--seed": 3,
        **overrides,
    }
    flags = []
    for flag, value in settings.items():
        if value is True:
            flags.append(flag)
        elif value is not None and value is not False:
            flags += [flag, str(value)]
    return flags


def make_manifest(run_cli, folder: Path, *flags: str) -> Path:
    manifest = folder / "manifest.json"
    result = run_cli("kd-manifest", "--output", manifest, *flags)
    assert result.exit_code == 0, result.stderr
    return manifest


def run_all_chunks(run_cli, manifest: Path) -> None:
    for chunk in load_manifest(manifest).chunks:
        result = run_cli("kd-chunk", "--manifest", manifest, "--chunk", chunk.name)
        assert result.exit_code == 0, result.stderr


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifest_lists_row_ranges_of_each_file_from_footers(run_cli, model, dataset, tmp_path):
    manifest = load_manifest(make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset)))
    # Files of 20 and 27 rows in chunks of 8.
    assert [chunk.name for chunk in manifest.chunks] == [
        "part-000/000000000-000000008",
        "part-000/000000008-000000016",
        "part-000/000000016-000000020",
        "part-001/000000000-000000008",
        "part-001/000000008-000000016",
        "part-001/000000016-000000024",
        "part-001/000000024-000000027",
    ]
    assert manifest.data["rows"] == 47


def test_shuffled_manifest_has_the_same_chunks_in_a_seeded_order(run_cli, model, dataset, tmp_path):
    plain = load_manifest(make_manifest(run_cli, tmp_path / "a", *job_flags(model, dataset)))
    shuffled = load_manifest(
        make_manifest(run_cli, tmp_path / "b", *job_flags(model, dataset, **{"--shuffle-chunks": True}))
    )
    again = load_manifest(
        make_manifest(run_cli, tmp_path / "c", *job_flags(model, dataset, **{"--shuffle-chunks": True}))
    )
    assert sorted(c.name for c in shuffled.chunks) == sorted(c.name for c in plain.chunks)
    assert [c.name for c in shuffled.chunks] != [c.name for c in plain.chunks]
    assert [c.name for c in shuffled.chunks] == [c.name for c in again.chunks]


def test_missing_column_fails_the_manifest_naming_the_file(run_cli, model, dataset, tmp_path):
    result = run_cli(
        "kd-manifest", "--output", tmp_path / "m.json", *job_flags(model, dataset, **{"--text-column": "body"})
    )
    assert result.exit_code == 1
    assert (
        "part-000.parquet: has no column 'body' (prompt mode prefix); its columns: id, text, messages" in result.stderr
    )
    assert not (tmp_path / "m.json").exists()


def test_unreadable_parquet_file_fails_the_manifest_naming_it(run_cli, model, dataset, tmp_path):
    (dataset / "part-002.parquet").write_bytes(b"not parquet at all")
    result = run_cli("kd-manifest", "--output", tmp_path / "m.json", *job_flags(model, dataset))
    assert result.exit_code == 1
    assert "part-002.parquet: not a readable parquet file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_empty_glob_is_named(run_cli, model, tmp_path):
    result = run_cli("kd-manifest", "--output", tmp_path / "m.json", *job_flags(model, tmp_path / "none/*.parquet"))
    assert result.exit_code == 1
    assert "no parquet files found" in result.stderr


def test_chunk_lines_follow_the_documented_schema(run_cli, model, dataset, tmp_path):
    manifest = make_manifest(
        run_cli, tmp_path / "job", *job_flags(model, dataset, **{"-n": 2, "--return-token-ids": True})
    )
    run_all_chunks(run_cli, manifest)
    schema = json.loads(SCHEMA_FILE.read_text())
    lines = read_jsonl(tmp_path / "job/chunks/part-000/000000000-000000008.jsonl")
    for line in lines:
        jsonschema.validate(line, schema)
        assert line["prompt_tokens"] == len(line["prompt_token_ids"]) <= 12
        assert line["completion_tokens"] == len(line["completion_token_ids"]) <= 8
    # Two samples per generated row, rows in order.
    assert [(line["row_index"], line["sample_index"]) for line in lines][:4] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_bad_rows_are_skipped_with_reasons_and_never_kill_the_chunk(run_cli, model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    texts = ["A fine row of text.", None, "   ", "Another fine row.", "x " * 400]
    pq.write_table(pa.table({"text": texts}), data / "odd.parquet")
    binary = [b"valid text here", b"\xff\xfe broken utf-8"]
    pq.write_table(pa.table({"text": pa.array(binary, pa.binary())}), data / "bytes.parquet")
    flags = job_flags(model, data, **{"--prompt-mode": "prompt", "--max-prompt-tokens": 64})
    manifest = make_manifest(run_cli, tmp_path / "job", *flags)
    run_all_chunks(run_cli, manifest)
    odd = json.loads((tmp_path / "job/chunks/odd/000000000-000000005.stats.json").read_text())
    assert [(s["row_index"], s["skipped"]) for s in odd["skipped"]] == [
        (1, "empty_prompt"),
        (2, "empty_prompt"),
        (4, "prompt_too_long"),
    ]
    assert [line["row_index"] for line in read_jsonl(tmp_path / "job/chunks/odd/000000000-000000005.jsonl")] == [0, 3]
    raw = json.loads((tmp_path / "job/chunks/bytes/000000000-000000002.stats.json").read_text())
    assert [(s["row_index"], s["skipped"]) for s in raw["skipped"]] == [(1, "undecodable_text")]


def test_prefix_mode_cuts_each_document_to_max_prompt_tokens(run_cli, model, dataset, tmp_path):
    manifest = make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset, **{"--max-prompt-tokens": 5}))
    run_all_chunks(run_cli, manifest)
    lines = read_jsonl(tmp_path / "job/chunks/part-000/000000000-000000008.jsonl")
    assert {line["prompt_tokens"] for line in lines} == {5}


def test_chat_prompt_is_the_rendered_template_with_its_special_tokens(run_cli, model, dataset, tmp_path):
    from transformers import AutoTokenizer

    flags = job_flags(model, dataset, **{"--prompt-mode": "chat", "--max-prompt-tokens": 0, "--return-token-ids": True})
    run_all_chunks(run_cli, make_manifest(run_cli, tmp_path / "job", *flags))
    line = read_jsonl(tmp_path / "job/chunks/part-000/000000000-000000008.jsonl")[0]
    messages = pq.read_table(dataset / "part-000.parquet").column("messages").to_pylist()[0]
    tokenizer = AutoTokenizer.from_pretrained(model)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert line["prompt"] == rendered
    assert line["prompt"].startswith("<|im_start|>") and line["prompt"].endswith("<|im_start|>assistant\n")
    # The ids are the ones the teacher was given: the rendered text, tokenized without adding anything.
    assert line["prompt_token_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_rechunked_job_samples_every_row_the_same_way(run_cli, model, dataset, tmp_path):
    datasets = []
    for rows in (8, 5):
        folder = tmp_path / f"chunks-of-{rows}"
        manifest = make_manifest(run_cli, folder, *job_flags(model, dataset, **{"--chunk-rows": rows}))
        run_all_chunks(run_cli, manifest)
        result = run_cli(
            "kd-dataset", "--manifest", manifest, "--output", folder / "d.jsonl", "--summary", folder / "s.json"
        )
        assert result.exit_code == 0, result.stderr
        datasets.append((folder / "d.jsonl").read_text())
    assert datasets[0] == datasets[1]


def test_killed_chunk_resumes_without_losing_or_duplicating_rows(run_cli, model, tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, files=1, rows=60, row_group_rows=16)
    flags = job_flags(model, data, **{"--chunk-rows": 60, "--max-tokens": 24, "--gen-batch-size": 2, "-n": 2})
    uninterrupted = make_manifest(run_cli, tmp_path / "once", *flags)
    run_all_chunks(run_cli, uninterrupted)
    expected = (tmp_path / "once/chunks/part-000/000000000-000000060.jsonl").read_text()

    manifest = make_manifest(run_cli, tmp_path / "killed", *flags)
    output = tmp_path / "killed/chunks/part-000/000000000-000000060.jsonl"
    side = output.parent / f".{output.name}.partial"
    command = [sys.executable, "-m", "workflow_scripts.cli", "kd-chunk", "--manifest", str(manifest),
               "--chunk", "part-000/000000000-000000060"]  # fmt: skip
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not side.exists() or side.read_text().count("\n") < 30):
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    saved = side.read_text().count("\n")
    assert 30 <= saved < 120 and not output.exists(), "the kill should land mid-chunk"
    # A torn last line, as a kill during a write leaves it.
    with open(side, "a") as handle:
        handle.write('{"id": "part-000:59", "row_in')

    result = run_cli("kd-chunk", "--manifest", manifest, "--chunk", "part-000/000000000-000000060")
    assert result.exit_code == 0, result.stderr
    assert output.read_text() == expected
    stats = json.loads(output.with_name("000000000-000000060.stats.json").read_text())
    assert stats["resumed_rows"] > 0
    assert not side.exists()


def test_second_writer_of_a_chunk_is_refused(run_cli, model, dataset, tmp_path):
    import fcntl

    manifest = make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset))
    side = tmp_path / "job/chunks/part-000/.000000000-000000008.jsonl.partial"
    side.parent.mkdir(parents=True)
    with open(side, "ab") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = run_cli("kd-chunk", "--manifest", manifest, "--chunk", "part-000/000000000-000000008")
    assert result.exit_code == 1
    assert "another process is writing this chunk" in result.stderr


def test_dataset_and_summary_count_rows_tokens_and_skips(run_cli, model, dataset, tmp_path):
    manifest = make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset, **{"--output-format": "parquet"}))
    incomplete = run_cli(
        "kd-dataset", "--manifest", manifest, "--output", tmp_path / "d.parquet", "--summary", tmp_path / "s.json"
    )
    assert incomplete.exit_code == 1 and "7 of 7 chunks are not generated yet" in incomplete.stderr
    run_all_chunks(run_cli, manifest)
    result = run_cli(
        "kd-dataset", "--manifest", manifest, "--output", tmp_path / "d.parquet", "--summary", tmp_path / "s.json"
    )
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(tmp_path / "d.parquet")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rows"] == 47
    assert summary["generated_rows"] + summary["skipped_rows"] == 47
    assert table.num_rows == summary["samples"] == summary["generated_rows"]
    assert summary["completion_tokens"] == sum(table.column("completion_tokens").to_pylist())
    assert summary["skipped_by_reason"] == {"empty_prompt": 7}  # 4 nulls, 3 blanks
    assert summary["engines"] == ["transformers"] and "transformers" in summary["versions"]
    assert len(summary["per_chunk"]) == 7 and all(c["output_tokens_per_second"] for c in summary["per_chunk"])


def test_kd_status_counts_done_and_remaining_chunks_and_rows(run_cli, model, dataset, tmp_path):
    manifest = make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset))
    assert run_cli("kd-chunk", "--manifest", manifest, "--chunk", "part-001/000000008-000000016").exit_code == 0
    result = run_cli("kd-status", tmp_path / "job", "--logs", tmp_path / "no-logs")
    assert result.stdout.splitlines()[:2] == [
        "job kd: 8/47 rows done, 39 remaining (0 saved in unfinished chunks)",
        "chunks: 1 done, 0 running, 0 failed, 6 pending (7 in all)",
    ]


def test_chunk_log_gets_a_progress_line_every_interval(run_cli, model, dataset, tmp_path):
    from workflow_scripts.kd.chunk_progress import parse_progress_line

    manifest = make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset, **{"-n": 2}))
    chunk = "part-000/000000000-000000008"
    result = run_cli("kd-chunk", "--manifest", manifest, "--chunk", chunk, "--progress-seconds", "0.01")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if parse_progress_line(line)]
    points = [parse_progress_line(line) for line in lines]
    assert len(points) >= 3 and {point.chunk for point in points} == {chunk}
    # From the start, before the engine, to the chunk's end; the counts only grow.
    assert (points[0].rows, points[0].tokens) == (0, 0) and (points[-1].rows, points[-1].total) == (8, 8)
    assert [point.rows for point in points] == sorted(point.rows for point in points)
    stats = json.loads((tmp_path / "job/chunks/part-000/000000000-000000008.stats.json").read_text())
    assert points[-1].tokens == stats["completion_tokens"]
    assert re.search(r"output tokens; [\d.]+ rows/s, \d+ tok/s over the last \d+s; ETA 0s$", lines[-1]), lines[-1]


def test_kd_status_follows_a_running_chunk_and_names_it_failed_once_killed(run_cli, model, tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, files=1, rows=60, row_group_rows=16)
    flags = job_flags(model, data, **{"--chunk-rows": 60, "--max-tokens": 24, "--gen-batch-size": 2})
    manifest = make_manifest(run_cli, tmp_path / "job", *flags)
    logs = tmp_path / "logs/kd_chunk/kd"
    log = logs / "part-000/000000000-000000060.log"
    log.parent.mkdir(parents=True)
    command = [sys.executable, "-m", "workflow_scripts.cli", "kd-chunk", "--manifest", str(manifest),
               "--chunk", "part-000/000000000-000000060", "--progress-seconds", "0.2"]  # fmt: skip
    with open(log, "w") as output:  # as the rule's `> {log} 2>&1`
        job = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not re.search(r": [1-9]\d*/60 rows", log.read_text()):
        time.sleep(0.05)
    running = json.loads(run_cli("kd-status", tmp_path / "job", "--logs", logs, "--json").stdout)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert running["running_chunks"] == 1 and running["rows_per_second"] > 0 and running["eta_seconds"] > 0
    stopped = json.loads(run_cli("kd-status", tmp_path / "job", "--logs", logs, "--stale-after", "0", "--json").stdout)
    assert stopped["running_chunks"] == 0 and stopped["failed_chunks"] == 1
    assert stopped["failed"][0]["why"] == "stopped with no error (killed, or its node went away)"
    assert stopped["failed"][0]["rows"] == stopped["done_rows"] > 0


def test_generate_runs_each_workers_share_then_merges(run_cli, model, dataset, tmp_path, monkeypatch):
    # The MaxText guide's environment variables fill the flags.
    monkeypatch.setenv("MODEL_PATH", str(model))
    monkeypatch.setenv("DATASET_PATH", str(dataset))
    monkeypatch.setenv("GCS_BUCKET_PATH", str(tmp_path / "out"))
    flags = ["--chunk-rows", "8", "--max-tokens", "4", "--num-workers", "2"]
    first = run_cli("generate", *flags, "--worker-index", "0")
    assert first.exit_code == 0, first.stderr
    assert "worker 0/2: 4 of 4 chunks to generate" in first.stdout
    assert not (tmp_path / "out/kd/dataset.jsonl").exists()
    second = run_cli("generate", *flags, "--worker-index", "1")
    assert "worker 1/2: 3 of 3 chunks to generate" in second.stdout
    assert (tmp_path / "out/kd/dataset.jsonl").exists()
    changed = run_cli("generate", *flags, "--temperature", "0.1")
    assert changed.exit_code == 1 and "was made with other settings" in changed.stderr


def test_manifest_is_current_until_a_file_or_a_setting_changes(run_cli, model, dataset, tmp_path):
    from snakemake.utils import validate

    from workflow_scripts.workflow.kd_jobs import manifest_is_current, wire_kd_jobs

    def plan(**sampling):
        config = {"kd": {"kd": {"model": str(model), "dataset": {"path": str(dataset / "*.parquet")},
                                "max_prompt_tokens": 12, "chunk_rows": 8, "sampling": {"seed": 3, **sampling},
                                "engine": {"gen_batch_size": 4}}}}  # fmt: skip
        validate(config, str(REPO / "config/schema/config.schema.yaml"))
        return wire_kd_jobs(config["kd"], {}, {})["kd"]

    manifest = make_manifest(
        run_cli, tmp_path / "job", *job_flags(model, dataset / "*.parquet", **{"--max-tokens": 256})
    )
    assert manifest_is_current(str(manifest), plan())
    assert not manifest_is_current(str(manifest), plan(temperature=0.5))
    write_tiny_dataset(tmp_path / "more", files=3, rows=4)
    (tmp_path / "more/part-002.parquet").rename(dataset / "part-002.parquet")
    assert not manifest_is_current(str(manifest), plan())


def test_dataset_by_url_is_read_through_fsspec(run_cli, model, dataset, tmp_path):
    import fsspec

    memory = fsspec.filesystem("memory")
    for file in sorted(dataset.glob("*.parquet")):
        memory.pipe(f"/bucket/web/{file.name}", file.read_bytes())
    manifest = make_manifest(run_cli, tmp_path / "job", *job_flags(model, "memory://bucket/web/*.parquet"))
    loaded = load_manifest(manifest)
    assert [entry["path"] for entry in loaded.data["files"]] == [
        "memory:///bucket/web/part-000.parquet",
        "memory:///bucket/web/part-001.parquet",
    ]
    assert loaded.chunks[0].name == "part-000/000000000-000000008"
    run_all_chunks(run_cli, manifest)
    local = make_manifest(run_cli, tmp_path / "local", *job_flags(model, dataset))
    run_all_chunks(run_cli, local)
    by_url = read_jsonl(tmp_path / "job/chunks/part-001/000000016-000000024.jsonl")
    from_disk = read_jsonl(tmp_path / "local/chunks/part-001/000000016-000000024.jsonl")
    assert [r["completion"] for r in by_url] == [r["completion"] for r in from_disk]


def test_a_job_on_local_copies_names_the_jobs_own_paths(run_cli, model, dataset, tmp_path):
    """What a storage plugin's job does: read the model and the parquet files from copies (`.snakemake/storage/`),
    and write records, manifest and dataset exactly as a job reading the named paths would."""
    import shutil

    named_model, named_dataset = tmp_path / "bucket/models/teacher", tmp_path / "bucket/datasets/web"
    copies = tmp_path / "copies"
    shutil.copytree(model, copies / "teacher")
    shutil.copytree(dataset, copies / "web")
    flags = job_flags(named_model, named_dataset)  # neither path exists here

    on_copies = make_manifest(run_cli, tmp_path / "on-copies", *flags, "--local-dataset", str(copies / "web"))
    for chunk in load_manifest(on_copies).chunks:
        result = run_cli(
            "kd-chunk", "--manifest", on_copies, "--chunk", chunk.name,
            f"--local-model={copies / 'teacher'}", f"--local-dataset={copies / 'web'}",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr

    # The same job with the named paths in place gives the same manifest chunks and the same records.
    shutil.copytree(model, named_model)
    shutil.copytree(dataset, named_dataset)
    in_place = make_manifest(run_cli, tmp_path / "in-place", *flags)
    run_all_chunks(run_cli, in_place)
    assert json.loads(on_copies.read_text())["chunks"] == json.loads(in_place.read_text())["chunks"]
    for chunk in load_manifest(in_place).chunks:
        assert (on_copies.parent / chunk.relative_path).read_text() == (
            in_place.parent / chunk.relative_path
        ).read_text()
    assert {line["source_file"] for line in read_jsonl(on_copies.parent / chunk.relative_path)} <= {
        str(named_dataset / "part-000.parquet"),
        str(named_dataset / "part-001.parquet"),
    }


def test_an_empty_local_copy_flag_reads_the_named_paths(run_cli, model, dataset, tmp_path):
    """The workflow passes `--local-model=` with nothing after it when the job has no copy to point at."""
    manifest = make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset), "--local-dataset=")
    chunk = load_manifest(manifest).chunks[0]
    result = run_cli("kd-chunk", "--manifest", manifest, "--chunk", chunk.name, "--local-model=", "--local-dataset=")
    assert result.exit_code == 0, result.stderr


NUMERIC_GUIDE_VARIABLES = {
    "TENSOR_PARALLEL_SIZE": ("four", "a whole number", "--tensor-parallel-size"),
    "GEN_BATCH_SIZE": ("256.5", "a whole number", "--gen-batch-size"),
    "MAX_TARGET_LENGTH": ("2k", "a whole number", "--max-target-length"),
    "TEMPERATURE": ("warm", "a number", "--temperature"),
    "TOP_P": ("0,95", "a number", "--top-p"),
}


@pytest.mark.parametrize("variable", sorted(NUMERIC_GUIDE_VARIABLES))
def test_a_bad_guide_variable_fails_only_the_command_that_reads_it(
    run_cli, model, dataset, tmp_path, monkeypatch, variable
):
    """Only `generate` (the guide's run_sequence_kd.sh) reads the guide's variables; the workflow's commands take
    every setting from their flags, so a bad value in the shell neither breaks them nor leaks into their jobs."""
    value, kind, flag = NUMERIC_GUIDE_VARIABLES[variable]
    monkeypatch.setenv(variable, value)
    assert run_cli("--help").exit_code == 0
    assert run_cli("generate", "--help").exit_code == 0
    assert run_cli("make-tiny-dataset", "--output", tmp_path / "other", "--files", "1").exit_code == 0
    assert run_cli("kd-manifest", "--output", tmp_path / "job/manifest.json", *job_flags(model, dataset)).exit_code == 0

    result = run_cli("generate", "--output-dir", tmp_path / "out", *job_flags(model, dataset, **{flag: None}))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"distillery generate: error: environment variable {variable}={value!r} is not {kind}; "
        f"set it to one (or unset it), or pass {flag}"
    ]
    assert not (tmp_path / "out").exists()


def test_a_guide_variable_is_not_read_where_its_flag_is_given(run_cli, model, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPERATURE", "warm")
    flags = [*job_flags(model, dataset), "--temperature", "0.5", "--no-dataset"]
    result = run_cli("generate", "--output-dir", tmp_path / "out", *flags)
    assert result.exit_code == 0, result.stderr


def test_guide_variables_fill_the_flags_not_given(run_cli, model, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPERATURE", "0.25")
    monkeypatch.setenv("TENSOR_PARALLEL_SIZE", "")  # empty: the default
    monkeypatch.setenv("GCS_BUCKET_PATH", str(tmp_path / "out"))
    assert run_cli("generate", *job_flags(model, dataset), "--no-dataset").exit_code == 0
    settings = load_manifest(tmp_path / "out/kd/manifest.json").settings
    assert settings["sampling"]["temperature"] == 0.25 and settings["sampling"]["top_p"] == 0.95
    assert settings["engine"]["tensor_parallel_size"] == 1 and settings["engine"]["max_num_seqs"] == 4
    # The workflow's commands do not read them.
    workflow = load_manifest(make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset))).settings
    assert workflow["sampling"]["temperature"] == 0.8


def test_a_side_file_line_that_is_no_record_is_cut_off_like_a_torn_one(run_cli, model, tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, files=1, rows=12, row_group_rows=16)
    flags = job_flags(model, data, **{"--chunk-rows": 12})
    chunk = "part-000/000000000-000000012"
    uninterrupted = make_manifest(run_cli, tmp_path / "once", *flags)
    run_all_chunks(run_cli, uninterrupted)
    expected = (tmp_path / "once/chunks" / f"{chunk}.jsonl").read_text()
    first_rows = "".join(expected.splitlines(keepends=True)[:3])
    record = json.loads(expected.splitlines()[3])
    malformed = {
        "no row_index": {key: value for key, value in record.items() if key != "row_index"},
        "row_index as text": {**record, "row_index": str(record["row_index"])},
        "no token count": {key: value for key, value in record.items() if key != "completion_tokens"},
        "not an object": [record["row_index"]],
        "skip line without id": {"skipped": "empty_prompt", "detail": "", "row_index": record["row_index"]},
    }
    for case, line in malformed.items():
        folder = tmp_path / case.replace(" ", "-")
        manifest = make_manifest(run_cli, folder, *flags)
        output = folder / "chunks" / f"{chunk}.jsonl"
        output.parent.mkdir(parents=True)
        # Whole rows, then the bad line, then a good row that comes after it.
        side = output.parent / f".{output.name}.partial"
        side.write_text(first_rows + json.dumps(line) + "\n" + expected.splitlines(keepends=True)[4])

        result = run_cli("kd-chunk", "--manifest", manifest, "--chunk", chunk)
        assert result.exit_code == 0, f"{case}: {result.stderr}"
        assert output.read_text() == expected, case
        assert (
            json.loads(output.with_name(output.name.replace(".jsonl", ".stats.json")).read_text())["resumed_rows"] == 3
        )


def write_text_column(path: Path, values: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": pa.array(values, type=pa.string())}), path)
    return path


def run_job_to_dataset(run_cli, model, data: Path, folder: Path, output_format: str):
    flags = job_flags(model, data, **{"--chunk-rows": 40})
    manifest = make_manifest(run_cli, folder, *flags)
    run_all_chunks(run_cli, manifest)
    output = folder / f"dataset.{output_format}"
    result = run_cli("kd-dataset", "--manifest", manifest, "--output", output, "--summary", folder / "summary.json",
                     "--format", output_format)  # fmt: skip
    return result, output


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_a_job_with_no_usable_row_fails_naming_the_column_and_file(run_cli, model, tmp_path, output_format):
    data = write_text_column(tmp_path / "data/part-000.parquet", [None] * 40)
    result, output = run_job_to_dataset(run_cli, model, data, tmp_path / "job", output_format)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"distillery kd-dataset: error: all 40 rows of column text are null in {data}; "
        "check the column (text_column) and the data: each chunk's .stats.json lists its skipped rows"
    ]
    assert not output.exists() and not (tmp_path / "job/summary.json").exists()


def test_no_usable_row_counts_each_reason_rows_were_skipped_for(run_cli, model, tmp_path):
    data = write_text_column(tmp_path / "data/part-000.parquet", [None] * 30 + ["  "] * 10)
    result, output = run_job_to_dataset(run_cli, model, data, tmp_path / "job", "jsonl")
    assert result.exit_code == 1
    assert f"none of the 40 rows of column text is usable in {data}: 30 null, 10 blank;" in result.stderr
    assert not output.exists()


class FullDisk:
    """Stands in for a disk with `free` bytes left: the OS write call stores what fits, then fails with ENOSPC."""

    def __init__(self, monkeypatch, free: int) -> None:
        import errno

        real_write = os.write
        self.free = free

        def write(fd: int, data) -> int:
            if self.free <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = real_write(fd, bytes(data)[: self.free])
            self.free -= written
            return written

        monkeypatch.setattr(os, "write", write)


def hidden_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob(".*"))


def side_file_bytes(output: Path) -> int:
    """What the side file of a finished chunk held: its records and one line per skipped row."""
    skipped = json.loads(output.with_name(output.name.replace(".jsonl", ".stats.json")).read_text())["skipped"]
    return len(output.read_bytes()) + sum(len(json.dumps(skip, ensure_ascii=False).encode()) + 1 for skip in skipped)


@pytest.mark.parametrize("where", ["side file", "chunk file"])
def test_a_chunk_stopped_by_a_full_disk_says_so_and_resumes_without_losing_rows(
    run_cli, model, tmp_path, monkeypatch, where
):
    data = tmp_path / "data"
    write_tiny_dataset(data, files=1, rows=20, row_group_rows=16)
    flags = job_flags(model, data, **{"--chunk-rows": 20, "-n": 2})
    chunk = "part-000/000000000-000000020"
    run_all_chunks(run_cli, make_manifest(run_cli, tmp_path / "once", *flags))
    expected = tmp_path / "once/chunks" / f"{chunk}.jsonl"

    manifest = make_manifest(run_cli, tmp_path / "job", *flags)
    output = tmp_path / "job/chunks" / f"{chunk}.jsonl"
    side = output.parent / f".{output.name}.partial"
    # Mid-row of the side file, or once every row is saved and the chunk file is being written.
    free = len(expected.read_bytes()) // 2 + 7 if where == "side file" else side_file_bytes(expected) + 100
    disk = FullDisk(monkeypatch, free)
    result = run_cli("kd-chunk", "--manifest", manifest, "--chunk", chunk)
    assert result.exit_code == 1
    # Once every row is saved, the chunk's two outputs are written: the disk fills in one of them.
    named = [side] if where == "side file" else [output, output.with_name(output.name.replace(".jsonl", ".stats.json"))]
    assert "Traceback" not in result.stderr  # above the error: the engine's progress bars
    assert result.stderr.splitlines()[-1] in [
        f"distillery kd-chunk: error: {path}: cannot write: No space left on device; free space on its file "
        "system and run the chunk job again: it resumes from the rows already saved"
        for path in named
    ]
    assert not output.exists() and hidden_files(tmp_path / "job/chunks") == [side.name]

    disk.free = 10**9
    resumed = run_cli("kd-chunk", "--manifest", manifest, "--chunk", chunk)
    assert resumed.exit_code == 0, resumed.stderr
    assert output.read_text() == expected.read_text()
    assert hidden_files(tmp_path / "job/chunks") == []


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_a_dataset_stopped_by_a_full_disk_leaves_nothing_behind(run_cli, model, dataset, tmp_path, monkeypatch,
                                                                 output_format):  # fmt: skip
    manifest = make_manifest(run_cli, tmp_path / "job", *job_flags(model, dataset))
    run_all_chunks(run_cli, manifest)
    output, summary = tmp_path / "out" / f"dataset.{output_format}", tmp_path / "out/summary.json"
    # A staging file of a killed run (its process is gone) from before.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = output.parent / f".{output.name}.partial-{socket.gethostname()}-{dead.pid}"
    abandoned.parent.mkdir()
    abandoned.write_text("half a dataset")

    disk = FullDisk(monkeypatch, 2000)
    result = run_cli("kd-dataset", "--manifest", manifest, "--output", output, "--summary", summary)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"distillery kd-dataset: error: {output}: cannot write: No space left on device; free space on its file "
        "system and run kd-dataset again (the chunks are kept)"
    ]
    assert list(output.parent.iterdir()) == []

    disk.free = 10**9
    again = run_cli("kd-dataset", "--manifest", manifest, "--output", output, "--summary", summary, "--format",
                    output_format)  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert sorted(path.name for path in output.parent.iterdir()) == sorted([output.name, "summary.json"])
