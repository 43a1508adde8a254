"""The expected weights of an architecture are remembered on disk, so a conversion of a model seen before does not
import transformers' modeling code (seconds of start-up: torch._dynamo, generation) to build it on the meta device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def expected_in_fresh_process(model: Path, cache: Path) -> dict:
    environment = {**os.environ, "DISTILLERY_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(model)], capture_output=True, text=True, env=environment, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_process_takes_expected_weights_from_the_cache_without_building_the_model(tiny_model_store, tmp_path):
    model = tiny_model_store("llama", "safetensors")
    first = expected_in_fresh_process(model, tmp_path / "cache")
    second = expected_in_fresh_process(model, tmp_path / "cache")
    assert first.pop("built_the_model") is True
    assert second.pop("built_the_model") is False
    assert second == first
    assert "model.layers.0.self_attn.q_proj.weight" in first["shapes"]


def test_a_different_config_is_not_answered_from_another_models_entry(tiny_model_store, tmp_path):
    small = tiny_model_store("llama", "safetensors")
    wider = tmp_path / "wider"
    wider.mkdir()
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] *= 2
    (wider / "config.json").write_text(json.dumps(config))
    expected_in_fresh_process(small, tmp_path / "cache")
    answer = expected_in_fresh_process(wider, tmp_path / "cache")
    assert answer["built_the_model"] is True
    assert answer["shapes"]["model.embed_tokens.weight"][0] == config["vocab_size"]
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2


def test_an_unwritable_cache_folder_only_costs_the_build(tiny_model_store, tmp_path, monkeypatch):
    from workflow_scripts.architectures import architecture

    model = tiny_model_store("llama", "safetensors")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(blocked))
    architecture._expected_weights_of.cache_clear()
    expected = architecture.expected_weights(architecture.load_config(model))
    assert "model.layers.0.self_attn.q_proj.weight" in expected.shapes
