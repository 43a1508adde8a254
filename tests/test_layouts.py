"""`distillery lay-out`: an HF folder written as the training checkpoints users bring, each checked against the
library that owns the format, and each converted back by distillery's own commands to the same bits.

Tiny models: a Llama (untied, rotary layout matters) and a Qwen3 with tied embeddings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from workflow_scripts.formats.hf_checkpoint import open_checkpoint

TOKENS = [[5, 17, 300, 42, 7, 99, 100, 3, 250, 1, 64, 65]]


@pytest.fixture
def lay_out(run_cli, tmp_path):
    def run(source: Path, layout: str, *flags: str) -> Path:
        output = tmp_path / layout
        result = run_cli("lay-out", "--input", source, "--output", output, "--as", layout, *flags)
        assert result.exit_code == 0, result.stderr
        return output

    return run


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {name: tensor.load() for name, tensor in open_checkpoint(folder).tensors.items()}


def assert_same_tensors(folder: Path, source: Path) -> None:
    converted, original = tensors(folder), tensors(source)
    assert converted.keys() == original.keys()
    for name, tensor in original.items():
        assert converted[name].dtype == tensor.dtype and torch.equal(converted[name], tensor), name


def hf_logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits


def test_hf_bin_sharded_is_save_pretrained_shards_that_transformers_loads(tiny_model_store, lay_out, run_cli, tmp_path):
    source = tiny_model_store("llama")
    folder = lay_out(source, "hf-bin-sharded", "--max-shard-size", "40KB")
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    shards = sorted(path.name for path in folder.glob("pytorch_model-*.bin"))
    assert len(shards) > 1 and shards[0] == f"pytorch_model-00001-of-{len(shards):05d}.bin"
    assert set(index["weight_map"].values()) == set(shards) and not list(folder.glob("*.safetensors"))
    assert torch.equal(hf_logits(folder), hf_logits(source))

    back = tmp_path / "back"
    assert run_cli("consolidate", "--input", folder, "--output", back, "--no-validate-vllm").exit_code == 0
    assert_same_tensors(back, source)


def test_every_layout_records_its_source_and_copies_config_and_tokenizer(tiny_model_store, lay_out):
    source = tiny_model_store("llama")
    folder = lay_out(source, "titan-dcp")
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["tool"] == "distillery" and provenance["source"]["path"] == str(source.resolve())
    assert provenance["layout"]["name"] == "titan-dcp" and provenance["layout"]["rotary_permuted"] is True
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(provenance["layout"]["model_files"])
    assert (folder / "config.json").read_text() == (source / "config.json").read_text()
    assert not list(folder.parent.glob(".titan-dcp.partial-*"))


# --- TorchTitan --------------------------------------------------------------------------------------------------


def titan_adapter_of(source: Path):
    """torchtitan's own HF adapter for the model (its `from_hf` is what TorchTitan loads an HF checkpoint with)."""
    from workflow_scripts.architectures.architecture import load_config
    from workflow_scripts.verify.titan_reference import _titan_model_config

    config = load_config(source)
    if config.model_type == "llama":
        from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter as Adapter
    else:
        from torchtitan.models.qwen3.state_dict_adapter import Qwen3StateDictAdapter as Adapter
    return Adapter(_titan_model_config(config), None)


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_titan_layout_is_what_torchtitans_own_adapter_makes_of_the_hf_weights(tiny_model_store, lay_out, architecture):
    pytest.importorskip("torchtitan")
    from workflow_scripts.formats.dcp import TitanCheckpoint

    source = tiny_model_store(architecture)  # the qwen3 ties its embeddings
    theirs = titan_adapter_of(source).from_hf(tensors(source))
    ours = {name: t.load() for name, t in TitanCheckpoint(lay_out(source, "titan-dcp")).tensors.items()}
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


