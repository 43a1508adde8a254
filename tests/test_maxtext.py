"""MaxText Orbax checkpoints -> param-only -> HF Llama: exact against MaxText's math, and MaxText's own tools.

Checkpoints are made by MaxText's own code (tests/helpers/maxtext_checkpoints.py) from tiny HF Llamas
(2 layers, hidden 64, 4 heads of 16, GQA with 2 KV heads); head_dim 16 makes MaxText's query scale (÷4) exact
in bfloat16, so the round trip HF -> MaxText -> HF must give the same bits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tensorstore")
pytest.importorskip("maxtext", reason="needs MaxText's converter: bash tests/helpers/install_maxtext.sh")

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import maxtext_checkpoints as mc  # noqa: E402

from workflow_scripts.formats.maxtext import MaxTextCheckpoint  # noqa: E402
from workflow_scripts.verify.maxtext_reference import MaxTextReference, apply_rope, maxtext_math_of  # noqa: E402

TOKENS = [[5, 17, 300, 42, 7, 99, 100, 3, 250, 1, 64, 65]]
# (MaxText model name, KV heads): a llama3.1 name has MaxText's interleaved, scaled rotary embedding.
CASES = {"llama3.1-tiny": 2, "llama3-tiny": 4}


@pytest.fixture(scope="session")
def maxtext_models(tmp_path_factory, tiny_model_store):
    """Per case: the HF source, its config.json, and MaxText's scanned parameter tree made by MaxText's converter."""
    built = {}
    for name, kv_heads in CASES.items():
        hf = tiny_model_store("llama", "safetensors", num_key_value_heads=kv_heads)
        mc.register_size(name, layers=2, heads=4, kv_heads=kv_heads, head_dim=16, vocab=512)
        built[name] = (hf, hf / "config.json", mc.hf_to_maxtext_weights(hf, name))
    return built


@pytest.fixture(scope="session")
def param_only(maxtext_models, tmp_path_factory):
    """Param-only checkpoints saved by MaxText's converter: per case, plus tied and unscanned variants."""
    made = {}

    def get(name: str, variant: str = "scanned") -> Path:
        if (name, variant) not in made:
            weights = maxtext_models[name][2]
            if variant == "tied":
                weights = mc.tie_to_embedding(weights)
            elif variant == "unscanned":
                weights = mc.unscan(weights)
            elif variant == "missing_layer":
                weights = mc.unscan(weights, drop_layer=1)
            made[(name, variant)] = mc.save_param_only(tmp_path_factory.mktemp(f"{name}-{variant}"), weights)
        return made[(name, variant)]

    return get


@pytest.fixture(scope="session")
def full_state(maxtext_models, tmp_path_factory):
    return mc.save_full_state(tmp_path_factory.mktemp("full") / "checkpoints", maxtext_models["llama3.1-tiny"][2], 7)


def convert(run_cli, checkpoint: Path, output: Path, name: str, config: Path, *flags: str):
    result = run_cli("maxtext-to-hf", "--orbax-checkpoint", checkpoint, "--hf-model-path", output,
                     "--model-size", name, "--config", config, *flags)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return output


def hf_logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits


def maxtext_math_logits(checkpoint: Path, model: Path) -> torch.Tensor:
    return MaxTextReference(checkpoint, maxtext_math_of(model))(torch.tensor(TOKENS)).logits


@pytest.mark.parametrize("name", list(CASES))
def test_hf_logits_equal_maxtext_math(run_cli, maxtext_models, param_only, tmp_path, name):
    hf, config, _ = maxtext_models[name]
    model = convert(run_cli, param_only(name), tmp_path / "hf", name, config, "--dtype", "float32",
                    "--tokenizer-path", hf)  # fmt: skip
    ours, reference = hf_logits(model), maxtext_math_logits(param_only(name), model)
    assert float((ours - reference).abs().max()) <= 1e-5 * float(reference.abs().max())
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_llama31_gets_rope_scaling_and_llama3_does_not(run_cli, maxtext_models, param_only, tmp_path):
    configs = {}
    for name in CASES:
        _, config, _ = maxtext_models[name]
        folder = convert(run_cli, param_only(name), tmp_path / name, name, config, "--no-validate-vllm")
        configs[name] = json.loads((folder / "config.json").read_text())
    scaling = configs["llama3.1-tiny"].get("rope_scaling") or configs["llama3.1-tiny"].get("rope_parameters")
    assert scaling["rope_type"] == "llama3" and scaling["factor"] == 8.0
    plain = configs["llama3-tiny"].get("rope_scaling") or configs["llama3-tiny"].get("rope_parameters") or {}
    assert plain.get("rope_type", "default") == "default"


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_hf_maxtext_hf_is_exact(run_cli, maxtext_models, param_only, tmp_path, name):
    from workflow_scripts.formats.hf_checkpoint import open_checkpoint

    hf, config, _ = maxtext_models[name]
    model = convert(run_cli, param_only(name), tmp_path / "hf", name, config, "--dtype", "bfloat16",
                    "--no-validate-vllm")  # fmt: skip
    original, converted = open_checkpoint(hf).tensors, open_checkpoint(model).tensors
    assert original.keys() == converted.keys()
    for tensor_name, tensor in original.items():
        assert torch.equal(converted[tensor_name].load(), tensor.load().to(torch.bfloat16)), tensor_name


