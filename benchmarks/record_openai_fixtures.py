"""Record distillery's own OpenAI-client requests against a real `vllm serve`, as test fixtures.

Builds a tiny Llama with "True"/"False" tokens (`build_tiny_icm_model`), starts `vllm serve` on it (served as
`tiny-llama`, --max-logprobs 20, prefix caching, --enforce-eager, --seed 0), puts a recording proxy in front, and
drives the real client through it: ICM scoring batches (`next_token_logprobs`, token-id prompts built from
config/icm/tiny-claims.jsonl), `generate` with seeds / n / top_p / top_k / stop / return_token_ids, a refused
request (logprobs above the server's maximum), and `check-server`'s probes and /metrics. Writes
$OUT/vllm-<version>-distillery-client.jsonl (the format of tests/fixtures/README.md, plus `vllm_version`);
copy it to tests/fixtures/ and tests/test_openai_engine.py replays it.

    PYTHONPATH=. python benchmarks/record_openai_fixtures.py --out $OUT           (a GPU and vLLM)
    PYTHONPATH=. python benchmarks/record_openai_fixtures.py --server-url URL     (an already running server)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CLAIMS = HERE.parent / "config" / "icm" / "tiny-claims.jsonl"
METRIC_PREFIXES = ("vllm:prefix_cache", "vllm:prompt_tokens", "vllm:cache_config_info")


class RecordingProxy:
    """Forwards every request to `upstream` and keeps (method, path, request, status, response)."""

    def __init__(self, upstream: str) -> None:
        from workflow_scripts.engines.openai_http import http_module

        http = http_module()
        client = http.Client(timeout=600)
        self.exchanges: list[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                reply = client.request(method, upstream + self.path, json=body)
                kind = reply.headers.get("content-type", "")
                if "json" in kind:
                    recorded = reply.json()
                else:
                    recorded = "\n".join(line for line in reply.text.splitlines() if line.startswith(METRIC_PREFIXES))
                proxy.exchanges.append({"method": method, "path": self.path, "request": body,
                                        "status": reply.status_code, "response": recorded})  # fmt: skip
                self.send_response(reply.status_code)
                self.send_header("content-type", kind or "application/json")
                self.send_header("content-length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def do_GET(self):  # noqa: N802
                self._forward("GET")

            def do_POST(self):  # noqa: N802
                self._forward("POST")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


def drive_client(base_url: str, model: Path) -> None:
    """Exactly the requests distillery's client sends."""
    from transformers import AutoTokenizer

    from workflow_scripts.engines import EngineSettings, GenerationRequest, SamplingSettings, open_engine
    from workflow_scripts.errors import DistilleryError
    from workflow_scripts.icm.data import load_dataset
    from workflow_scripts.icm.prompts import PromptBuilder, Query
    from workflow_scripts.serve import check_server

    engine = open_engine(EngineSettings(kind="openai", base_url=base_url, served_model_name="tiny-llama"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    examples = load_dataset(CLAIMS, "generic").examples[:8]
    builder = PromptBuilder(tokenizer, examples)
    labels = [e.gold for e in examples[:6]]
    for flipped in (None, 3):  # two evaluations that differ in one label, as consecutive ICM iterations do
        current = [(1 - label) if uid == flipped else label for uid, label in enumerate(labels)]
        demos = tuple(enumerate(current))
        queries = [Query(uid, tuple(d for d in demos if d[0] != uid)) for uid in range(6)]
        queries += [Query(uid, demos) for uid in (6, 7)]
        engine.next_token_logprobs([builder.token_ids(query) for query in queries], 20)
    try:
        engine.next_token_logprobs([builder.token_ids(Query(0, ()))], 25)
    except DistilleryError as exc:
        print(f"refused as expected: {exc}")
    prompt = tokenizer("Question: what is two plus two? Answer:")["input_ids"]
    samplings = [
        SamplingSettings(n=2, temperature=0.8, top_p=0.95, max_tokens=8, return_token_ids=True),
        SamplingSettings(n=1, temperature=1.0, top_p=1.0, top_k=5, max_tokens=8, stop=("\n",)),
        SamplingSettings(n=1, temperature=0.0, top_p=1.0, max_tokens=4),
    ]
    for index, sampling in enumerate(samplings):
        list(engine.generate([GenerationRequest(f"r{index}", prompt, 1000 + index)], sampling))
    engine.prefix_cache_counters()
    print(f"versions: {engine.versions()}")  # GET /version: names the fixture file
    engine.close()
    for check in check_server(base_url):
        print(f"check-server: {check.name}: {check.passed} ({check.detail})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "results")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/record-openai-fixtures"))
    parser.add_argument("--server-url", help="record against this running server instead of starting one")
    args = parser.parse_args()

    from icm_vllm import stop

    from workflow_scripts.architectures.tiny import TinyModelSpec, build_tiny_icm_model
    from workflow_scripts.serve import vllm_command, wait_until_healthy

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_icm_model(model, TinyModelSpec(max_position_embeddings=4096))
    process = None
    upstream = args.server_url
    if not upstream:
        port = 8124
        command = vllm_command([str(model), "--host", "127.0.0.1", "--port", str(port), "--served-model-name",
                                "tiny-llama", "--max-model-len", "2048", "--max-logprobs", "20",
                                "--enable-prefix-caching", "--enforce-eager", "--seed", "0"])  # fmt: skip
        process = subprocess_popen(command, args.work / "server.log")
        upstream = f"http://127.0.0.1:{port}"
        wait_until_healthy(f"{upstream}/v1", process, 600)
    upstream = upstream.removesuffix("/").removesuffix("/v1")
    try:
        proxy = RecordingProxy(upstream)
        drive_client(f"{proxy.url}/v1", model)
        version = "unknown"
        for exchange in proxy.exchanges:
            if exchange["path"] == "/version" and isinstance(exchange["response"], dict):
                version = exchange["response"].get("version", version)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"vllm-{version}-distillery-client.jsonl"
        path.write_text("".join(json.dumps({**e, "vllm_version": version}) + "\n" for e in proxy.exchanges))
        print(f"saved {len(proxy.exchanges)} exchanges to {path}")
    finally:
        if process:
            stop(process)


def subprocess_popen(command: list[str], log_path: Path):
    import subprocess

    return subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


if __name__ == "__main__":
    main()
