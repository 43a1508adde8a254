"""The engines' shared behaviour, on the CPU: seeded sampling, stop strings, length caps, vLLM's arguments."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from workflow_scripts.engines import EngineSettings, GenerationRequest, SamplingSettings, open_engine
from workflow_scripts.engines.base import derive_seed, resolve_engine_kind
from workflow_scripts.engines.vllm_engine import vllm_engine_arguments, vllm_sampling_arguments
from workflow_scripts.errors import DistilleryError


@pytest.fixture(scope="module")
def engine(tiny_model_store):
    return open_engine(EngineSettings(kind="transformers", model_path=str(tiny_model_store("llama")), max_num_seqs=4))


def requests(engine, count: int, seed: int = 0) -> list[GenerationRequest]:
    return [
        GenerationRequest(str(i), engine.tokenizer(f"row {i} of the data")["input_ids"], derive_seed(seed, i))
        for i in range(count)
    ]


def test_auto_picks_transformers_without_a_gpu():
    """On any host, GPU and vLLM or not: a fresh process that sees no GPU (CUDA_VISIBLE_DEVICES="")."""
    code = "from workflow_scripts.engines.base import resolve_engine_kind; print(resolve_engine_kind('auto'))"
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "transformers"


def test_auto_asks_the_driver_tools_not_cuda_whether_a_gpu_is_here():
    """`torch.cuda.is_available()` initializes CUDA, and vLLM's forked engine core then dies ("Cannot
    re-initialize CUDA in forked subprocess"): resolving `auto` leaves torch unimported."""
    code = (
        "import sys; from workflow_scripts.engines.base import resolve_engine_kind; resolve_engine_kind('auto'); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_an_unknown_engine_is_named():
    with pytest.raises(DistilleryError, match="unknown engine 'tgi'"):
        resolve_engine_kind("tgi")


def test_a_rows_samples_do_not_depend_on_the_rows_beside_it(engine):
    sampling = SamplingSettings(n=2, max_tokens=8)
    together = {r.request_id: r for r in engine.generate(requests(engine, 6), sampling)}
    alone = next(iter(engine.generate(requests(engine, 6)[4:5], sampling)))
    assert alone == together["4"]
    assert together["4"].completions[0] != together["4"].completions[1]


def test_greedy_sampling_ignores_the_seed(engine):
    sampling = SamplingSettings(temperature=0, max_tokens=6)
    first = [r.completions for r in engine.generate(requests(engine, 2, seed=1), sampling)]
    second = [r.completions for r in engine.generate(requests(engine, 2, seed=2), sampling)]
    assert first == second


def test_per_request_cap_and_length_finish(engine):
    request = GenerationRequest("capped", engine.tokenizer("hello")["input_ids"], 3, max_tokens=3)
    result = next(iter(engine.generate([request], SamplingSettings(max_tokens=10))))
    assert len(result.completions[0].token_ids) == 3
    assert result.completions[0].finish_reason == "length"


def test_stop_string_ends_the_completion_without_it(engine):
    sampling = SamplingSettings(temperature=0, max_tokens=12)
    full = next(iter(engine.generate(requests(engine, 1), sampling))).completions[0].text
    stop = full[3:5]
    cut = next(iter(engine.generate(requests(engine, 1), SamplingSettings(temperature=0, max_tokens=12, stop=(stop,)))))
    assert cut.completions[0].text == full[: full.find(stop)]
    assert cut.completions[0].finish_reason == "stop"


def test_vllm_arguments_carry_the_settings():
    settings = EngineSettings(
        kind="vllm", model_path="/m", tensor_parallel_size=4, max_num_seqs=512, max_model_len=2048,
        max_num_batched_tokens=16384,
    )  # fmt: skip
    arguments = vllm_engine_arguments(settings)
    assert arguments["tensor_parallel_size"] == 4 and arguments["max_num_seqs"] == 512
    assert arguments["max_model_len"] == 2048 and arguments["enable_prefix_caching"] is True
    assert arguments["model"] == "/m" and "tokenizer" not in arguments  # vLLM reads the model's own
    assert "max_model_len" not in vllm_engine_arguments(EngineSettings(model_path="/m"))  # the model's own
    assert "base_url" not in arguments and "max_concurrency" not in arguments  # the openai engine's settings
    tokenizer = vllm_engine_arguments(
        EngineSettings(model_path="/m", tokenizer_path="/t", extra={"quantization": "fp8"})
    )
    assert tokenizer["tokenizer"] == "/t" and tokenizer["quantization"] == "fp8"
    assert arguments["max_num_batched_tokens"] == 16384
    assert "max_num_batched_tokens" not in vllm_engine_arguments(EngineSettings(model_path="/m")), "vLLM's default"
    sampling = vllm_sampling_arguments(SamplingSettings(n=3, max_tokens=100, stop=("\n\n",)), seed=11, max_tokens=40)
    assert sampling == {"n": 3, "temperature": 0.8, "top_p": 0.95, "top_k": -1, "max_tokens": 40, "stop": ["\n\n"],
                        "seed": 11}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "resolves_to", "gpus"),
    [("auto", "vllm", 6), ("auto", "transformers", 0), ("transformers", "transformers", 0), ("vllm", "vllm", 0)],
)
def test_an_auto_engine_configured_with_no_gpus_claims_its_parallel_devices_where_it_becomes_vllm(
    monkeypatch, kind, resolves_to, gpus
):
    """The default config's `gpus: 0` keeps it runnable anywhere; on a GPU machine its engine jobs still hold
    their devices, so two of them never start vLLM on the same GPU. Explicit kinds keep the configured count."""
    from workflow_scripts.kd import engine_job

    monkeypatch.setattr(engine_job, "resolve_engine_kind", lambda _: resolves_to)
    settings = EngineSettings(kind=kind, tensor_parallel_size=3, pipeline_parallel_size=2)
    assert engine_job.auto_engine_gpus(settings) == gpus