def test_torchtitans_model_loads_the_titan_layout_and_computes_the_hf_logits(tiny_model_store, lay_out):
    pytest.importorskip("torchtitan")
    from workflow_scripts.verify.titan_reference import load_titan_reference

    source = tiny_model_store("llama")
    folder = lay_out(source, "titan-dcp")
    with torch.no_grad():
        titan = load_titan_reference(folder, folder)(torch.tensor(TOKENS)).logits  # strict load_state_dict
    reference = hf_logits(source)
    assert float((titan - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_titan_to_hf_converts_the_titan_layout_back_bit_exactly(tiny_model_store, lay_out, run_cli, tmp_path,
                                                                 architecture):  # fmt: skip
    source = tiny_model_store(architecture)
    back = tmp_path / "back"
    result = run_cli("titan-to-hf", "--input", lay_out(source, "titan-dcp"), "--output", back, "--no-validate-vllm")
    assert result.exit_code == 0, result.stderr
    assert_same_tensors(back, source)
    assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] == (architecture == "qwen3")


# --- DeepSpeed ZeRO ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "world_size", "architecture"), [(3, 2, "llama"), (2, 3, "qwen3")])
def test_zero_layout_is_read_back_exactly_by_consolidate_and_by_deepspeeds_zero_to_fp32(
    tiny_model_store, lay_out, run_cli, tmp_path, stage, world_size, architecture
):
    source = tiny_model_store(architecture)
    folder = lay_out(source, "deepspeed-zero", "--zero-stage", str(stage), "--world-size", str(world_size))
    assert (folder / "latest").read_text() == "global_step0"
    assert len(list((folder / "global_step0").glob("zero_pp_rank_*_optim_states.pt"))) == world_size
    assert not [path for path in folder.rglob("*") if path.name.startswith(".spool")]

    back = tmp_path / "back"
    result = run_cli("consolidate", "--input", folder, "--output", back, "--type", "deepspeed", "--no-validate-vllm")
    assert result.exit_code == 0, result.stderr
    assert_same_tensors(back, source)

    pytest.importorskip("deepspeed")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    theirs = get_fp32_state_dict_from_zero_checkpoint(str(folder))
    original = tensors(source)
    tied = {"lm_head.weight": "model.embed_tokens.weight"} if architecture == "qwen3" else {}
    assert theirs.keys() == original.keys() | tied.keys()
    for name, tensor in theirs.items():
        assert torch.equal(tensor, original[tied.get(name, name)]), name


# --- MaxText -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_variants(tmp_path_factory):
    """Tiny Llamas the session store has not: one with Llama 3.1 rope scaling, one with tied embeddings."""
    from workflow_scripts.architectures.rope import LLAMA3_ROPE_SCALING
    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_model

    folder = tmp_path_factory.mktemp("llama-variants")
    specs = {
        "llama3.1": TinyModelSpec(extra={"rope_scaling": dict(LLAMA3_ROPE_SCALING)}),
        "tied": TinyModelSpec(tie_word_embeddings=True),
    }
    built = {}
    for name, spec in specs.items():
        built[name] = folder / name
        build_tiny_model(built[name], spec, "safetensors", seed=3, dtype="float32")
    return built


def maxtext_arrays(folder: Path) -> dict:
    from workflow_scripts.formats.maxtext import MaxTextCheckpoint

    checkpoint = MaxTextCheckpoint(folder)
    return {name: tensor.load() for name, tensor in checkpoint.tensors.items()}


@pytest.mark.parametrize(("variant", "model_size"), [("default", "llama-from-hf"), ("llama3.1", "llama3.1-from-hf")])
def test_maxtext_layout_holds_the_arrays_of_maxtexts_own_converter(tiny_model_store, llama_variants, lay_out,
                                                                   variant, model_size):  # fmt: skip
    pytest.importorskip("maxtext", reason="needs MaxText's converter: bash tests/helpers/install_maxtext.sh")
    sys.path.insert(0, str(Path(__file__).parent / "helpers"))
    import maxtext_checkpoints as mc
    import numpy as np

    source = tiny_model_store("llama") if variant == "default" else llama_variants[variant]
    ours = maxtext_arrays(lay_out(source, "maxtext"))
    mc.register_size(model_size, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=512)
    theirs = dict(flattened(mc.hf_to_maxtext_weights(source, model_size)))
    assert ours.keys() == theirs.keys()
    for name, array in theirs.items():  # MaxText's converter writes bfloat16; the layout keeps float32
        assert np.array_equal(ours[name].to(torch.bfloat16).float().numpy(), np.asarray(array, np.float32)), name


def flattened(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        yield from flattened(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]


@pytest.mark.parametrize("variant", ["llama3.1", "tied"])
def test_maxtext_to_hf_converts_the_maxtext_layout_back_bit_exactly(llama_variants, lay_out, run_cli, tmp_path,
                                                                    variant):  # fmt: skip
    pytest.importorskip("tensorstore")
    source = llama_variants[variant]
    folder = lay_out(source, "maxtext")
    model_size = json.loads((folder / "provenance.json").read_text())["layout"]["maxtext"]["model_size"]
    back = tmp_path / "back"
    result = run_cli("maxtext-to-hf", "--orbax-checkpoint", folder, "--hf-model-path", back, "--model-size",
                     model_size, "--config", folder / "config.json", "--tokenizer-path", folder, "--dtype", "float32",
                     "--no-normalize-embedding-logits", "--no-validate-vllm")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert_same_tensors(back, source)
    assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] == (variant == "tied")


# --- What is refused ---------------------------------------------------------------------------------------------


def test_an_output_inside_the_input_is_refused_in_one_line(tiny_model, run_cli):
    source = tiny_model("llama")
    result = run_cli("lay-out", "--input", source, "--output", source / "titan", "--as", "titan-dcp")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "lies inside the input" in result.stderr and not (source / "titan").exists()


def test_a_model_the_format_cannot_hold_is_refused_before_anything_is_written(tiny_model_store, run_cli, tmp_path):
    result = run_cli("lay-out", "--input", tiny_model_store("qwen3"), "--output", tmp_path / "mt", "--as", "maxtext")
    assert result.exit_code == 1
    assert "is a qwen3 model; MaxText checkpoints are written for llama" in result.stderr
    assert not (tmp_path / "mt").exists() and not list(tmp_path.glob(".mt.partial-*"))


def test_every_layout_has_a_writer():
    from workflow_scripts.choices import LAYOUTS
    from workflow_scripts.layouts.run import WRITERS

    assert tuple(WRITERS) == LAYOUTS
