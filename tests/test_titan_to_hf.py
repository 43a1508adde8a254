"""TorchTitan checkpoints → HF: real DCP checkpoints of models built by the torchtitan package, logits compared with
TorchTitan's own forward; the name tables against torchtitan's HF adapters; the vLLM plugin's declaration."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from titan_models import (  # noqa: E402
    TinyTitanSpec,
    build_titan_model,
    save_dcp,
    titan_logits,
    titan_state_dict,
    write_config,
)

from workflow_scripts.architectures.tiny import train_tokenizer  # noqa: E402
from workflow_scripts.convert.titan_flavors import FLAVORS  # noqa: E402
from workflow_scripts.formats import titan_names  # noqa: E402
from workflow_scripts.formats.dcp import TitanCheckpoint  # noqa: E402

pytest.importorskip("torchtitan", reason="install with: pip install --no-deps torchtitan==0.3.0")
PROBE = [3, 17, 250, 9, 41, 300, 77, 5, 128, 64, 33, 499, 1, 2]


def hf_logits(folder: Path, token_ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits.float()


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(512).save_pretrained(folder)
    return folder


CASES = {
    # name: (spec, naming, save the raw fused wqkv, as a .pt file)
    "qwen3-guide-names-tied": (TinyTitanSpec("qwen3", tie=True), "guide", False, False),
    "qwen3-0.3-names-fused-flavor": (TinyTitanSpec("qwen3", fuse_qkv=True), "titan-0.3", False, False),
    "llama-guide-names": (TinyTitanSpec("llama"), "guide", False, False),
    "llama-0.3-names-raw-fused-wqkv": (TinyTitanSpec("llama", fuse_qkv=True), "titan-0.3", True, False),
    "llama-0.3-names-tied-pt-file": (TinyTitanSpec("llama", tie=True), "titan-0.3", False, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hf_conversion_reproduces_torchtitan_logits(case, tmp_path, run_cli, tokenizer_folder):
    spec, naming, fused_raw, as_pt = CASES[case]
    model = build_titan_model(spec, seed=1)
    state = titan_state_dict(model, naming, fused_raw=fused_raw)
    if as_pt:
        source = tmp_path / "model.pt"
        torch.save(state, source)
    else:
        source = save_dcp(state, tmp_path / "step-10")
    config = write_config(spec, tmp_path / "config.json")
    output = tmp_path / "hf"
    result = run_cli("titan-to-hf", "--input", source, "--output", output, "--config", config,
                     "--tokenizer", tokenizer_folder)  # fmt: skip
    assert result.exit_code == 0, result.stderr

    ours = hf_logits(output, PROBE)
    theirs = titan_logits(model, PROBE)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
    written = json.loads((output / "config.json").read_text())
    assert written["architectures"] == ["Qwen3ForCausalLM" if spec.family == "qwen3" else "LlamaForCausalLM"]
    assert written["tie_word_embeddings"] is spec.tie
    provenance = json.loads((output / "provenance.json").read_text())
    assert provenance["source"]["naming"] == naming
    assert (output / "tokenizer.json").is_file()


def test_flavor_builds_the_config_of_torchtitans_debugmodel(tmp_path, run_cli):
    from torchtitan.models.llama3 import llama3_configs

    config = llama3_configs["debugmodel"](attn_backend="flex")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = config.build()
    model.to_empty(device="cpu")
    model.init_states(buffer_device=torch.device("cpu"))
    model.eval()
    source = save_dcp(titan_state_dict(model), tmp_path / "step-1")
    output = tmp_path / "hf"
    result = run_cli("titan-to-hf", "--input", source, "--output", output, "--flavor", "llama3:debugmodel",
                     "--dtype", "bfloat16", "--no-validate-vllm")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    from workflow_scripts.verify.numerics import round_weights

    theirs = titan_logits(model, PROBE)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval()
    round_weights(model, torch.bfloat16)  # the conversion stored bfloat16: compare with the rounded source
    rounded = titan_logits(model, PROBE)
    with torch.no_grad():
        ours = hf(torch.tensor([PROBE])).logits
    assert (ours - rounded).abs().max() <= 1e-5 * theirs.abs().max()


def _titan_flavor_configs():
    from torchtitan.models.llama3 import llama3_configs
    from torchtitan.models.qwen3 import qwen3_configs

    yield "llama", llama3_configs
    yield "qwen3", qwen3_configs


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_flavor_table_agrees_with_the_torchtitan_package(family):
    configs = dict(_titan_flavor_configs())[family]
    for name, args in FLAVORS[family].items():
        config = configs[name](attn_backend="flex")
        attention = config.layers[0].attention
        assert (config.dim, len(config.layers), config.vocab_size) == (args.dim, args.n_layers, args.vocab_size), name
        assert attention.n_heads == args.n_heads, name
        assert (attention.n_kv_heads or attention.n_heads) == (args.n_kv_heads or args.n_heads), name
        assert (attention.head_dim or config.dim // attention.n_heads) == (args.head_dim or args.dim // args.n_heads)
        assert config.layers[0].feed_forward.w1.out_features == args.ffn_hidden_dim(), name
        assert attention.rope.theta == args.rope_theta and attention.rope.max_seq_len == args.max_seq_len, name
        assert attention.rope.scaling == ("llama" if family == "llama" else "none"), name
        assert config.norm.eps == args.norm_eps, name
        assert config.enable_weight_tying == args.enable_weight_tying, name


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_names_and_rotary_layout_agree_with_torchtitans_hf_adapter(family):
    """torchtitan's own HF adapter (a reference only) gives the same names and the same q/k rows."""
    from torchtitan.models.llama3 import Llama3StateDictAdapter
    from torchtitan.models.qwen3 import Qwen3StateDictAdapter

    spec = TinyTitanSpec(family)
    model = build_titan_model(spec)
    state = titan_state_dict(model)
    adapter = (Llama3StateDictAdapter if family == "llama" else Qwen3StateDictAdapter)(model.config, None)
    reference = adapter.to_hf(dict(state))
    shape = titan_names.AttentionShape(spec.n_heads, spec.n_kv_heads, spec.dim // spec.n_heads)
    ours = {titan_names.hf_name(name): tensor
            for name, tensor in titan_names.titan_weights_as_hf_layout(state.items(), family, shape)}  # fmt: skip
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[name], reference[name]) for name in ours)


