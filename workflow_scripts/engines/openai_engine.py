"""An async client of any OpenAI-compatible completions server: a `vllm serve` (self-hosted) or an external API.

Both engine methods go through `/v1/completions` with token-id prompts (vLLM accepts them; so do most
OpenAI-compatible servers of base models):
- `generate`: one request per prompt, at most `max_concurrency` in flight, results yielded as they finish;
- `next_token_logprobs`: all prompts of a batch in ONE request (`prompt` is a list, `max_tokens=1`, `logprobs=k`),
  so the server schedules them together and its prefix cache shares their common demonstrations. External
  APIs get the batch in requests of `prompts_per_request` prompts instead, sent concurrently.

The HTTP exchanges (the client library, requests in flight, timeouts, retries with backoff) are
`openai_http.HttpSession`'s. For external APIs only: a rate limit (`requests_per_minute`); a self-hosted server
(localhost, a private address, a cluster node name, or `self_hosted: true`) is not throttled. The base URL and
key come from the settings, else from OPENAI_BASE_URL / OPENAI_API_KEY, else from the migration guide's
VLLM_BASE_URL / API_KEY.
The request and response bodies are OpenAI's completions API as vLLM implements it (see tests/fixtures/).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from ..errors import DistilleryError
from .base import Completion, EngineSettings, GenerationRequest, GenerationResult, SamplingSettings, TokenLogprob
from .openai_http import HttpSession, client_version, completion_choices, decode_json

log = logging.getLogger(__name__)

BASE_URL_VARIABLES = ("OPENAI_BASE_URL", "VLLM_BASE_URL")
API_KEY_VARIABLES = ("OPENAI_API_KEY", "API_KEY")
EXTERNAL_PROMPTS_PER_REQUEST = 20


def resolve_base_url(configured: str | None) -> str:
    """The API root ending in /v1: `http://host:8000` (the guide's VLLM_BASE_URL) becomes `http://host:8000/v1`."""
    url = configured or next((os.environ[name] for name in BASE_URL_VARIABLES if os.environ.get(name)), None)
    if not url:
        raise DistilleryError(
            "no server URL for engine 'openai'",
            hint="set base_url in the config or OPENAI_BASE_URL (e.g. http://localhost:8000/v1)",
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DistilleryError(f"server URL {url!r} is not an http(s) URL", hint="e.g. http://localhost:8000/v1")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def resolve_api_key(configured: str | None) -> str | None:
    if configured:
        return configured
    for name in API_KEY_VARIABLES:
        value = os.environ.get(name)
        if value and value != "None":  # the guide's SECRETS file writes API_KEY=None for keyless servers
            return value
    return None


def is_self_hosted(base_url: str) -> bool:
    """Loopback, private and link-local addresses, and single-label or .local/.internal host names."""
    host = urlsplit(base_url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith((".local", ".internal", ".localdomain"))
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def server_root(base_url: str) -> str:
    """Where vLLM serves /metrics, /health and /version: the base URL without /v1."""
    return base_url.removesuffix("/v1")


def top_logprobs_of_last_position(choice: dict) -> list[TokenLogprob]:
    """The next-token candidates of a completions choice, best first. With `echo` the list also covers the
    prompt's positions; the generated token's is the last."""
    logprobs = choice.get("logprobs") or {}
    positions = logprobs.get("top_logprobs") or []
    if not positions or positions[-1] is None:
        raise DistilleryError(
            "the server returned no logprobs",
            hint="use a server that returns top logprobs (vLLM: raise --max-logprobs if needed)",
        )
    ranked = sorted(positions[-1].items(), key=lambda item: -item[1])
    return [TokenLogprob(None, text, float(value)) for text, value in ranked]


def parse_prefix_cache_metrics(text: str) -> dict[str, float] | None:
    """vLLM's prefix-cache counters from its Prometheus /metrics text, summed over engines."""
    totals = {"queries": 0.0, "hits": 0.0}
    found = False
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key in totals:
            if name == f"vllm:prefix_cache_{key}_total":
                totals[key] += float(line.rsplit(" ", 1)[-1])
                found = True
    return totals if found else None


class OpenAIEngine:
    kind = "openai"

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.base_url = resolve_base_url(settings.base_url)
        self.api_key = resolve_api_key(settings.api_key)
        self.self_hosted = settings.self_hosted if settings.self_hosted is not None else is_self_hosted(self.base_url)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-engine", daemon=True)
        self._thread.start()
        # Rate limits are for external APIs: a self-hosted vLLM does not throttle.
        self.session = self._call(self._open_session(headers))
        self.model = settings.served_model_name or self._served_model()
        self._tokenizer = None

    # --- plumbing: one event loop in a thread, so the sync engine interface can stream async results ---

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _open_session(self, headers: dict[str, str]) -> HttpSession:
        return HttpSession(self.settings, headers, throttle=not self.self_hosted)

    @property
    def requests_sent(self) -> int:
        return self.session.requests_sent

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        """Cancel what is still in flight (requests of a generation that failed or was abandoned), then close."""
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.session.aclose()

    async def _request(self, method: str, path: str, body: dict | None = None):
        """One HTTP exchange (retried by the session); returns the decoded JSON, or the text of a non-JSON answer
        (/metrics)."""
        url = f"{self.base_url}{path}" if path.startswith("/") and not path.startswith("//") else path
        response = await self.session.send(method, url, body)
        if "json" in response.headers.get("content-type", ""):
            return decode_json(url, response)
        return response.text

    def request(self, method: str, path: str, body: dict | None = None):
        """A blocking exchange with the server (path relative to the base URL, or a full URL)."""
        return self._call(self._request(method, path, body))

    def _served_model(self) -> str:
        if self.settings.model_path and not os.path.isdir(self.settings.model_path):
            return self.settings.model_path
        listing = self.request("GET", "/models")
        models = [entry.get("id") for entry in (listing or {}).get("data", [])] if isinstance(listing, dict) else []
        if not models:
            raise DistilleryError(f"{self.base_url}/models lists no model", hint="set served_model_name")
        return models[0]

    # --- the engine interface ---

    def versions(self) -> dict[str, str]:
        server = "unknown"
        try:
            reply = self.request("GET", f"{server_root(self.base_url)}/version")
            if isinstance(reply, dict) and reply.get("version"):
                server = f"vllm {reply['version']}"
        except DistilleryError:
            pass  # not a vLLM server, or one without /version
        client = client_version(self.session.http) if self.session.http else "none chosen yet"
        return {"client": client, "server": server}

    def completions_body(self, prompt, sampling: SamplingSettings, seed: int | None) -> dict:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": sampling.n,
        }
        if seed is not None:
            body["seed"] = seed
        if sampling.top_k and sampling.top_k > 0:
            body["top_k"] = sampling.top_k  # vLLM's extra parameter
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.return_token_ids:
            body["return_token_ids"] = True  # vLLM's extra parameter: the choice's token ids
        return body

    def generate(self, requests: Iterable[GenerationRequest], sampling: SamplingSettings) -> Iterator[GenerationResult]:
        finished: queue.Queue = queue.Queue()
        in_flight = 0
        window = 2 * max(1, self.settings.max_concurrency)

        def submit(request: GenerationRequest) -> None:
            future = asyncio.run_coroutine_threadsafe(self._generate_one(request, sampling), self._loop)
            future.add_done_callback(finished.put)

        def take() -> GenerationResult:
            return finished.get().result()  # raises the request's error, if it failed

        for request in requests:
            submit(request)
            in_flight += 1
            while in_flight >= window:
                in_flight -= 1
                yield take()
        while in_flight:
            in_flight -= 1
            yield take()

    async def _generate_one(self, request: GenerationRequest, sampling: SamplingSettings) -> GenerationResult:
        body = self.completions_body(request.prompt_token_ids, sampling, request.seed % (2**63))
        reply = await self._request("POST", "/completions", body)
        completions = []
        for choice in completion_choices(f"{self.base_url}/completions", reply):
            token_ids = choice.get("token_ids")
            if token_ids is None:
                token_ids = self._encode(choice.get("text") or "")
            reason = "length" if choice.get("finish_reason") == "length" else "stop"
            completions.append(Completion(choice.get("text") or "", list(token_ids), reason))
        return GenerationResult(request.request_id, completions)

    def _encode(self, text: str) -> list[int]:
        """Token ids of a completion's text, where the server does not return them (needs a local tokenizer)."""
        if not self.settings.tokenizer or not os.path.isdir(self.settings.tokenizer):
            return []
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                self.settings.tokenizer, trust_remote_code=self.settings.trust_remote_code
            )
        return self._tokenizer.encode(text, add_special_tokens=False)

    def scoring_bodies(self, prompts: list[list[int]], top_k: int) -> list[dict]:
        """The request bodies for one scoring batch: one for a self-hosted server, several for external APIs."""
        per_request = self.settings.prompts_per_request or (
            len(prompts) if self.self_hosted else EXTERNAL_PROMPTS_PER_REQUEST
        )
        per_request = max(1, per_request)
        return [
            {
                "model": self.model,
                "prompt": prompts[start : start + per_request],
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": top_k,
            }
            for start in range(0, len(prompts), per_request)
        ]

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int) -> list[list[TokenLogprob]]:
        async def send_all():
            bodies = self.scoring_bodies(prompts, top_k)
            return await asyncio.gather(*(self._request("POST", "/completions", body) for body in bodies))

        results = []
        for reply in self._call(send_all()):
            for choice in completion_choices(f"{self.base_url}/completions", reply):
                results.append(top_logprobs_of_last_position(choice))
        if len(results) != len(prompts):
            raise DistilleryError(f"{self.base_url}: {len(results)} choices for {len(prompts)} prompts")
        return results

    def prefix_cache_counters(self) -> dict[str, float] | None:
        """The server's prefix-cache counters from its /metrics (None for servers without them)."""
        if not self.self_hosted:
            return None
        try:
            text = self.request("GET", f"{server_root(self.base_url)}/metrics")
        except DistilleryError:
            return None
        return parse_prefix_cache_metrics(text) if isinstance(text, str) else None
