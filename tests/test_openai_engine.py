"""The OpenAI-compatible client against responses recorded from a real `vllm serve` (vLLM 0.26.0), replayed locally."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from workflow_scripts.engines import EngineSettings, GenerationRequest, SamplingSettings
from workflow_scripts.engines.openai_engine import (
    OpenAIEngine,
    is_self_hosted,
    resolve_api_key,
    resolve_base_url,
    top_logprobs_of_last_position,
)
from workflow_scripts.errors import DistilleryError

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from conftest import free_port  # noqa: E402
from replay_server import ReplayServer, load_exchanges  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = FIXTURES / "vllm-0.26.0-openai-api.jsonl"
CLIENT = FIXTURES / "vllm-0.26.0-distillery-client.jsonl"  # written by benchmarks/record_openai_fixtures.py


@pytest.fixture
def replay():
    with ReplayServer(load_exchanges(SHARED)) as server:
        yield server


def recorded(path: str, predicate=lambda exchange: True) -> dict:
    return next(e for e in load_exchanges(SHARED) if e["path"] == path and predicate(e))


def engine_for(url: str, **settings) -> OpenAIEngine:
    return OpenAIEngine(EngineSettings(kind="openai", base_url=url, retry_base_delay_s=0.01, **settings))


def test_the_served_model_is_read_from_v1_models(replay):
    engine = engine_for(replay.url)
    try:
        assert engine.model == "tiny-llama"
        assert engine.base_url == f"{replay.url}/v1"
    finally:
        engine.close()


def test_batched_echo_response_gives_each_prompts_next_token_candidates(replay):
    exchange = recorded(
        "/v1/completions", lambda e: isinstance(e["request"]["prompt"], list) and e["request"].get("echo")
    )
    engine = engine_for(replay.url)
    try:
        reply = engine.request("POST", "/completions", exchange["request"])
    finally:
        engine.close()
    assert len(replay.received) == 2  # /models, then the whole batch in one request
    choices = sorted(reply["choices"], key=lambda choice: choice["index"])
    assert len(choices) == len(exchange["request"]["prompt"])
    for choice in choices:
        candidates = top_logprobs_of_last_position(choice)
        expected = choice["logprobs"]["top_logprobs"][-1]
        assert len(candidates) == exchange["request"]["logprobs"]
        assert {c.text: c.logprob for c in candidates} == expected
        assert [c.logprob for c in candidates] == sorted(expected.values(), reverse=True)


@pytest.mark.parametrize(
    ("body_filter", "message"),
    [
        (lambda e: e["request"].get("logprobs") == 25, "greater than max allowed: 20"),
        (lambda e: e["request"].get("model") == "no-such-model", "does not exist"),
        (lambda e: e["request"].get("max_tokens") == -1, "max_tokens must be at least 1"),
    ],
)
def test_vllm_errors_are_reported_in_its_own_words(replay, body_filter, message):
    exchange = recorded("/v1/completions", body_filter)
    engine = engine_for(replay.url)
    try:
        with pytest.raises(DistilleryError, match=message) as raised:
            engine.request("POST", "/completions", exchange["request"])
    finally:
        engine.close()
    assert f"{replay.url}/v1/completions: {exchange['status']}" in str(raised.value)


def test_refused_connection_says_to_start_or_check_the_server():
    with pytest.raises(DistilleryError, match="cannot connect to .*distillery serve"):
        engine_for(f"http://127.0.0.1:{free_port()}/v1", max_retries=0)


def test_wrong_url_is_told_apart_from_an_api_error(replay):
    with pytest.raises(DistilleryError, match="no OpenAI-compatible API here; check the base URL"):
        engine_for(f"{replay.url}/api", max_retries=0)


def test_429_and_503_from_an_external_api_are_retried_with_backoff(replay):
    replay.fail_next(429, headers={"retry-after": "0"})
    replay.fail_next(503)
    engine = engine_for(replay.url, max_retries=2, self_hosted=False)
    try:
        assert engine.model == "tiny-llama"
    finally:
        engine.close()
    assert len(replay.received) == 3


def test_retries_give_up_after_max_retries(replay):
    replay.fail_next(503, count=3)
    with pytest.raises(DistilleryError, match="503"):
        engine_for(replay.url, max_retries=2, self_hosted=False)
    assert len(replay.received) == 3


def test_a_self_hosted_server_is_retried_too(replay):
    # A busy `vllm serve` drops a connection or answers 503 now and then: sending again is the right answer.
    replay.fail_next(503, count=2)
    engine = engine_for(replay.url, max_retries=5)
    try:
        assert engine.model == "tiny-llama"
    finally:
        engine.close()
    assert len(replay.received) == 3


def test_a_refused_first_connection_is_reported_at_once_not_retried():
    started = time.monotonic()
    with pytest.raises(DistilleryError, match="cannot connect to"):
        OpenAIEngine(EngineSettings(kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=5))
    assert time.monotonic() - started < 5  # the backoff of 5 retries would take 31 s


def test_rate_limit_applies_only_to_external_apis(replay):
    limited = engine_for(replay.url, self_hosted=False, requests_per_minute=600, served_model_name="tiny-llama")
    unlimited = engine_for(replay.url, requests_per_minute=600, served_model_name="tiny-llama")
    try:
        assert unlimited.self_hosted and unlimited.session.limiter.interval == 0
        started = time.monotonic()
        for _ in range(4):
            limited.request("GET", "/models")
        assert time.monotonic() - started >= 0.3  # 600 per minute: 0.1 s apart
    finally:
        limited.close()
        unlimited.close()


@pytest.mark.parametrize(
    ("url", "self_hosted"),
    [
        ("http://localhost:8000/v1", True),
        ("http://127.0.0.1:8000/v1", True),
        ("http://10.1.2.3:8000/v1", True),
        ("http://gpu-node-7:8000/v1", True),
        ("http://node7.cluster.internal:8000/v1", True),
        ("https://api.hyperbolic.xyz/v1", False),
        ("https://api.openai.com/v1", False),
    ],
)
def test_self_hosted_servers_are_recognised_from_the_url(url, self_hosted):
    assert is_self_hosted(url) is self_hosted


def test_url_and_key_come_from_the_environment_as_the_guide_names_them(monkeypatch):
    for name in ("OPENAI_BASE_URL", "VLLM_BASE_URL", "OPENAI_API_KEY", "API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistilleryError, match="no server URL"):
        resolve_base_url(None)
    monkeypatch.setenv("VLLM_BASE_URL", "http://localhost:8000")
    assert resolve_base_url(None) == "http://localhost:8000/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gpu:9000/v1/")
    assert resolve_base_url(None) == "http://gpu:9000/v1"
    monkeypatch.setenv("API_KEY", "None")  # the guide's SECRETS for a keyless server
    assert resolve_api_key(None) is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert resolve_api_key(None) == "sk-test"


def test_prefix_cache_counters_come_from_vllm_metrics(replay):
    engine = engine_for(replay.url)
    try:
        assert engine.prefix_cache_counters() == {"queries": 5321.0, "hits": 4928.0}
    finally:
        engine.close()


def test_check_server_passes_a_vllm_with_logprobs_and_prefix_caching(replay, run_cli):
    result = run_cli("check-server", "--base-url", replay.url)
    assert result.exit_code == 0, result.stdout
    assert "✓ server answers" in result.stdout
    assert "✓ logprobs present: top 20" in result.stdout
    assert "✓ prefix caching on: 92.6%" in result.stdout


def test_check_server_diagnoses_a_refused_connection(run_cli):
    result = run_cli("check-server", "--base-url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    assert "✗ server answers: cannot connect" in result.stdout


def test_check_server_diagnoses_a_wrong_url(replay, run_cli):
    result = run_cli("check-server", "--base-url", f"{replay.url}/wrong/v1")
    assert result.exit_code == 1
    assert "no OpenAI-compatible API here" in result.stdout


# --- the client's own requests, recorded from vllm serve by benchmarks/record_openai_fixtures.py ---

needs_client_fixtures = pytest.mark.skipif(
    not CLIENT.exists(), reason=f"{CLIENT.name} not recorded yet: run benchmarks/record_openai_fixtures.py on a GPU"
)


@needs_client_fixtures
def test_scoring_batch_is_one_request_and_replays_the_recorded_candidates():
    exchanges = load_exchanges(CLIENT)
    scoring = [
        e
        for e in exchanges
        if e["path"] == "/v1/completions"
        and e["request"].get("max_tokens") == 1
        and e["status"] == 200
        and isinstance(e["request"]["prompt"], list)  # ICM's batches, not check-server's one text probe
    ]
    assert scoring
    with ReplayServer(exchanges) as server:
        engine = engine_for(server.url, served_model_name=scoring[0]["request"]["model"])
        try:
            for exchange in scoring:
                before = len(server.received)
                results = engine.next_token_logprobs(exchange["request"]["prompt"], exchange["request"]["logprobs"])
                assert len(server.received) == before + 1
                assert len(results) == len(exchange["request"]["prompt"])
                for result, choice in zip(
                    results, sorted(exchange["response"]["choices"], key=lambda c: c["index"]), strict=True
                ):
                    assert {c.text: c.logprob for c in result} == choice["logprobs"]["top_logprobs"][-1]
        finally:
            engine.close()


@needs_client_fixtures
def test_generate_replays_the_recorded_completions():
    exchanges = load_exchanges(CLIENT)
    sampling_exchanges = [e for e in exchanges if e["path"] == "/v1/completions" and "seed" in e["request"]]
    assert sampling_exchanges
    with ReplayServer(exchanges) as server:
        engine = engine_for(server.url, served_model_name=sampling_exchanges[0]["request"]["model"])
        try:
            for exchange in sampling_exchanges:
                body = exchange["request"]
                sampling = SamplingSettings(
                    n=body["n"], temperature=body["temperature"], top_p=body["top_p"], top_k=body.get("top_k", -1),
                    max_tokens=body["max_tokens"], stop=tuple(body.get("stop", ())),
                    return_token_ids=body.get("return_token_ids", False),
                )  # fmt: skip
                [result] = engine.generate([GenerationRequest("r", body["prompt"], body["seed"])], sampling)
                choices = sorted(exchange["response"]["choices"], key=lambda c: c["index"])
                assert [c.text for c in result.completions] == [c["text"] for c in choices]
                assert all(c.finish_reason in ("stop", "length") for c in result.completions)
        finally:
            engine.close()


def test_fixture_files_name_the_vllm_version_and_the_requests():
    for path in FIXTURES.glob("vllm-*.jsonl"):
        assert path.name.startswith("vllm-0.")
        for exchange in load_exchanges(path):
            assert {"method", "path", "request", "status", "response"} <= set(exchange)
            json.dumps(exchange["request"])
