"""`distillery consolidate` on Hugging Face inputs: every layout in, one vLLM-ready folder out."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from workflow_scripts.formats.hf_checkpoint import open_checkpoint


def source_tensors(folder) -> dict[str, torch.Tensor]:
    return {name: t.load() for name, t in open_checkpoint(folder).tensors.items()}


def logits(folder, text: str = "Checkpoints are converted") -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("layout", ["safetensors_sharded", "bin_sharded", "bin_nested", "bin", "safetensors"])
def test_every_hf_layout_becomes_one_model_safetensors(tiny_model, run_cli, tmp_path, layout):
    source = tiny_model("llama", layout)
    output = tmp_path / "out"
    result = run_cli("consolidate", "--input", source, "--output", output)
    assert result.exit_code == 0, result.stderr
    weights = sorted(p.name for p in output.iterdir() if "safetensors" in p.name or p.suffix == ".bin")
    assert weights == ["model.safetensors"]
    merged = load_file(output / "model.safetensors")
    expected = source_tensors(source)
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[name], expected[name]) for name in expected)


def test_consolidated_model_gives_the_same_logits_as_its_source(tiny_model, run_cli, tmp_path):
    source = tiny_model("qwen3", "safetensors_sharded")
    assert run_cli("consolidate", "--input", source, "--output", tmp_path / "out").exit_code == 0
    assert torch.equal(logits(tmp_path / "out"), logits(source))


def test_output_has_config_tokenizer_generation_config_and_provenance(tiny_model, run_cli, tmp_path):
    source = tiny_model("llama", "safetensors_sharded")
    run_cli("consolidate", "--input", source, "--output", tmp_path / "out", "--dtype", "bfloat16")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= files
    assert json.loads((tmp_path / "out/config.json").read_text())["dtype"] == "bfloat16"
    provenance = json.loads((tmp_path / "out/provenance.json").read_text())
    assert provenance["source"]["layout"] == "safetensors_sharded"
    assert provenance["source"]["files"] and all(f["size"] > 0 for f in provenance["source"]["files"])
    assert provenance["conversion"]["dtype"] == "bfloat16"
    assert provenance["conversion"]["source_dtypes"] == {"float32": 21}
    assert provenance["outputs"][0]["name"] == "model.safetensors"
    assert provenance["outputs"][0]["size"] == (tmp_path / "out/model.safetensors").stat().st_size
    assert provenance["command"][:2] == ["distillery", "consolidate"]
    assert "torch" in provenance["versions"]


def test_dtype_converts_floating_tensors(tiny_model, run_cli, tmp_path):
    source = tiny_model("llama", "safetensors")
    run_cli("consolidate", "--input", source, "--output", tmp_path / "out", "--dtype", "float16")
    merged = load_file(tmp_path / "out/model.safetensors")
    expected = source_tensors(source)
    assert {t.dtype for t in merged.values()} == {torch.float16}
    assert all(torch.equal(merged[n], expected[n].to(torch.float16)) for n in expected)


def test_keep_original_precision_ignores_dtype(tiny_model, run_cli, tmp_path):
    source = tiny_model("llama", "safetensors", dtype="bfloat16")
    run_cli("consolidate", "--input", source, "--output", tmp_path / "out", "--keep-original-precision")
    merged = load_file(tmp_path / "out/model.safetensors")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "out/config.json").read_text())["dtype"] == "bfloat16"


def test_max_shard_size_splits_into_indexed_shards_that_transformers_loads(tiny_model, run_cli, tmp_path):
    source = tiny_model("llama", "safetensors")
    result = run_cli("consolidate", "--input", source, "--output", tmp_path / "out", "--max-shard-size", "100KB")
    assert result.exit_code == 0, result.stderr
    index = json.loads((tmp_path / "out/model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for shard in shards:
        tensors = load_file(tmp_path / "out" / shard)
        # A tensor larger than the limit gets a shard of its own, as in transformers.
        assert len(tensors) == 1 or sum(t.numel() * 4 for t in tensors.values()) <= 100_000
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in source_tensors(source).values())
    assert torch.equal(logits(tmp_path / "out"), logits(source))


def test_pytorch_bin_output(tiny_model, run_cli, tmp_path):
    source = tiny_model("llama", "safetensors")
    assert run_cli("consolidate", "--input", source, "--output", tmp_path / "out", "--pytorch-bin").exit_code == 0
    assert (tmp_path / "out/pytorch_model.bin").is_file()
    assert not list((tmp_path / "out").glob("*.safetensors"))
    assert torch.equal(logits(tmp_path / "out"), logits(source))


def test_tied_embedding_stored_once_and_retied_on_load(tiny_model, run_cli, tmp_path):
    # torch.save of a tied Qwen3 keeps lm_head.weight sharing the embedding's storage.
    source = tiny_model("qwen3", "bin")
    assert "lm_head.weight" in open_checkpoint(source).tensors
    result = run_cli("consolidate", "--input", source, "--output", tmp_path / "out")
    assert "lm_head.weight" in result.stdout
    merged = load_file(tmp_path / "out/model.safetensors")
    assert "lm_head.weight" not in merged
    assert torch.equal(logits(tmp_path / "out"), logits(source))


def test_untied_output_head_is_kept(tiny_model, run_cli, tmp_path):
    source = tiny_model("llama", "bin")
    run_cli("consolidate", "--input", source, "--output", tmp_path / "out")
    assert "lm_head.weight" in load_file(tmp_path / "out/model.safetensors")


def test_base_model_supplies_missing_config_and_tokenizer(tiny_model, run_cli, tmp_path):
    base = tiny_model("llama", "safetensors")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes())
    output = tmp_path / "out"
    result = run_cli("consolidate", "--input", bare, "--output", output, "--base-model-name", base)
    assert result.exit_code == 0, result.stderr
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= {p.name for p in output.iterdir()}
    assert torch.equal(logits(output), logits(base))


def test_force_replaces_an_earlier_output(tiny_model, run_cli, tmp_path):
    source = tiny_model("llama", "safetensors")
    output = tmp_path / "out"
    assert run_cli("consolidate", "--input", source, "--output", output).exit_code == 0
    (output / "stale.txt").write_text("old")
    assert run_cli("consolidate", "--input", source, "--output", output, "--force").exit_code == 0
    assert not (output / "stale.txt").exists() and (output / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_deepspeed_run_is_detected_and_named(tiny_model, run_cli, tmp_path):
    run = tmp_path / "ft_runs" / "qwen"
    (run / "checkpoint-100" / "global_step100").mkdir(parents=True)
    (run / "checkpoint-100" / "latest").write_text("global_step100")
    result = run_cli("consolidate", "--input", run, "--output", tmp_path / "out")
    # Detected as DeepSpeed (not as a folder without HF weights), and found to lack its optimizer state.
    assert result.exit_code == 1
    assert "global_step100: has no *_optim_states.pt files" in result.stderr
    assert not (tmp_path / "out").exists()


def test_auto_detection_tells_layouts_apart(tiny_model, tmp_path):
    from workflow_scripts.formats.detect import detect_input_type

    assert detect_input_type(tiny_model("llama", "safetensors")) == "hf_single"
    assert detect_input_type(tiny_model("llama", "bin")) == "hf_single"
    assert detect_input_type(tiny_model("llama", "safetensors_sharded")) == "hf_sharded"
    assert detect_input_type(tiny_model("llama", "bin_nested")) == "hf_sharded"
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "zero_to_fp32.py").write_text("")
    assert detect_input_type(ds) == "deepspeed"


def test_old_non_zip_pytorch_bin_is_read(tiny_model, run_cli, tmp_path):
    """Files saved before torch's zip format cannot be memory-mapped; they are still read, safely."""
    source = tiny_model("llama", "bin")
    state = torch.load(source / "pytorch_model.bin", weights_only=True)
    torch.save(state, source / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert run_cli("consolidate", "--input", source, "--output", tmp_path / "out").exit_code == 0
    merged = load_file(tmp_path / "out/model.safetensors")
    assert all(torch.equal(merged[name], state[name]) for name in merged)
