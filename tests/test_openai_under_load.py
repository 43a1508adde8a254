"""The OpenAI engine against a server that misbehaves (tests/helpers/flaky_server.py): drops, 500s, 429s, bytes
that are not HTTP, bodies that are not completions; and with httpx2 present but unable to send."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from workflow_scripts.engines import EngineSettings, GenerationRequest, SamplingSettings
from workflow_scripts.engines.openai_engine import OpenAIEngine
from workflow_scripts.errors import DistilleryError

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))
from flaky_server import FlakyServer, expected_choice  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "config" / "icm" / "tiny-claims.jsonl"
NOT_JSON = (200, "application/json", b"<html>502 Bad Gateway</html>")
NO_CHOICES = (200, "application/json", b'{"object": "text_completion", "usage": {}}')
BUSY = (503, "application/json", b'{"error": {"message": "busy"}}')
# 20,000 by default: 49 s of CPU time (client and server share one interpreter), 170 s of wall time on a 2-core
# machine shared with other work. DISTILLERY_LOAD_REQUESTS sends fewer where that is too long.
LOAD_REQUESTS = int(os.environ.get("DISTILLERY_LOAD_REQUESTS", 20_000))


@pytest.fixture
def flaky():
    with FlakyServer() as server:
        yield server


def engine_for(url: str, **settings) -> OpenAIEngine:
    return OpenAIEngine(EngineSettings(kind="openai", base_url=url, retry_base_delay_s=0.001, **settings))


def test_20000_requests_to_a_flaky_server_each_give_their_result_exactly_once(flaky):
    """10,000 generations (KD: one request per prompt) and 10,000 scorings sent one prompt per request (ICM as it
    failed on the H200), while 5% of the requests are dropped, refused with 500 or 429, or answered with garbage."""
    half = LOAD_REQUESTS // 2
    engine = engine_for(flaky.url, max_concurrency=32, prompts_per_request=1)
    try:
        prompts = {str(i): [i, i % 7, 3] for i in range(half)}
        requests = (GenerationRequest(rid, prompt, seed=int(rid)) for rid, prompt in prompts.items())
        results = list(engine.generate(requests, SamplingSettings(max_tokens=2)))
        scoring = [[i, 1] for i in range(half)]
        candidates = engine.next_token_logprobs(scoring, top_k=2)
    finally:
        engine.close()
    assert Counter(result.request_id for result in results) == Counter(list(prompts))  # every id, once
    for result in results:
        assert result.completions[0].token_ids == expected_choice(prompts[result.request_id])["token_ids"]
    assert [best[0].text for best in candidates] == [f"s{sum(prompt)}" for prompt in scoring]
    assert set(flaky.faults_served) == {"drop", "500", "429", "garbage", "truncated"}
    assert sum(flaky.faults_served.values()) >= LOAD_REQUESTS * 0.045


def test_after_the_last_retry_one_line_names_the_url_and_the_error():
    with FlakyServer(faults=False, completions_reply=BUSY) as server:
        engine = engine_for(server.url, max_retries=2)
        try:
            with pytest.raises(DistilleryError) as raised:
                list(engine.generate([GenerationRequest("a", [1, 2], 0)], SamplingSettings(max_tokens=1)))
        finally:
            engine.close()
    assert str(raised.value) == f"{server.url}/completions: 503: busy (after 2 retries)"
    assert server.arrivals == 1 + 3  # /models, then the request and its two retries


def test_a_request_without_an_answer_in_time_is_sent_again():
    with FlakyServer(faults=False, stall_first=1) as server:
        engine = engine_for(server.url, request_timeout_s=0.5)
        try:
            results = list(engine.generate([GenerationRequest("a", [1, 2], 0)], SamplingSettings(max_tokens=1)))
        finally:
            engine.close()
    assert results[0].completions[0].token_ids == expected_choice([1, 2])["token_ids"]
    assert server.arrivals == 1 + 2 and server.stalls_left == 0  # /models, the stalled request, its retry


@pytest.mark.parametrize("reply", [NOT_JSON, NO_CHOICES], ids=["not-json", "no-choices"])
def test_a_200_that_is_not_a_completions_body_is_one_error_for_generation_and_scoring(reply):
    with FlakyServer(faults=False, completions_reply=reply) as server:
        engine = engine_for(server.url)
        try:
            with pytest.raises(DistilleryError, match=r"/v1/completions: .*OpenAI-compatible API"):
                list(engine.generate([GenerationRequest("a", [1, 2], 0)], SamplingSettings(max_tokens=1)))
            with pytest.raises(DistilleryError, match=r"/v1/completions: .*OpenAI-compatible API"):
                engine.next_token_logprobs([[1, 2]], top_k=2)
        finally:
            engine.close()


@pytest.mark.parametrize("reply", [NOT_JSON, NO_CHOICES], ids=["not-json", "no-choices"])
def test_check_server_reports_a_200_that_is_not_a_completions_body(reply, run_cli):
    with FlakyServer(faults=False, completions_reply=reply) as server:
        result = run_cli("check-server", "--base-url", server.url)
    assert result.exit_code == 1
    assert "✓ server answers" in result.stdout
    assert "✗ logprobs present: " in result.stdout and "OpenAI-compatible API" in result.stdout


def test_icm_and_generate_on_a_server_without_completions_fail_in_one_line(run_cli, tiny_model_store, tmp_path):
    from workflow_scripts.architectures.tiny import build_tiny_icm_model
    from workflow_scripts.kd.tiny_dataset import write_tiny_dataset

    model = build_tiny_icm_model(tmp_path / "icm-model")
    write_tiny_dataset(tmp_path / "data", files=1, rows=4, row_group_rows=4)
    with FlakyServer(faults=False, completions_reply=NOT_JSON) as server:
        icm = run_cli("icm", "--data", CLAIMS, "--engine", "openai", "--base-url", server.url, "--tokenizer", model,
                      "--K", "2", "--batch-size", "6", "--output-dir", tmp_path / "icm")  # fmt: skip
        generate = run_cli("generate", "--engine", "openai", "--base-url", server.url, "--model-path", model,
                           "--dataset", tmp_path / "data", "--output-dir", tmp_path / "kd")  # fmt: skip
    for result, command in ((icm, "icm"), (generate, "generate")):
        assert result.exit_code == 1 and "Traceback" not in result.stderr
        errors = [line for line in result.stderr.split("\n") if "error:" in line]  # not the progress bar's
        assert len(errors) == 1, result.stderr
        assert f"distillery {command}: error: {server.url}/completions: " in errors[0]


def test_httpx2_without_httpcore2_falls_back_to_httpx(flaky):
    """`import httpx2` works without httpcore2; its first request does not: the engine then sends with httpx."""
    script = textwrap.dedent(f"""
        import logging, sys
        sys.modules["httpcore2"] = None  # httpx2 imports, its transport cannot
        import httpx2
        from workflow_scripts.engines import EngineSettings, GenerationRequest, SamplingSettings
        from workflow_scripts.engines.openai_engine import OpenAIEngine
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        engine = OpenAIEngine(EngineSettings(kind="openai", base_url={flaky.url!r}, retry_base_delay_s=0.001))
        requests = [GenerationRequest(str(i), [i, 2], i) for i in range(50)]
        results = list(engine.generate(requests, SamplingSettings(max_tokens=1)))
        print(len({{result.request_id for result in results}}), engine.versions()["client"])
        engine.close()
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:2] == ["50", "httpx"]
    assert "httpx2 cannot send requests" in run.stderr
    assert "engine openai: HTTP client httpx " in run.stderr