def test_guide_names_map_like_the_guides_table():
    """The renaming of TorchTitan's vLLM guide: every name of its table, and the names it drops."""
    guide = {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "output.weight": "lm_head.weight",
        "norm.weight": "model.norm.weight",
        "layers.3.attention.wq.weight": "model.layers.3.self_attn.q_proj.weight",
        "layers.3.attention.wk.weight": "model.layers.3.self_attn.k_proj.weight",
        "layers.3.attention.wv.weight": "model.layers.3.self_attn.v_proj.weight",
        "layers.3.attention.wo.weight": "model.layers.3.self_attn.o_proj.weight",
        "layers.3.attention.q_norm.weight": "model.layers.3.self_attn.q_norm.weight",
        "layers.3.attention.k_norm.weight": "model.layers.3.self_attn.k_norm.weight",
        "layers.3.feed_forward.w1.weight": "model.layers.3.mlp.gate_proj.weight",
        "layers.3.feed_forward.w2.weight": "model.layers.3.mlp.down_proj.weight",
        "layers.3.feed_forward.w3.weight": "model.layers.3.mlp.up_proj.weight",
        "layers.3.attention_norm.weight": "model.layers.3.input_layernorm.weight",
        "layers.3.ffn_norm.weight": "model.layers.3.post_attention_layernorm.weight",
        "layers.12.attention.qkv_linear.wq.weight": "model.layers.12.self_attn.q_proj.weight",
        "lm_head.weight": "lm_head.weight",
        "freqs_cis": None,
    }
    assert {name: titan_names.hf_name(name) for name in guide} == guide
    for name, hf in guide.items():
        if hf is not None and "qkv_linear" not in name and name != "lm_head.weight":
            assert titan_names.titan_name(hf, titan_names.GUIDE) == name


def test_weights_mapper_tables_are_plain_data_and_import_without_vllm():
    from workflow_scripts.vllm_models import torchtitan

    tables = torchtitan.weights_mapper_tables()
    assert tables["orig_to_new_substr"][".feed_forward.w1."] == ".mlp.gate_proj."
    assert tables["orig_to_new_prefix"]["output."] == "lm_head."
    assert json.loads(json.dumps(tables)) == tables
    assert "vllm" not in sys.modules
    with pytest.raises(AttributeError):
        torchtitan.TorchTitanMixtralForCausalLM  # noqa: B018 - an architecture it does not build


def test_vllm_plugin_entry_point_is_declared():
    from importlib.metadata import entry_points

    from workflow_scripts import vllm_models

    plugins = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    assert plugins["distillery_torchtitan"].value == "workflow_scripts.vllm_models:register"
    assert plugins["distillery_torchtitan"].load() is vllm_models.register
    assert set(vllm_models.ARCHITECTURES) == {"TorchTitanQwen3ForCausalLM", "TorchTitanLlamaForCausalLM"}


