"""Rows to prompt token ids, by prompt mode; rows that cannot be prompts are skipped with a reason.

- `prefix`: the text column cut to `max_prompt_tokens` tokens of the teacher's tokenizer (pretraining-data KD).
- `prompt`: the text column as is; rows longer than `max_prompt_tokens` (when set) are skipped.
- `chat`: a list of `{"role", "content"}` messages rendered with the tokenizer's chat template; the record's
  `prompt` is the rendered text itself, special tokens included.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DistilleryError
from .settings import PromptSettings

SKIP_EMPTY = "empty_prompt"
SKIP_TOO_LONG = "prompt_too_long"
SKIP_UNDECODABLE = "undecodable_text"
SKIP_BAD_MESSAGES = "invalid_messages"


@dataclass(frozen=True)
class Prompt:
    text: str
    token_ids: list[int]


@dataclass(frozen=True)
class Skipped:
    reason: str
    detail: str = ""


def check_tokenizer(tokenizer, settings: PromptSettings, where: str) -> None:
    if settings.mode == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DistilleryError("prompt mode 'chat' needs a tokenizer with a chat template, and this one has none", where)


def _as_text(value) -> str | Skipped:
    if value is None:
        return Skipped(SKIP_EMPTY, "null")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Skipped(SKIP_UNDECODABLE, f"invalid UTF-8 at byte {exc.start}")
    if not isinstance(value, str):
        return Skipped(SKIP_UNDECODABLE, f"a {type(value).__name__}, not text")
    if not value.strip():
        return Skipped(SKIP_EMPTY, "blank")
    return value


def _chat_prompt(tokenizer, messages) -> Prompt | Skipped:
    """The rendered template as the teacher sees it, special tokens included, and its token ids."""
    if not messages:
        return Skipped(SKIP_EMPTY, "no messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and m.get("content") for m in messages):
        return Skipped(SKIP_BAD_MESSAGES, "each message needs a role and non-empty content")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding here, 4.x a list.
    return Prompt(text, list(ids["input_ids"] if hasattr(ids, "keys") else ids))


def _text_prompt(tokenizer, settings: PromptSettings, value) -> Prompt | Skipped:
    """The text's token ids (cut in prefix mode) and those ids decoded, so that a cut prefix shows where it ends."""
    text = _as_text(value)
    if isinstance(text, Skipped):
        return text
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if settings.mode == "prefix" and settings.max_prompt_tokens:
        ids = ids[: settings.max_prompt_tokens]
    return Prompt(tokenizer.decode(ids, skip_special_tokens=True), list(ids))


def build_prompt(tokenizer, settings: PromptSettings, value, max_model_len: int) -> Prompt | Skipped:
    """The prompt of one row, or why the row is skipped. A prompt must leave room for one generated token."""
    prompt = _chat_prompt(tokenizer, value) if settings.mode == "chat" else _text_prompt(tokenizer, settings, value)
    if isinstance(prompt, Skipped):
        return prompt
    limit = max_model_len - 1
    if settings.mode != "prefix" and settings.max_prompt_tokens:
        limit = min(limit, settings.max_prompt_tokens)
    if len(prompt.token_ids) > limit:
        return Skipped(SKIP_TOO_LONG, f"{len(prompt.token_ids)} tokens, limit {limit}")
    if not prompt.token_ids:
        return Skipped(SKIP_EMPTY, "no tokens")
    return prompt
