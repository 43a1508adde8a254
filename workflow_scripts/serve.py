"""The server side of the vLLM migration: `distillery serve` (a `vllm serve` from a size preset, prefix caching
always on) and `distillery check-server` (does it answer, with logprobs, with prefix caching).

Presets live in config/vllm-serve-presets.yaml (tensor-parallel size, --max-num-seqs, --max-num-batched-tokens,
GPU memory, context length per model size). `serve` starts vLLM as a child process, waits until it answers,
writes the server's URL to `--url-file` (what a Snakemake service job hands its consumers), and stops vLLM when
it is stopped itself.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .atomic import atomic_write_text
from .errors import DistilleryError

PRESETS_FILE = Path(__file__).resolve().parents[1] / "config" / "vllm-serve-presets.yaml"
PRESET_KEYS = (
    "tensor_parallel_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "max_model_len",
)
# What ICM reads: the top 20 next tokens (the reference's logprobs=20); vLLM's default maximum is 20 too.
MAX_LOGPROBS = 20
# A probe long enough to fill whole KV-cache blocks (16 tokens), so repeating it must hit the prefix cache.
PROBE_PROMPT = (
    "Claim: the sky is blue.\nLabel: True\n\nClaim: water is dry.\nLabel: False\n\nClaim: fire is hot.\nLabel:"
)


def load_presets(path: Path = PRESETS_FILE) -> dict[str, dict]:
    if not Path(path).is_file():
        raise DistilleryError("presets file not found", path, "pass --presets FILE")
    presets = yaml.safe_load(Path(path).read_text()) or {}
    for name, values in presets.items():
        unknown = set(values) - set(PRESET_KEYS)
        if unknown:
            raise DistilleryError(f"preset {name} has unknown keys {sorted(unknown)}", path, f"use {PRESET_KEYS}")
    return {str(name): values for name, values in presets.items()}


@dataclass(frozen=True)
class ServerSettings:
    model: str
    preset: str
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    overrides: dict = field(default_factory=dict)  # preset keys given on the command line
    enforce_eager: bool = False
    seed: int = 0
    extra_args: tuple[str, ...] = ()


def resolved_values(settings: ServerSettings, presets: dict[str, dict]) -> dict:
    if settings.preset not in presets:
        raise DistilleryError(f"unknown preset {settings.preset!r}", hint=f"choose one of {', '.join(presets)}")
    values = dict(presets[settings.preset])
    values.update({key: value for key, value in settings.overrides.items() if value is not None})
    return values


def serve_arguments(settings: ServerSettings, presets: dict[str, dict]) -> list[str]:
    """`vllm serve` arguments for these settings (plain data: tested without vLLM)."""
    if any(arg in ("--no-enable-prefix-caching", "--disable-prefix-caching") for arg in settings.extra_args):
        raise DistilleryError("prefix caching cannot be turned off: ICM's prompts depend on it for speed")
    values = resolved_values(settings, presets)
    arguments = [settings.model, "--host", settings.host, "--port", str(settings.port)]
    for key in PRESET_KEYS:
        if values.get(key) is not None:
            arguments += [f"--{key.replace('_', '-')}", str(values[key])]
    arguments += ["--enable-prefix-caching", "--max-logprobs", str(MAX_LOGPROBS), "--seed", str(settings.seed)]
    if settings.served_model_name:
        arguments += ["--served-model-name", settings.served_model_name]
    if settings.enforce_eager:
        arguments.append("--enforce-eager")
    return arguments + list(settings.extra_args)


def vllm_command(arguments: list[str]) -> list[str]:
    """`vllm serve ...`, or the same through this interpreter where vLLM's script is not on PATH."""
    if shutil.which("vllm"):
        return ["vllm", "serve", *arguments]
    return [sys.executable, "-c", "import sys; from vllm.entrypoints.cli.main import main; sys.exit(main())",
            "serve", *arguments]  # fmt: skip


def require_vllm() -> None:
    """Refuse, in one line, to start a server where vLLM is missing (its child would print a traceback)."""
    if shutil.which("vllm") is None and importlib.util.find_spec("vllm") is None:
        raise DistilleryError(
            f"vLLM is not installed for {sys.executable} (no `vllm` on PATH either)",
            hint='pip install "distillery[vllm]" on a GPU machine, or point the openai engine at a running server',
        )


def run_server(
    settings: ServerSettings, presets: dict[str, dict], url_file: Path | None, start_timeout_s: float
) -> int:
    """Start vLLM, wait until it answers, publish its URL, and stay until vLLM exits or we are told to stop."""
    require_vllm()
    command = vllm_command(serve_arguments(settings, presets))
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}/v1"
    print("$ " + " ".join(command), flush=True)
    process = subprocess.Popen(command)

    def stop(signum, _frame):
        process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_until_healthy(url, process, start_timeout_s)
        print(f"✓ vLLM answers at {url}", flush=True)
        if url_file:
            atomic_write_text(url_file, url + "\n")
        return process.wait()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        if url_file and Path(url_file).exists():
            Path(url_file).unlink()


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    from .engines.openai_engine import server_root
    from .engines.openai_http import http_module

    http = http_module()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DistilleryError(f"vLLM exited with code {process.returncode} before answering; see its log above")
        try:
            if http.get(f"{server_root(url)}/health", timeout=5).status_code == 200:
                return
        except http.TransportError:
            pass
        time.sleep(2)
    raise DistilleryError(f"vLLM did not answer at {url} within {timeout_s:.0f} s", hint="see its log above")