def test_config_json_in_the_checkpoint_folder_with_the_guides_architecture(tmp_path, run_cli):
    """The guide's folder layout: config.json beside the weights, naming TorchTitanQwen3ForCausalLM."""
    spec = TinyTitanSpec("qwen3")
    model = build_titan_model(spec)
    source = save_dcp(titan_state_dict(model, "guide"), tmp_path / "ckpt")
    write_config(spec, source / "config.json", architecture="TorchTitanQwen3ForCausalLM")
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf", "--no-validate-vllm")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "hf/config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]


def test_the_base_models_tokenizer_is_shipped_where_no_tokenizer_is_named(tmp_path, run_cli, tokenizer_folder):
    """A model's `base_model` reaches titan-to-hf as --base-model-name (the workflow passes it where the source
    names no tokenizer)."""
    spec = TinyTitanSpec("qwen3")
    source = save_dcp(titan_state_dict(build_titan_model(spec), "guide"), tmp_path / "step-1")
    config = write_config(spec, tmp_path / "config.json")
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf", "--config", config,
                     "--base-model-name", tokenizer_folder)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "hf/tokenizer.json").is_file()


# Bad input: one line naming the file and the problem, nothing written.


@pytest.fixture
def qwen3_dcp(tmp_path):
    def make(drop: str | None = None, family: str = "qwen3") -> tuple[Path, TinyTitanSpec]:
        spec = TinyTitanSpec(family)
        state = titan_state_dict(build_titan_model(spec), "guide")
        if drop:
            del state[drop]
        return save_dcp(state, tmp_path / f"{family}-ckpt"), spec

    return make


def test_metadata_without_an_expected_key_is_refused(qwen3_dcp, tmp_path, run_cli):
    source, spec = qwen3_dcp(drop="layers.1.feed_forward.w2.weight")
    config = write_config(spec, tmp_path / "config.json")
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf", "--config", config)
    assert result.exit_code == 1
    assert "lacks 1 tensor(s)" in result.stderr and "layers.1.feed_forward.w2.weight" in result.stderr
    assert str(source) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_config_whose_sizes_disagree_with_the_tensors_is_refused(qwen3_dcp, tmp_path, run_cli):
    source, spec = qwen3_dcp()
    config = json.loads(write_config(spec, tmp_path / "config.json").read_text())
    config["intermediate_size"] = 256
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf", "--config",
                     tmp_path / "config.json")  # fmt: skip
    assert result.exit_code == 1
    assert "config sizes disagree with the tensors" in result.stderr
    assert "feed_forward.w1.weight is [128, 64]" in result.stderr and "[256, 64]" in result.stderr
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("how", ["flavor", "config"])
def test_llama_checkpoint_given_as_qwen3_is_said_to_look_like_llama(how, qwen3_dcp, tmp_path, run_cli):
    source, spec = qwen3_dcp(family="llama")
    if how == "flavor":
        flags = ["--flavor", "qwen3:0.6B"]
    else:
        config = json.loads(write_config(spec, tmp_path / "config.json").read_text())
        config.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"])
        (tmp_path / "config.json").write_text(json.dumps(config))
        flags = ["--config", tmp_path / "config.json"]
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf", *flags)
    assert result.exit_code == 1
    assert "no q_norm/k_norm weights: it looks like Llama 3" in result.stderr
    assert not (tmp_path / "hf").exists()


def test_architecture_that_is_not_registered_is_refused(qwen3_dcp, tmp_path, run_cli):
    source, spec = qwen3_dcp()
    write_config(spec, source / "config.json", architecture="TorchTitanQwen3MoeForCausalLM")
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf")
    assert result.exit_code == 1
    assert "'TorchTitanQwen3MoeForCausalLM', which is not registered" in result.stderr
    assert "TorchTitanQwen3ForCausalLM" in result.stderr
    result = run_cli("infer", "--model-path", source, "--engine", "transformers")
    assert result.exit_code == 1 and "not registered" in result.stderr


def test_metadata_pickle_with_foreign_classes_is_not_unpickled(qwen3_dcp, tmp_path, run_cli):
    source, _ = qwen3_dcp()

    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    (source / ".metadata").write_bytes(pickle.dumps(Payload()))
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf", "--flavor", "0.6B")
    assert result.exit_code == 1
    assert "builtins.print, which is not part of DCP metadata" in result.stderr
    assert "this must not run" not in result.stdout


