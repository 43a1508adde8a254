"""The HTTP side of the OpenAI engine: which client library, and exchanges that survive a server under load.

Two client libraries share one API: httpx2 (what huggingface_hub installs) and httpx. The one used is the first
whose request path works, not the first that imports: `import httpx2` succeeds without its transport library
httpcore2, which it imports only when it builds a transport and sends. So the engine's first request is sent
with httpx2 and, if that raises ImportError, sent again with httpx; the choice is logged.

`HttpSession` holds at most `max_concurrency` requests in flight, gives each `request_timeout_s` (connecting:
CONNECT_TIMEOUT_S), and retries connection errors (refused, reset, dropped, an answer that is not HTTP), timeouts,
429 and 5xx with exponential backoff (honouring Retry-After) up to `max_retries` times, for every server: a busy
`vllm serve` drops a keep-alive connection now and then (ReadError after about 2,000 requests on an H200), and
sending again is then the right answer. A refused connection on the very first request is reported at once (no
server listens there), and after the last retry one line names the URL and the error. The rate limit
(`requests_per_minute`) applies only where the engine asks for it: external APIs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from importlib import metadata

from ..errors import DistilleryError
from .base import EngineSettings

log = logging.getLogger(__name__)

CLIENT_MODULES = ("httpx2", "httpx")
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
CONNECT_TIMEOUT_S = 10.0
# uvicorn (under `vllm serve`) closes a keep-alive connection after 5 s idle; a client that keeps it as long
# races that close and reads a reset on reuse. Ours drops idle connections first.
KEEPALIVE_EXPIRY_S = 2.0
NO_CLIENT = DistilleryError(
    "engine 'openai' needs a working HTTP client (httpx2 with httpcore2, or httpx)",
    hint='pip install "distillery[openai]"',
)


def _client_modules():
    for name in CLIENT_MODULES:
        try:
            yield importlib.import_module(name)
        except ImportError:
            continue


def http_module():
    """The first client library that can build its transport (for the blocking calls of `serve`)."""
    for module in _client_modules():
        try:
            module.Client().close()
        except ImportError as exc:  # httpx2 without httpcore2
            log.info("%s cannot send requests (%s); trying the next HTTP client", module.__name__, exc)
            continue
        return module
    raise NO_CLIENT


def client_version(module) -> str:
    return f"{module.__name__} {metadata.version(module.__name__)}"


class RateLimiter:
    """At most `per_minute` request starts per minute, evenly spaced."""

    def __init__(self, per_minute: float | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            delay = self.next_start - now
            self.next_start = max(now, self.next_start) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class TransportFailure(Exception):
    """A request that got no HTTP answer; `first` when it was the session's first request."""

    def __init__(self, error: BaseException, first: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.first = first


class HttpSession:
    """One async client for one server, used from one event loop."""

    def __init__(self, settings: EngineSettings, headers: dict[str, str], throttle: bool) -> None:
        self.settings = settings
        self.headers = headers
        self.http = None  # the client library, once the first request chose it
        self.client = None
        self.limiter = RateLimiter(settings.requests_per_minute if throttle else None)
        self.requests_sent = 0
        self._in_flight = asyncio.Semaphore(max(1, settings.max_concurrency))
        self._choosing = asyncio.Lock()

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def send(self, method: str, url: str, body: dict | None = None):
        """One exchange, retried as the module docstring says; the response, whose status is below 400."""
        attempt = 0
        while True:
            retry_after = None
            await self.limiter.wait()
            try:
                async with self._in_flight:
                    self.requests_sent += 1
                    response = await self._exchange(method, url, body)
            except TransportFailure as failure:
                refused = failure.first and type(failure.error).__name__ == "ConnectError"
                if refused or attempt >= self.settings.max_retries:
                    raise DistilleryError(connection_diagnostic(url, failure.error) + retried(attempt)) from None
                reason = type(failure.error).__name__
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES or attempt >= self.settings.max_retries:
                    raise DistilleryError(http_error_message(url, response) + retried(attempt))
                reason = f"HTTP {response.status_code}"
                retry_after = response.headers.get("retry-after")
            delay = min(self.settings.retry_max_delay_s, self.settings.retry_base_delay_s * 2**attempt)
            if retry_after and retry_after.replace(".", "", 1).isdigit():
                delay = max(delay, float(retry_after))
            attempt += 1
            log.info("%s %s: %s, retry %d/%d in %.2f s", method, url, reason, attempt, self.settings.max_retries, delay)
            await asyncio.sleep(delay)

    async def _exchange(self, method: str, url: str, body: dict | None):
        if self.client is None:
            async with self._choosing:
                if self.client is None:
                    return await self._first_exchange(method, url, body)
        try:
            return await self.client.request(method, url, json=body)
        except self.http.TransportError as exc:
            raise TransportFailure(exc) from None

    async def _first_exchange(self, method: str, url: str, body: dict | None):
        """Send the first request with each client library in turn until one's request path works."""
        for module in _client_modules():
            client = None
            try:
                client = self._build(module)
                response = await client.request(method, url, json=body)
            except ImportError as exc:  # httpx2 imports, but its httpcore2 does not
                log.warning("%s cannot send requests (%s); trying the next HTTP client", module.__name__, exc)
                if client is not None:
                    await client.aclose()
                continue
            except module.TransportError as exc:
                self.http, self.client = module, client  # it got as far as the network: the client works
                raise TransportFailure(exc, first=True) from None
            self.http, self.client = module, client
            log.info("engine openai: HTTP client %s", client_version(module))
            return response
        raise NO_CLIENT

    def _build(self, http):
        connections = max(1, self.settings.max_concurrency)
        return http.AsyncClient(
            headers=self.headers,
            timeout=http.Timeout(self.settings.request_timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=http.Limits(
                max_connections=connections,
                max_keepalive_connections=connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            ),
        )


def retried(attempts: int) -> str:
    return f" (after {attempts} retries)" if attempts else ""


def decode_json(url: str, response):
    """The JSON of an answer that says it is JSON; a one-line error where it is not."""
    try:
        return response.json()
    except ValueError:
        raise DistilleryError(
            f"{url}: the server answered {response.status_code} with a body that is not JSON ({response.text[:80]!r})",
            hint="check that the base URL is an OpenAI-compatible API (it should end in /v1)",
        ) from None


def completion_choices(url: str, reply) -> list[dict]:
    """The choices of a completions answer, by index; a one-line error for an answer that has none."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        shown = reply if isinstance(reply, str) else repr(reply)
        raise DistilleryError(
            f"{url}: the answer is not an OpenAI completions body (no 'choices' list): {shown[:80]!r}",
            hint="check that the base URL is an OpenAI-compatible API (it should end in /v1)",
        )
    return sorted(choices, key=lambda choice: choice.get("index", 0))


def connection_diagnostic(url: str, exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc) or name
    if "refused" in text.lower() or name == "ConnectError":
        return (
            f"cannot connect to {url}: {text}; is the server running and the URL right? "
            "(start one with `distillery serve`, test it with `distillery check-server`)"
        )
    if "timeout" in name.lower():
        return f"{url}: no answer in time ({name}); the server may be overloaded or still loading the model"
    return f"{url}: {name}: {text}"


def http_error_message(url: str, response) -> str:
    """vLLM's own error message (400: bad request, 404: unknown model) or, for a non-API page, a hint."""
    message = None
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else body.get("message") or body.get("detail")
    except (ValueError, AttributeError):
        pass
    if response.status_code == 404 and not message:
        return f"{url}: 404 Not Found: no OpenAI-compatible API here; check the base URL (it should end in /v1)"
    if response.status_code in (401, 403):
        return f"{url}: {response.status_code}: {message or 'not authorized'}; check the API key (OPENAI_API_KEY)"
    return f"{url}: {response.status_code}: {message or response.text[:200]}"
