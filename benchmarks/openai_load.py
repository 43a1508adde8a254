"""The OpenAI engine under load against a real `vllm serve`: 20,000 requests, every result exactly once.

Workload: a random Llama whose tokenizer has "True"/"False" as tokens (`build_tiny_icm_model`, as
record_openai_fixtures.py builds it) served by `vllm serve` on 127.0.0.1 (prefix caching, --max-logprobs 20,
--enforce-eager, --seed 0). 20,000 distinct token-id prompts, one request each, through distillery's OpenAI
engine at --concurrency requests in flight: half scored as ICM scores (max_tokens 1, logprobs 20, one prompt per
request: how ICM failed with ReadError after about 2,000 requests on httpx), half generated as KD generates
(--max-tokens new tokens, a seed each). Checks that every prompt's result arrives exactly once, and counts the
requests the engine sent again (retries). Anchor, in the same run: the same requests sent by a plain loop of the
same HTTP client at the same concurrency, without retries (its failed requests are counted, not retried).

    PYTHONPATH=. python benchmarks/openai_load.py --out $OUT         (a GPU and vLLM 0.26; a few minutes)
    PYTHONPATH=. python benchmarks/openai_load.py --server-url URL   (an already running server)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SERVED_NAME = "tiny-llama"
PORT = 8126


def workload(requests: int, vocab_size: int = 512, prompt_tokens: int = 24) -> tuple[list, list]:
    """Half scoring prompts, half generation prompts; each distinct (its index is spelled in its first tokens)."""

    def prompt(index: int) -> list[int]:
        digits = [3 + (index // vocab_size**power) % (vocab_size - 3) for power in range(3)]
        return digits + [3 + (index * 7 + k) % (vocab_size - 3) for k in range(prompt_tokens - 3)]

    half = requests // 2
    return [prompt(i) for i in range(half)], [prompt(i) for i in range(half, requests)]


def through_engine(base_url: str, model: str, scoring: list, generation: list, concurrency: int, max_tokens: int):
    """distillery's OpenAI engine: seconds, results checked exactly once, retries."""
    from workflow_scripts.engines import EngineSettings, GenerationRequest, SamplingSettings, open_engine

    settings = EngineSettings(
        kind="openai", base_url=base_url, served_model_name=model, max_concurrency=concurrency, prompts_per_request=1
    )
    engine = open_engine(settings)
    try:
        started = time.perf_counter()
        candidates = engine.next_token_logprobs(scoring, 20)
        requests = [GenerationRequest(str(i), prompt, seed=i) for i, prompt in enumerate(generation)]
        results = list(engine.generate(requests, SamplingSettings(max_tokens=max_tokens, temperature=1.0)))
        seconds = time.perf_counter() - started
        client = engine.versions()["client"]
        sent = engine.requests_sent - 1  # less the /version of versions()
    finally:
        engine.close()
    ids = Counter(result.request_id for result in results)
    complete = (
        len(candidates) == len(scoring)
        and all(candidates)
        and ids == Counter(str(i) for i in range(len(generation)))
        and all(result.completions and result.completions[0].text is not None for result in results)
    )
    total = len(scoring) + len(generation)
    rate = round(total / seconds, 1)
    return {
        "client": client,
        "seconds": round(seconds, 2),
        "requests": total,
        "requests_per_s": rate,
        "every_result_once": complete,
        "retries": sent - total,
        "failed": 0,
    }  # fmt: skip (a failure raises)