@dataclass
class ServerCheck:
    name: str
    passed: bool | None  # None: could not be decided
    detail: str


def check_server(base_url: str | None, api_key: str | None = None, model: str | None = None) -> list[ServerCheck]:
    """Answers, logprobs present, prefix caching on; each failure worded with what to do."""
    from .engines.openai_engine import resolve_base_url
    from .engines.openai_http import http_module

    http = http_module()
    url = resolve_base_url(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with http.Client(headers=headers, timeout=60) as client:
        call = _server_caller(http, client, url)
        checks, model = _check_models(call, url, model)
        if model is None:
            return checks
        logprobs, answered = _check_logprobs(call, url, model)
        checks.append(logprobs)
        if answered:
            checks.append(_check_prefix_caching(call, url))
    return checks


def _server_caller(http, client, url: str):
    """A request function that turns transport failures and HTTP errors into one-line DistilleryErrors."""
    from .engines.openai_http import connection_diagnostic, http_error_message

    def call(method: str, path: str, body: dict | None = None):
        target = path if path.startswith("http") else f"{url}{path}"
        try:
            response = client.request(method, target, json=body)
        except http.TransportError as exc:
            raise DistilleryError(connection_diagnostic(target, exc)) from None
        if response.status_code >= 400:
            raise DistilleryError(http_error_message(target, response))
        return response

    return call


def _check_models(call, url: str, model: str | None) -> tuple[list[ServerCheck], str | None]:
    """The server lists models, and the one asked for (or its first) among them; None: stop checking."""
    try:
        listing = call("GET", "/models").json()
        names = [entry["id"] for entry in listing.get("data", [])]
    except (DistilleryError, ValueError, KeyError, AttributeError) as exc:
        detail = str(exc) if isinstance(exc, DistilleryError) else f"{url}/models is not an OpenAI model list"
        return [ServerCheck("server answers", False, detail)], None
    if not names:
        return [ServerCheck("server answers", False, f"{url}/models lists no model")], None
    model = model or names[0]
    if model not in names:
        return [ServerCheck("server answers", False, f"model {model!r} is not served; it serves {names}")], None
    return [ServerCheck("server answers", True, f"{url} serves {', '.join(names)}")], model


def _check_logprobs(call, url: str, model: str) -> tuple[ServerCheck, bool]:
    """A completion carries next-token logprobs; asked twice, so the second is served from the prefix cache.
    The flag says whether the server answered (False: the prefix-cache check has nothing to look at)."""
    from .engines.openai_http import completion_choices, decode_json

    body = {"model": model, "prompt": PROBE_PROMPT, "max_tokens": 1, "logprobs": MAX_LOGPROBS, "temperature": 0}
    try:
        choices = completion_choices(f"{url}/completions", decode_json(url, call("POST", "/completions", body)))
        top = (choices[0].get("logprobs") or {}).get("top_logprobs") or [] if choices else []
        count = len(top[-1]) if top and top[-1] else 0
        # A server whose --max-logprobs is below MAX_LOGPROBS refuses the request (400, handled below). An answer
        # may still list fewer entries: top_logprobs is keyed by token text, and tokens that decode to the same
        # text (partial UTF-8 bytes, say) share one entry.
        detail = f"top {count} next-token logprobs"
        if 0 < count < MAX_LOGPROBS:
            detail += f" (of {MAX_LOGPROBS} asked; tokens with the same text share an entry)"
        check = ServerCheck("logprobs present", count > 0, detail if count else "the answer has no logprobs")
        call("POST", "/completions", body)  # the same prompt again: its blocks must now come from the cache
    except DistilleryError as exc:
        return ServerCheck("logprobs present", False, str(exc)), False
    return check, True


def _check_prefix_caching(call, url: str) -> ServerCheck:
    """vLLM's /metrics says prefix caching is on and the repeated probe hit it."""
    from .engines.openai_engine import parse_prefix_cache_metrics, server_root

    try:
        metrics = call("GET", f"{server_root(url)}/metrics").text
    except DistilleryError as exc:
        return ServerCheck("prefix caching on", None, f"no /metrics ({exc}); cannot tell (an external API?)")
    flag = [line for line in metrics.splitlines() if line.startswith("vllm:cache_config_info")]
    counters = parse_prefix_cache_metrics(metrics)
    if flag and 'enable_prefix_caching="False"' in flag[0]:
        return ServerCheck("prefix caching on", False, "vLLM runs without prefix caching: add --enable-prefix-caching")
    if counters and counters["hits"] > 0:
        hits, queries = counters["hits"], counters["queries"]
        rate = f"{hits / queries:.1%} of prompt tokens hit so far" if queries else ""
        return ServerCheck("prefix caching on", True, rate)
    if counters:
        advice = "a repeated prompt did not hit the prefix cache: start vLLM with --enable-prefix-caching"
        return ServerCheck("prefix caching on", False, advice)
    return ServerCheck("prefix caching on", None, "the server's /metrics has no prefix-cache counters")


def api_key_from_environment(name: str | None) -> str | None:
    from .engines.openai_engine import resolve_api_key

    return os.environ.get(name) if name else resolve_api_key(None)
