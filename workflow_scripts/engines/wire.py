"""The engine server's protocol: JSON lines over a Unix socket, between `engine_server.py` and `remote.py`.

One connection per client (a KD chunk job). Each line is one JSON object:

    client -> server  {"hello": {"tag": TAG, "client": NAME}}        first line; TAG: what the engine must serve
    server -> client  {"ready": {"engine_id", "kind", "max_model_len", "start_seconds", "versions", "slot",
                                 "gpus", "pid"}}                       or {"error": MESSAGE} and the server closes
    client -> server  {"id": ID, "seed": SEED, "prompt_token_ids": [...], "max_tokens": N or null}   one per row
    server -> client  {"id": ID, "completions": [{"text", "token_ids", "finish_reason"}, ...]}      as each ends
                      {"id": ID, "error": MESSAGE}                   a request the engine could not generate

Results come back in any order, as they finish. The client closes the connection when it has every result;
a connection that closes earlier has its outstanding requests cancelled. The server closing it (EOF) before
every result came means the engine stopped: the client fails and keeps what it saved.
"""

from __future__ import annotations

import json

from .base import Completion, GenerationRequest, GenerationResult


def line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def hello(tag: str, client: str) -> bytes:
    return line({"hello": {"tag": tag, "client": client}})


def request_line(request: GenerationRequest) -> bytes:
    return line(
        {
            "id": request.request_id,
            "seed": request.seed,
            "prompt_token_ids": request.prompt_token_ids,
            "max_tokens": request.max_tokens,
        }
    )


def parse_request(message: dict) -> GenerationRequest:
    return GenerationRequest(
        str(message["id"]), [int(token) for token in message["prompt_token_ids"]], int(message["seed"]),
        message.get("max_tokens"),
    )  # fmt: skip


def result_line(result: GenerationResult) -> bytes:
    completions = [
        {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason} for c in result.completions
    ]
    return line({"id": result.request_id, "completions": completions})


def parse_result(message: dict) -> GenerationResult:
    completions = [Completion(c["text"], list(c["token_ids"]), c["finish_reason"]) for c in message["completions"]]
    return GenerationResult(str(message["id"]), completions)