REQUEST_SETTINGS = {"max_concurrency": "--max-concurrency", "max_retries": "--max-retries",
                    "request_timeout_s": "--request-timeout"}  # fmt: skip


def schema_defaults(node, key: str) -> list:
    """Every default the config schema gives `key`, wherever it is defined."""
    found = []
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key and isinstance(value, dict) and "default" in value:
                found.append(value["default"])
            found += schema_defaults(value, key)
    elif isinstance(node, list):
        for value in node:
            found += schema_defaults(value, key)
    return found


def test_requests_in_flight_timeout_and_retries_have_one_default_everywhere():
    import yaml

    from workflow_scripts.cli import build_parser
    from workflow_scripts.setting import from_args

    schema = yaml.safe_load((REPO / "config/schema/config.schema.yaml").read_text())
    parser = build_parser()
    icm = parser.parse_args(["icm", "--data", "d.json", "--output-dir", "out"])
    generate = parser.parse_args(["generate", "--output-dir", "out"])
    for key, flag in REQUEST_SETTINGS.items():
        default = getattr(EngineSettings, key)
        assert schema_defaults(schema, key) == [default, default], key  # kd engine, icm server
        commands = (from_args(EngineSettings, icm), from_args(EngineSettings, generate))  # what the commands get
        assert [getattr(settings, key) for settings in commands] == [default, default], flag


def test_the_workflow_passes_request_settings_to_kd_and_icm_jobs():
    import yaml
    from snakemake.utils import validate

    from workflow_scripts.workflow import icm_jobs
    from workflow_scripts.workflow.kd_jobs import wire_kd_jobs

    chosen = {"max_concurrency": 8, "max_retries": 9, "request_timeout_s": 30}
    expected = [f"{REQUEST_SETTINGS[key]} {value}" for key, value in chosen.items()]
    config = yaml.safe_load((REPO / "config/examples/kd-llama3.1-1b.yaml").read_text())
    job = next(iter(config["kd"].values()))
    job["model"], job["tokenizer"], job["dataset"]["path"] = "/models/m", "/models/m", "/data/d"
    job.setdefault("engine", {}).update(kind="openai", base_url="http://gpu:8000/v1", **chosen)
    validate(config, str(REPO / "config/schema/config.schema.yaml"))
    kd_flags = next(iter(wire_kd_jobs(config["kd"], {}, {}).values())).flags
    icm_flags = icm_jobs.icm_flags({"model": "m", "data": {"path": "d"}, "engine": "openai", "server": chosen})
    for pair in expected:
        assert pair in kd_flags and pair in icm_flags, pair


def test_the_load_benchmark_core_checks_every_result_against_the_stub_server(flaky):
    """benchmarks/openai_load.py's measurement (the GPU run's core) on the CPU: the engine completes every
    request through the faults, the plain loop without retries counts its failures."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import openai_load

    rows = openai_load.measure(flaky.url, "stub-model", requests=400, concurrency=16, max_tokens=2)
    for client in ("httpx2", "httpx"):
        engine, plain = rows[f"distillery openai engine ({client})"], rows[f"plain client loop ({client}, anchor)"]
        assert engine["client"].startswith(client) and plain["client"] == client
        assert engine["every_result_once"] and engine["requests"] == 400 and engine["retries"] > 0
        assert not plain["every_result_once"] and plain["failed"] > 0
