"""What transformers answers about a model's files (a config's values, the weights an architecture expects, a
tokenizer's size and ids) is remembered on disk, so a conversion of a model seen before imports neither
transformers nor its modeling code: many seconds of start-up, more than copying the weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from workflow_scripts.architectures.architecture import expected_weights, load_config
expected = expected_weights(load_config(sys.argv[1]))
print(json.dumps({
    "shapes": {name: list(shape) for name, shape in expected.shapes.items()},
    "tied": expected.tied,
    "architecture": expected.architecture,
    "built_the_model": "transformers.models.llama.modeling_llama" in sys.modules,
}))
"""

CONSOLIDATE = """
import json, sys
from workflow_scripts.cli.main import main
code = main(["consolidate", "--input", sys.argv[1], "--output", sys.argv[2]])
print(json.dumps({"exit_code": code, "imported_transformers": "transformers" in sys.modules}))
"""


def in_fresh_process(code: str, cache: Path, *args: Path) -> dict:
    environment = {**os.environ, "DISTILLERY_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=environment, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def cache_entries(cache: Path, kind: str) -> list[Path]:
    return sorted((cache / kind).glob("*.json"))


def test_a_different_config_is_not_answered_from_another_models_entry(tiny_model_store, tmp_path):
    small = tiny_model_store("llama", "safetensors")
    wider = tmp_path / "wider"
    wider.mkdir()
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] *= 2
    (wider / "config.json").write_text(json.dumps(config))
    in_fresh_process(PROBE, tmp_path / "cache", small)
    answer = in_fresh_process(PROBE, tmp_path / "cache", wider)
    assert answer["built_the_model"] is True
    assert answer["shapes"]["model.embed_tokens.weight"][0] == config["vocab_size"]
    assert len(cache_entries(tmp_path / "cache", "expected-weights")) == 2


def test_a_repeated_conversion_imports_no_transformers_and_writes_the_same_model(tiny_model_store, tmp_path):
    model = tiny_model_store("llama", "safetensors")
    cache = tmp_path / "cache"
    first = in_fresh_process(CONSOLIDATE, cache, model, tmp_path / "first")
    # Another output folder, so another staging folder: the location is not part of any key.
    second = in_fresh_process(CONSOLIDATE, cache, model, tmp_path / "second")
    assert first == {"exit_code": 0, "imported_transformers": True}
    assert second == {"exit_code": 0, "imported_transformers": False}
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    # The source's config and the output's (another dtype key, another folder) share one architecture entry.
    assert len(cache_entries(cache, "expected-weights")) == 1


def test_cached_config_facts_answer_as_the_loaded_config_does(tiny_model_store, tmp_path, monkeypatch):
    from workflow_scripts.architectures.architecture import CONFIG_FACT_KEYS, ConfigFacts, config_facts, load_config

    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model_store("qwen3", "safetensors")
    loaded, computed, cached = load_config(model), config_facts(model), config_facts(model)
    assert isinstance(cached, ConfigFacts) and cached == computed
    assert len(cache_entries(tmp_path / "cache", "config")) == 1
    for key in set(CONFIG_FACT_KEYS) - {"dtype", "torch_dtype"}:
        assert getattr(cached, key) == getattr(loaded, key), key
    assert cached.dtype == str(loaded.dtype)
    with pytest.raises(LookupError, match="rope_theta"):
        _ = cached.rope_theta


def test_an_edited_config_json_is_loaded_again(tiny_model, tmp_path, monkeypatch):
    from workflow_scripts.architectures.architecture import config_facts

    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("llama", "safetensors")
    assert config_facts(model).num_hidden_layers == 2
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    assert config_facts(model).num_hidden_layers == 3


def test_a_config_transformers_refuses_is_refused_every_time(tiny_model, tmp_path, monkeypatch):
    from workflow_scripts.architectures.architecture import config_facts
    from workflow_scripts.errors import DistilleryError

    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("llama", "safetensors")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
    for _ in range(2):
        with pytest.raises(DistilleryError, match="transformers cannot read it"):
            config_facts(model)
    assert not cache_entries(tmp_path / "cache", "config")


def test_a_changed_tokenizer_file_is_loaded_again_and_weights_do_not_count(tiny_model, tmp_path, monkeypatch):
    from workflow_scripts.architectures.tokenizer_facts import tokenizer_facts

    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("llama", "safetensors")
    before = tokenizer_facts(model)
    (model / "model.safetensors").write_bytes(b"weights are not read by a tokenizer")
    (model / "provenance.json").write_text("{}")
    assert tokenizer_facts(model) == before
    assert len(cache_entries(tmp_path / "cache", "tokenizer")) == 1
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "pad_token": "<unk>"}))
    tokenizer_facts(model)
    assert len(cache_entries(tmp_path / "cache", "tokenizer")) == 2


def test_an_unwritable_cache_folder_only_costs_the_build(tiny_model_store, tmp_path, monkeypatch):
    from workflow_scripts.architectures import architecture

    model = tiny_model_store("llama", "safetensors")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(blocked))
    architecture._expected_weights_of.cache_clear()
    expected = architecture.expected_weights(architecture.config_facts(model))
    assert "model.layers.0.self_attn.q_proj.weight" in expected.shapes