def test_tied_embedding_becomes_lm_head_divided_by_sqrt_emb(run_cli, maxtext_models, param_only, tmp_path):
    _, config, _ = maxtext_models["llama3.1-tiny"]
    checkpoint = param_only("llama3.1-tiny", "tied")
    model = convert(run_cli, checkpoint, tmp_path / "hf", "llama3.1-tiny", config, "--dtype", "float32",
                    "--no-validate-vllm")  # fmt: skip
    assert json.loads((model / "config.json").read_text())["tie_word_embeddings"] is False
    ours, reference = hf_logits(model), maxtext_math_logits(checkpoint, model)
    assert float((ours - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


def test_tied_embedding_without_normalization_stays_tied(run_cli, maxtext_models, param_only, tmp_path):
    _, config, _ = maxtext_models["llama3.1-tiny"]
    checkpoint = param_only("llama3.1-tiny", "tied")
    model = convert(run_cli, checkpoint, tmp_path / "hf", "llama3.1-tiny", config, "--dtype", "float32",
                    "--no-normalize-embedding-logits", "--no-validate-vllm")  # fmt: skip
    assert json.loads((model / "config.json").read_text())["tie_word_embeddings"] is True
    ours, reference = hf_logits(model), maxtext_math_logits(checkpoint, model)
    assert float((ours - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


def test_unscanned_layers_convert_like_scanned(run_cli, maxtext_models, param_only, tmp_path):
    from workflow_scripts.formats.hf_checkpoint import open_checkpoint

    _, config, _ = maxtext_models["llama3.1-tiny"]
    flags = ("--dtype", "bfloat16", "--no-validate-vllm")
    scanned = convert(run_cli, param_only("llama3.1-tiny"), tmp_path / "a", "llama3.1-tiny", config, *flags)
    unscanned = convert(run_cli, param_only("llama3.1-tiny", "unscanned"), tmp_path / "b", "llama3.1-tiny", config,
                        *flags)  # fmt: skip
    first, second = open_checkpoint(scanned).tensors, open_checkpoint(unscanned).tensors
    assert all(torch.equal(first[name].load(), second[name].load()) for name in first)


def test_rotary_embeddings_equal_maxtext_layers():
    """Our JAX rotary embedding against MaxText's own LLaMARotaryEmbedding and RotaryEmbedding modules."""
    import jax.numpy as jnp
    from maxtext.layers.embeddings import LLaMARotaryEmbedding, RotaryEmbedding

    from workflow_scripts.architectures.maxtext_llama import SIZES, MaxTextLlamaMath

    x = np.random.default_rng(0).standard_normal((1, 40, 4, 16)).astype(np.float32)
    positions = jnp.arange(40, dtype=jnp.float32)
    for rope_type, module in (
        ("llama3.1", LLaMARotaryEmbedding(1, 500_000, mesh=None, embedding_dims=16, fprop_dtype=jnp.float32)),
        ("default", RotaryEmbedding(1, 500_000, mesh=None, embedding_dims=16, fprop_dtype=jnp.float32)),
    ):
        math = MaxTextLlamaMath("m", SIZES["llama3.1-8b"], rope_type, False)
        theirs = np.asarray(module(jnp.asarray(x), position=positions[None]))[0]
        ours = np.asarray(apply_rope(jnp.asarray(x[0]), positions, math))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_param_only_from_full_state_is_what_maxtext_loads(run_cli, full_state, maxtext_models, tmp_path):
    import jax
    from maxtext.common import checkpointing

    result = run_cli("maxtext-param-only", "--load-full-state-path", full_state, "--checkpoint-dir", tmp_path / "po")
    assert result.exit_code == 0, result.stderr
    items = tmp_path / "po" / "0" / "items"
    checkpoint = MaxTextCheckpoint(items)
    assert checkpoint.kind == "param_only"
    assert not any(keys[0] == "opt_state" for keys in checkpoint.tree.leaves)
    weights = {"params": maxtext_models["llama3.1-tiny"][2]}
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), weights)
    loaded = checkpointing.load_params_from_path(str(items), abstract, 1)
    for got, expected in zip(jax.tree.leaves(loaded), jax.tree.leaves(weights), strict=True):
        assert got.dtype == expected.dtype and np.array_equal(np.asarray(got), np.asarray(expected))


def test_full_state_to_verified_hf_model(run_cli, full_state, maxtext_models, tmp_path):
    hf, config, _ = maxtext_models["llama3.1-tiny"]
    assert run_cli("maxtext-param-only", "--input", full_state, "--output", tmp_path / "po").exit_code == 0
    model = convert(run_cli, tmp_path / "po", tmp_path / "hf", "llama3.1-tiny", config, "--tokenizer-path", hf)
    report = tmp_path / "verification.json"
    result = run_cli("verify", "--model-path", model, "--reference", tmp_path / "po", "--report", report)
    assert result.exit_code == 0, result.stdout
    numerics = next(c for c in json.loads(report.read_text())["checks"] if c["name"] == "numerics")
    assert numerics["status"] == "pass" and "MaxText math" in numerics["detail"]


# Bad input: one line naming the checkpoint, what is wrong and what to do; nothing written.


def test_folder_without_orbax_metadata_is_refused(run_cli, maxtext_models, tmp_path):
    hf, config, _ = maxtext_models["llama3.1-tiny"]
    result = run_cli("maxtext-to-hf", "--orbax-checkpoint", hf, "--hf-model-path", tmp_path / "out",
                     "--model-size", "llama3.1-tiny", "--config", config)  # fmt: skip
    assert result.exit_code == 1 and "no Orbax metadata" in result.stderr
    assert not (tmp_path / "out").exists()


def test_full_state_given_to_maxtext_to_hf_says_run_param_only(run_cli, full_state, maxtext_models, tmp_path):
    _, config, _ = maxtext_models["llama3.1-tiny"]
    result = run_cli("maxtext-to-hf", "--orbax-checkpoint", full_state, "--hf-model-path", tmp_path / "out",
                     "--model-size", "llama3.1-tiny", "--config", config)  # fmt: skip
    assert result.exit_code == 1
    assert "full training-state checkpoint" in result.stderr and "maxtext-param-only" in result.stderr
    assert not (tmp_path / "out").exists()


def test_param_only_given_to_maxtext_param_only_says_convert_directly(run_cli, param_only, tmp_path):
    result = run_cli("maxtext-param-only", "--input", param_only("llama3.1-tiny"), "--output", tmp_path / "po")
    assert result.exit_code == 1 and "already a param-only checkpoint" in result.stderr
    assert "maxtext-to-hf" in result.stderr and not (tmp_path / "po").exists()


def test_model_size_that_does_not_match_lists_shapes(run_cli, param_only, tmp_path):
    result = run_cli("maxtext-to-hf", "--orbax-checkpoint", param_only("llama3.1-tiny"),
                     "--hf-model-path", tmp_path / "out", "--model-size", "llama3.1-1b")  # fmt: skip
    assert result.exit_code == 1
    assert "does not match --model-size llama3.1-1b" in result.stderr
    assert "token_embedder.embedding is [512, 64], llama3.1-1b expects [128256, 2048]" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_layer_is_named(run_cli, maxtext_models, param_only, tmp_path):
    _, config, _ = maxtext_models["llama3.1-tiny"]
    checkpoint = param_only("llama3.1-tiny", "missing_layer")
    result = run_cli("maxtext-to-hf", "--orbax-checkpoint", checkpoint, "--hf-model-path", tmp_path / "out",
                     "--model-size", "llama3.1-tiny", "--config", config)  # fmt: skip
    assert result.exit_code == 1 and "misses decoder layer(s) [1]" in result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_model_size_without_config_is_refused(run_cli, param_only, tmp_path):
    result = run_cli("maxtext-to-hf", "--orbax-checkpoint", param_only("llama3.1-tiny"),
                     "--hf-model-path", tmp_path / "out", "--model-size", "llama3.1-tiny")  # fmt: skip
    assert result.exit_code == 1
    assert "unknown --model-size 'llama3.1-tiny'" in result.stderr and "--config" in result.stderr


@pytest.mark.integration
def test_workflow_turns_a_training_checkpoint_into_a_verified_model(full_state, maxtext_models, tmp_path):
    import subprocess

    import yaml

    repo = Path(__file__).resolve().parents[1]
    hf, config, _ = maxtext_models["llama3.1-tiny"]
    settings = yaml.safe_load((repo / "config/examples/tiny-models.yaml").read_text())
    settings["tiny_models"] = {}
    settings["verify"]["parallel_sizes"] = []
    # The default KD and ICM jobs use the default models, which this config replaces.
    settings["kd"], settings["tiny_datasets"] = {}, {}
    settings.pop("icm", None)
    source = {"format": "maxtext", "path": str(full_state), "model_size": "llama3.1-tiny", "config": str(config),
              "tokenizer": str(hf)}  # fmt: skip
    settings["models"] = {"teacher": {"source": source, "dtype": "bfloat16"}}
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(tmp_path / "w"),
               "--configfile", str(configfile), "--cores", "2"]  # fmt: skip
    dry = subprocess.run([*command, "-n"], capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    for rule in ("maxtext_param_only", "maxtext_to_hf", "verify_model"):
        assert f"rule {rule}:" in dry.stdout
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "w/results/models/teacher/verification.json").read_text())
    assert report["passed"], report["failed_checks"]
    numerics = next(c for c in report["checks"] if c["name"] == "numerics")
    assert numerics["status"] == "pass" and "MaxText math" in numerics["detail"]


