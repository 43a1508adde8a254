"""What loading a model folder's tokenizer with transformers tells a conversion: its size and special token ids.

Loading a tokenizer imports transformers (many seconds of a conversion's start-up), and a conversion loads the
tokenizer it has just copied from its source, unchanged from the last conversion of that model. So the answer is
kept in the facts cache (facts_cache.py), keyed by the name and bytes of every file in the folder that
`AutoTokenizer` may read: all of them but the weights, the index and provenance.json (which the tokenizer never
reads and which change on every conversion). A folder with Python files (custom tokenizer code) is always loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import facts_cache

# Files a tokenizer never reads, by the end of their name: weights, their index, distillery's provenance record.
_NOT_READ_BY_TOKENIZERS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json", "provenance.json")


@dataclass(frozen=True)
class TokenizerFacts:
    size: int  # len(tokenizer): the vocabulary with its added tokens
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None


def tokenizer_facts(folder: str | Path, trust_remote_code: bool = False) -> TokenizerFacts:
    """The facts of the tokenizer `AutoTokenizer.from_pretrained(folder)` loads; raises what it raises (a failure
    is never cached, so it is transformers' own error every time)."""
    folder = Path(folder)
    files = _files_a_tokenizer_may_read(folder)
    if any(path.suffix == ".py" for path in files):
        return _load(folder, trust_remote_code)
    digests = "\n".join(f"{path.relative_to(folder)} {facts_cache.file_digest(path)}" for path in files)
    entry = facts_cache.entry_path("tokenizer", f"{trust_remote_code}\n{digests}")
    stored = facts_cache.read_entry(entry)
    try:
        return TokenizerFacts(**stored)
    except TypeError:
        pass  # not cached yet (None), or written by another layout: load it
    facts = _load(folder, trust_remote_code)
    facts_cache.write_entry(entry, vars(facts))
    return facts


def _files_a_tokenizer_may_read(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not path.name.endswith(_NOT_READ_BY_TOKENIZERS)
        # Hidden files: a conversion's spool files, an editor's or a file system's leftovers.
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _load(folder: Path, trust_remote_code: bool) -> TokenizerFacts:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    return TokenizerFacts(
        len(tokenizer),
        getattr(tokenizer, "bos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(tokenizer, "pad_token_id", None),
    )