def test_hf_named_checkpoint_is_sent_to_consolidate(tmp_path, run_cli):
    state = {"model.embed_tokens.weight": torch.zeros(4, 2), "model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}
    source = save_dcp(state, tmp_path / "hf-named")
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf", "--flavor", "8B")
    assert result.exit_code == 1 and "use `distillery consolidate`" in result.stderr


def test_tied_config_with_a_different_output_matrix_is_refused(tmp_path, run_cli):
    spec = TinyTitanSpec("qwen3", tie=False)
    source = save_dcp(titan_state_dict(build_titan_model(spec)), tmp_path / "ckpt")
    config = json.loads(write_config(spec, tmp_path / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_cli("titan-to-hf", "--input", source, "--output", tmp_path / "hf", "--config",
                     tmp_path / "config.json")  # fmt: skip
    assert result.exit_code == 1
    assert "ties the word embeddings, but lm_head.weight differs from tok_embeddings.weight" in result.stderr


# verify_model's reference for a TorchTitan source: TorchTitan's own forward.


@pytest.fixture
def converted_llama(tmp_path, run_cli, tokenizer_folder):
    spec = TinyTitanSpec("llama", fuse_qkv=True)
    source = save_dcp(titan_state_dict(build_titan_model(spec, seed=3)), tmp_path / "step-5")
    config = write_config(spec, tmp_path / "config.json")
    output = tmp_path / "hf"
    result = run_cli("titan-to-hf", "--input", source, "--output", output, "--config", config,
                     "--tokenizer", tokenizer_folder, "--dtype", "bfloat16")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return source, output


def test_verify_compares_the_conversion_with_torchtitans_forward(converted_llama, run_cli):
    source, output = converted_llama
    result = run_cli("verify", "--model-path", output, "--reference", source)
    assert result.exit_code == 0, result.stdout
    assert "✓ logits match the reference" in result.stdout and "reference rounded to bfloat16" in result.stdout


def test_verify_catches_a_conversion_without_the_rotary_permutation(converted_llama, run_cli):
    from safetensors.torch import load_file, save_file

    source, output = converted_llama
    weights = load_file(output / "model.safetensors")
    q = TitanCheckpoint(source).tensors["layers.0.attention.qkv_linear.wq.weight"].load()
    weights["model.layers.0.self_attn.q_proj.weight"] = q.to(torch.bfloat16)  # TorchTitan's pair order, unpermuted
    save_file(weights, output / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("verify", "--model-path", output, "--reference", source)
    assert result.exit_code == 1
    assert "✗ logits match the reference" in result.stdout


@pytest.mark.integration
def test_workflow_converts_and_verifies_a_titan_source(tmp_path, tokenizer_folder):
    import subprocess

    import yaml

    spec = TinyTitanSpec("qwen3", tie=True)
    source = save_dcp(titan_state_dict(build_titan_model(spec, seed=4), "guide"), tmp_path / "ckpt/step-20")
    config = write_config(spec, tmp_path / "qwen3-config.json")
    workflow_config = {
        "models": {"tiny-titan-qwen3": {"source": {"format": "titan", "path": str(source), "config": str(config),
                                                   "tokenizer": str(tokenizer_folder)}, "dtype": "bfloat16"}},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(workflow_config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--configfile", str(tmp_path / "config.yaml"), "--cores", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "results/models/tiny-titan-qwen3/verification.json").read_text())
    assert report["passed"], report["failed_checks"]
    numerics = next(c for c in report["checks"] if c["name"] == "numerics")
    assert numerics["status"] == "pass" and numerics["data"]["reference"] == str(source)
    assert (tmp_path / "results/benchmarks/titan_to_hf/tiny-titan-qwen3.tsv").is_file()


def test_fsdp_sharded_checkpoint_is_assembled_from_every_rank(tmp_path, run_cli):
    """A DCP written by 2 ranks, each tensor split by rows as FSDP shards it: chunks from both files are joined."""
    import os
    import subprocess

    from conftest import free_port

    spec = TinyTitanSpec("llama", tie=False)
    model = build_titan_model(spec, seed=5)
    torch.save(titan_state_dict(model, "guide"), tmp_path / "state.pt")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(REPO / "tests/helpers/save_sharded_dcp.py"), str(tmp_path / "state.pt"),
               str(tmp_path / "step-2")]  # fmt: skip
    saved = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "step-2").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    config = write_config(spec, tmp_path / "config.json")
    result = run_cli("titan-to-hf", "--input", tmp_path / "step-2", "--output", tmp_path / "hf", "--config", config,
                     "--no-validate-vllm")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    ours, theirs = hf_logits(tmp_path / "hf", PROBE), titan_logits(model, PROBE)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