def test_small_read_blocks_give_the_same_model(run_cli, maxtext_models, param_only, tmp_path, monkeypatch):
    """Blocks of a few rows (as for a large model, in proportion) write the same bytes."""
    from workflow_scripts.formats import maxtext_arrays
    from workflow_scripts.formats.hf_checkpoint import open_checkpoint

    _, config, _ = maxtext_models["llama3.1-tiny"]
    flags = ("--dtype", "bfloat16", "--no-validate-vllm")
    whole = convert(run_cli, param_only("llama3.1-tiny"), tmp_path / "a", "llama3.1-tiny", config, *flags)
    monkeypatch.setattr(maxtext_arrays, "BLOCK_BYTES", 1000)
    monkeypatch.setattr(maxtext_arrays, "SPOOL_ABOVE_BYTES", 0)
    sliced = convert(run_cli, param_only("llama3.1-tiny"), tmp_path / "b", "llama3.1-tiny", config, *flags)
    first, second = open_checkpoint(whole).tensors, open_checkpoint(sliced).tensors
    assert all(torch.equal(first[name].load(), second[name].load()) for name in first)


def test_next_scanned_array_is_spooled_while_the_current_one_is_handed_out(param_only, tmp_path, monkeypatch):
    """The worker decodes the next array in the conversion's order into a spool file, ahead of being asked; two
    spool files serve every array in turn (an earlier array's file is overwritten by a later one)."""
    import time

    from workflow_scripts.formats import maxtext_arrays

    monkeypatch.setattr(maxtext_arrays, "SPOOL_ABOVE_BYTES", 0)
    checkpoint = MaxTextCheckpoint(param_only("llama3.1-tiny"))
    order = ["decoder.layers.self_attention.query.kernel", "decoder.layers.mlp.wo.kernel",
             "decoder.layers.self_attention.key.kernel", "decoder.layers.mlp.wi_0.kernel"]  # fmt: skip
    sizes = [np.prod(checkpoint.tensors[name].shape) * 2 for name in order]
    assert sizes[0] != sizes[1]
    arrays = maxtext_arrays.StoredArrays(checkpoint, tmp_path, order=order)
    try:
        arrays.layer(order[0], 0)
        deadline = time.monotonic() + 60

        def spool_sizes() -> list[int]:
            return sorted(path.stat().st_size for path in tmp_path.glob(".spool-*"))

        while spool_sizes() != sorted(sizes[:2]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spool_sizes() == sorted(sizes[:2]), "the next array was not spooled ahead"
        for name in order[1:]:
            stored = checkpoint.read(name)
            assert all(np.array_equal(arrays.layer(name, layer), stored[:, layer]) for layer in range(stored.shape[1]))
            assert len(spool_sizes()) == 2
    finally:
        arrays.close()
    assert not list(tmp_path.glob(".spool-*"))


def test_nnx_decode_layout_converts_like_linen(run_cli, maxtext_models, param_only, tmp_path):
    """MaxText 0.2's NNX decode checkpoints: the bare tree, each leaf under `value`, saved by orbax."""
    import jax
    import orbax.checkpoint as ocp

    from workflow_scripts.formats.hf_checkpoint import open_checkpoint

    _, config, weights = maxtext_models["llama3.1-tiny"]
    wrapped = jax.tree.map(lambda array: {"value": np.asarray(array)}, weights)
    ocp.PyTreeCheckpointer().save(tmp_path / "nnx" / "0" / "items", wrapped)
    assert MaxTextCheckpoint(tmp_path / "nnx").layout == "nnx"
    flags = ("--dtype", "bfloat16", "--no-validate-vllm")
    linen = convert(run_cli, param_only("llama3.1-tiny"), tmp_path / "a", "llama3.1-tiny", config, *flags)
    nnx = convert(run_cli, tmp_path / "nnx", tmp_path / "b", "llama3.1-tiny", config, *flags)
    first, second = open_checkpoint(linen).tensors, open_checkpoint(nnx).tensors
    assert all(torch.equal(first[name].load(), second[name].load()) for name in first)
