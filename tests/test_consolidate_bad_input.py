"""Bad input to `distillery consolidate`: one line naming the file and the fix, a non-zero exit, no output."""

from __future__ import annotations

import json
import struct

import pytest

from workflow_scripts.cli import main


def assert_refused(result, output, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not output.exists()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]


@pytest.fixture
def output(tmp_path):
    (tmp_path / "outputs").mkdir()
    return tmp_path / "outputs" / "model"


def consolidate(run_cli, source, output, *extra):
    return run_cli("consolidate", "--input", source, "--output", output, *extra)


def test_missing_input_folder(run_cli, tmp_path, output):
    missing = tmp_path / "nope"
    assert_refused(consolidate(run_cli, missing, output), output, str(missing), "does not exist")


def test_folder_without_weights(run_cli, tmp_path, output):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert_refused(consolidate(run_cli, empty, output), output, str(empty), "no model weights found")


def test_truncated_safetensors_file(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors")
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert_refused(consolidate(run_cli, source, output), output, str(weights), "truncated")


def test_corrupt_safetensors_header(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors_sharded")
    shard = source / "model-00002-of-00012.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:20] = b"#" * 12
    shard.write_bytes(bytes(data))
    assert_refused(consolidate(run_cli, source, output), output, str(shard), "header is not JSON")


def test_index_naming_a_missing_shard(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors_sharded")
    (source / "model-00003-of-00012.safetensors").unlink()
    assert_refused(
        consolidate(run_cli, source, output),
        output,
        "model.safetensors.index.json",
        "model-00003-of-00012.safetensors",
        "does not exist",
    )


def test_index_naming_a_tensor_absent_from_its_shard(tiny_model, run_cli, output):
    source = tiny_model("llama", "bin_sharded")
    index_path = source / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "pytorch_model-00001-of-00012.bin"
    index_path.write_text(json.dumps(index))
    assert_refused(consolidate(run_cli, source, output), output, str(index_path), "model.layers.9.mlp.up_proj.weight")


def test_two_shards_holding_the_same_tensor(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors_sharded")
    index = json.loads((source / "model.safetensors.index.json").read_text())
    (source / "model.safetensors.index.json").unlink()  # shards without an index are read as a set
    first, second = sorted(set(index["weight_map"].values()))[:2]
    (source / second).write_bytes((source / first).read_bytes())
    assert_refused(consolidate(run_cli, source, output), output, "is in two shards", first, second)


def test_missing_config(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors")
    (source / "config.json").unlink()
    assert_refused(consolidate(run_cli, source, output), output, str(source), "config.json is missing", "--base-model")


def test_invalid_config(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors")
    (source / "config.json").write_text('{"model_type": "llama", ')
    assert_refused(consolidate(run_cli, source, output), output, str(source / "config.json"), "not valid JSON")


def test_config_of_an_unknown_architecture(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors")
    (source / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    assert_refused(consolidate(run_cli, source, output), output, str(source / "config.json"), "transformers")


def test_output_exists_without_force(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors")
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    result = consolidate(run_cli, source, output)
    assert result.exit_code != 0
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_unknown_dtype(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors")
    assert_refused(consolidate(run_cli, source, output, "--dtype", "float8"), output, "--dtype", "float8")


def test_unreadable_max_shard_size(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors")
    result = consolidate(run_cli, source, output, "--max-shard-size", "forty gigs")
    assert_refused(result, output, "forty gigs", "40GB")


def test_pickle_with_code_is_refused(tiny_model, run_cli, output, tmp_path):
    import pickle

    source = tiny_model("llama", "safetensors")
    (source / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    import torch

    torch.save(
        {"model.embed_tokens.weight": torch.zeros(1), "x": Payload()},
        source / "pytorch_model.bin",
        pickle_module=pickle,
    )
    assert_refused(consolidate(run_cli, source, output), output, "pytorch_model.bin", "refused to unpickle")


def test_killed_run_leaves_nothing_that_looks_complete(tiny_model, tmp_path):
    """A consolidation killed mid-write leaves only a hidden staging folder, never the output path."""
    import os
    import signal
    import subprocess
    import sys
    import time

    source = tiny_model("llama", "safetensors", hidden_size=256, intermediate_size=1024, vocab_size=4096)
    output = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "workflow_scripts.cli", "consolidate", "--input", source, "--output", output],
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.partial-*/model.safetensors")):
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists()
    abandoned = list(tmp_path.glob(".out.partial-*"))
    assert len(abandoned) == 1

    # The next run removes what the killed one left behind.
    assert main(["consolidate", "--input", str(source), "--output", str(output)]) == 0
    assert not abandoned[0].exists() and (output / "model.safetensors").is_file()


def test_truncated_bin_file(tiny_model, run_cli, output):
    source = tiny_model("llama", "bin")
    weights = source / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert_refused(consolidate(run_cli, source, output), output, str(weights), "cannot read")


def test_safetensors_header_length_garbage(tiny_model, run_cli, output):
    source = tiny_model("llama", "safetensors")
    weights = source / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    assert_refused(consolidate(run_cli, source, output), output, str(weights), "header length")
