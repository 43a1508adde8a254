"""Generation with HF transformers forward passes: the engine for machines without a GPU (or without vLLM).

Sampling is our own loop over the model's logits, so each sequence draws from its own `torch.Generator` seeded
from its row: a row's completion does not depend on which rows share its batch's random stream. Batches are
left-padded; on the CPU the same batches give bit-identical outputs run after run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from importlib import metadata

from ..errors import DistilleryError, first_line
from .base import Completion, GenerationRequest, GenerationResult, SamplingSettings, TokenLogprob
from .shared_prefix_scoring import can_share_prefixes, score_sharing_prefixes, top_candidates

log = logging.getLogger(__name__)

# Padded tokens per scoring forward pass: bounds activation memory when many long prompts are scored at once.
SCORING_TOKENS_PER_PASS = 32768


def _torch_dtype(name: str):
    import torch

    if name in ("auto", None):
        return "auto"
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    except KeyError:
        raise DistilleryError(f"unknown dtype {name!r}", hint="use auto, float32, float16 or bfloat16") from None


def filter_logits(logits, temperature: float, top_k: int, top_p: float):
    """Temperature, top-k and top-p (nucleus) filtering of one row's logits, as vLLM applies them."""
    import torch

    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the token crossing the line stays).
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    return logits


class TransformersEngine:
    kind = "transformers"

    def __init__(self, settings) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            trust = settings.trust_remote_code
            self.tokenizer = AutoTokenizer.from_pretrained(settings.tokenizer, trust_remote_code=trust)
            self.model = AutoModelForCausalLM.from_pretrained(
                settings.model_path, dtype=_torch_dtype(settings.dtype), trust_remote_code=trust
            )
        except OSError as exc:
            raise DistilleryError(f"cannot load the model: {first_line(exc)}", settings.model_path) from None
        self.model.to(self.device).eval()
        torch.manual_seed(settings.seed)
        config = self.model.config
        self.max_model_len = settings.max_model_len or getattr(config, "max_position_embeddings", None) or 2048
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.batch_size = max(1, settings.max_num_seqs)
        self._shares_prefixes: bool | None = None

    def versions(self) -> dict[str, str]:
        return {package: metadata.version(package) for package in ("torch", "transformers")}

    def close(self) -> None:
        self.model = None

    def generate(self, requests: Iterable[GenerationRequest], sampling: SamplingSettings) -> Iterator[GenerationResult]:
        batch: list[GenerationRequest] = []
        per_batch = max(1, self.batch_size // max(1, sampling.n))
        for request in requests:
            batch.append(request)
            if len(batch) == per_batch:
                yield from self._generate_batch(batch, sampling)
                batch = []
        if batch:
            yield from self._generate_batch(batch, sampling)

    def _generate_batch(self, batch: list[GenerationRequest], sampling: SamplingSettings) -> Iterator[GenerationResult]:
        import torch

        sequences = [(request, sample) for request in batch for sample in range(sampling.n)]
        prompts = [request.prompt_token_ids for request, _ in sequences]
        longest = max(len(p) for p in prompts)
        caps = [
            min(sampling.max_tokens, request.max_tokens or sampling.max_tokens, self.max_model_len - len(prompt))
            for (request, _), prompt in zip(sequences, prompts, strict=True)
        ]
        if min(caps) <= 0:
            raise DistilleryError(f"a prompt leaves no room to generate within max_model_len {self.max_model_len}")
        max_new = max(caps)
        input_ids = torch.full((len(prompts), longest), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), longest), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, longest - len(prompt) :] = 1
        generators = []
        for request, sample in sequences:
            generator = torch.Generator(device=self.device)
            generator.manual_seed((request.seed + sample) % (2**63))
            generators.append(generator)

        generated: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * len(prompts)
        cut_text: list[str | None] = [None] * len(prompts)
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        cache = None
        step_ids = input_ids
        with torch.inference_mode():
            for _ in range(max_new):
                positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=attention,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
                next_tokens = []
                for row, row_logits in enumerate(logits):
                    if finish[row] is not None:
                        next_tokens.append(self.pad_token_id)
                        continue
                    token = self._sample(row_logits, sampling, generators[row])
                    generated[row].append(token)
                    next_tokens.append(token)
                    if len(generated[row]) >= caps[row]:
                        finish[row] = "length"
                    if token in self.eos_token_ids:
                        finish[row] = "stop"
                    elif sampling.stop:
                        cut = self._stop_cut(generated[row], sampling.stop)
                        if cut is not None:
                            finish[row], cut_text[row] = "stop", cut
                if all(reason is not None for reason in finish):
                    break
                step_ids = torch.tensor(next_tokens, dtype=torch.long, device=self.device)[:, None]
                attention = torch.cat([attention, torch.ones_like(step_ids)], dim=-1)

        for start in range(0, len(sequences), sampling.n):
            completions = []
            for row in range(start, start + sampling.n):
                tokens = generated[row]
                if finish[row] == "stop" and tokens and tokens[-1] in self.eos_token_ids:
                    tokens = tokens[:-1]  # vLLM leaves the EOS token out of the text and the ids
                text = cut_text[row] if cut_text[row] is not None else self.tokenizer.decode(tokens)
                completions.append(Completion(text, tokens, finish[row] or "length"))
            yield GenerationResult(sequences[start][0].request_id, completions)

    @staticmethod
    def _sample(logits, sampling: SamplingSettings, generator) -> int:
        import torch

        if sampling.temperature <= 0:
            return int(torch.argmax(logits))
        filtered = filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p)
        probabilities = torch.softmax(filtered, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=generator))

    def _stop_cut(self, tokens: list[int], stops: tuple[str, ...]) -> str | None:
        """The text up to the first stop string, once one appears (the stop string itself is left out, as in vLLM)."""
        text = self.tokenizer.decode(tokens)
        positions = [text.find(stop) for stop in stops if stop in text]
        return text[: min(positions)] if positions else None

    def next_token_logprobs(self, prompts: list[list[int]], top_k: int) -> list[list[TokenLogprob]]:
        """Each shared prefix computed once (`shared_prefix_scoring.py`) where the model allows it, else batched
        passes over whole prompts."""
        for prompt in prompts:
            if len(prompt) >= self.max_model_len:
                raise DistilleryError(
                    f"a prompt of {len(prompt)} tokens does not fit max_model_len {self.max_model_len}",
                    hint="use fewer or shorter examples per batch (icm batch_size)",
                )
        if not prompts:
            return []
        if self.shares_prefixes:
            return self.score_sharing_prefixes(prompts, top_k)
        return self.score_whole_prompts(prompts, top_k)

    def score_whole_prompts(self, prompts: list[list[int]], top_k: int) -> list[list[TokenLogprob]]:
        """Batched forward passes over whole prompts (similar lengths together, left-padded)."""
        import torch

        results: list[list[TokenLogprob] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
        start = 0
        while start < len(order):
            longest = len(prompts[order[start]])
            rows = max(1, min(self.batch_size, SCORING_TOKENS_PER_PASS // max(1, longest)))
            chunk = order[start : start + rows]
            start += len(chunk)
            input_ids = torch.full((len(chunk), longest), self.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, index in enumerate(chunk):
                prompt = prompts[index]
                input_ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                attention[row, longest - len(prompt) :] = 1
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    position_ids=positions.to(self.device),
                    logits_to_keep=1,
                ).logits[:, -1, :]
            for index, candidates in zip(chunk, top_candidates(logits, top_k, self.tokenizer), strict=True):
                results[index] = candidates
        return results  # type: ignore[return-value]

    def score_sharing_prefixes(self, prompts: list[list[int]], top_k: int) -> list[list[TokenLogprob]]:
        return score_sharing_prefixes(self.model, self.tokenizer, prompts, top_k, self.device)

    @property
    def shares_prefixes(self) -> bool:
        if self._shares_prefixes is None:
            self._shares_prefixes = can_share_prefixes(self.model)
        return self._shares_prefixes