def plain_loop(base_url: str, model: str, scoring: list, generation: list, concurrency: int, max_tokens: int):
    """The anchor: the same requests from a bare async loop of the same client library, no retries."""
    from workflow_scripts.engines.openai_http import http_module

    http = http_module()
    bodies = [{"model": model, "prompt": p, "max_tokens": 1, "temperature": 0, "logprobs": 20} for p in scoring]
    bodies += [{"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 1.0, "seed": i}
               for i, p in enumerate(generation)]  # fmt: skip

    async def send_all() -> list:
        limits = http.Limits(max_connections=concurrency)
        async with http.AsyncClient(timeout=600, limits=limits) as client:
            gate = asyncio.Semaphore(concurrency)

            async def send(body: dict):
                async with gate:
                    try:
                        response = await client.post(f"{base_url}/completions", json=body)
                        return response.status_code == 200 and bool(response.json().get("choices"))
                    except (http.TransportError, ValueError):
                        return False

            return await asyncio.gather(*(send(body) for body in bodies))

    started = time.perf_counter()
    answered = asyncio.run(send_all())
    seconds = time.perf_counter() - started
    return {"client": http.__name__, "seconds": round(seconds, 2), "requests": len(bodies),
            "requests_per_s": round(len(bodies) / seconds, 1), "every_result_once": all(answered),
            "retries": 0, "failed": answered.count(False)}  # fmt: skip


def measure(
    base_url: str,
    model: str,
    requests: int,
    concurrency: int,
    max_tokens: int,
    clients: tuple[str, ...] = (),
    on_row=None,
    kinds: tuple[str, ...] = ("engine", "anchor"),
) -> dict[str, dict]:
    """Each path once per client library (the issue's ReadError came with httpx): the engine's rows first, then
    the anchors'; `on_row(rows)` after each, so a run cut short keeps what it measured."""
    from workflow_scripts.engines import openai_http

    scoring, generation = workload(requests)
    clients = clients or openai_http.CLIENT_MODULES
    paths = [(f"distillery openai engine ({client})", through_engine, client) for client in clients]
    paths = paths if "engine" in kinds else []
    if "anchor" in kinds:
        paths += [(f"plain client loop ({client}, anchor)", plain_loop, client) for client in clients]
    rows = {}
    for name, path, client in paths:
        chosen = openai_http.CLIENT_MODULES
        openai_http.CLIENT_MODULES = (client,)  # the library the engine and the anchor loop may use
        try:
            rows[name] = path(base_url, model, scoring, generation, concurrency, max_tokens)
        finally:
            openai_http.CLIENT_MODULES = chosen
        print(name, rows[name], flush=True)
        if on_row:
            on_row(rows)
    return rows


def print_table(rows: dict[str, dict]) -> None:
    print("| path | client | requests | seconds | requests/s | every result once | retries | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['client']} | {row['requests']} | {row['seconds']} | {row['requests_per_s']} | "
              f"{row['every_result_once']} | {row['retries']} | {row['failed']} |")  # fmt: skip


def start_server(work: Path):
    import subprocess

    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_icm_model
    from workflow_scripts.serve import vllm_command, wait_until_healthy

    model = work / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_icm_model(model, TinyModelSpec(max_position_embeddings=4096))
    command = vllm_command([str(model), "--host", "127.0.0.1", "--port", str(PORT), "--served-model-name",
                            SERVED_NAME, "--max-model-len", "2048", "--max-logprobs", "20",
                            "--enable-prefix-caching", "--enforce-eager", "--seed", "0"])  # fmt: skip
    process = subprocess.Popen(command, stdout=(work / "server.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{PORT}/v1"
    wait_until_healthy(url, process, 900)
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/openai-load"))
    parser.add_argument("--server-url", help="an already running server (its /v1 URL) instead of starting one")
    parser.add_argument("--model", default=SERVED_NAME, help="the served model's name (with --server-url)")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, both paths (64)")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per generation request (16)")
    parser.add_argument(
        "--client", action="append", default=[], help="HTTP client library to measure (default: httpx2 and httpx)"
    )
    parser.add_argument(
        "--path", action="append", choices=("engine", "anchor"), default=[], help="measure only these (default: both)"
    )
    args = parser.parse_args()

    from harness import new_record
    from icm_vllm import stop

    args.work.mkdir(parents=True, exist_ok=True)
    record = new_record("openai_load", workload={"requests": args.requests, "concurrency": args.concurrency,
                        "max_tokens": args.max_tokens, "server": args.server_url or "vllm serve (started here)"},
                        results={})  # fmt: skip
    saved = args.out / f"openai_load-{record['date'][:19].replace(':', '').replace('-', '')}Z.json"

    def save(rows: dict) -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({**record, "results": rows}, indent=2) + "\n")

    process, url = (None, args.server_url) if args.server_url else start_server(args.work)
    try:
        rows = measure(
            url,
            args.model,
            args.requests,
            args.concurrency,
            args.max_tokens,
            tuple(args.client),
            save,
            tuple(args.path) or ("engine", "anchor"),
        )
    finally:
        if process:
            stop(process)
    print_table(rows)
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
