"""Checks and the verification report they make: JSON for machines, Markdown and ✓/✗ lines for people."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import atomic_write_texts

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
_MARKS = {PASS: "✓", FAIL: "✗", WARN: "⚠", SKIP: "-"}


@dataclass
class Check:
    name: str
    status: str
    title: str
    detail: str = ""
    data: dict = field(default_factory=dict)

    @property
    def line(self) -> str:
        return f"{_MARKS[self.status]} {self.title}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Report:
    model_path: str
    checks: list[Check]
    reference_path: str | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def passed(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == FAIL]

    def to_dict(self) -> dict:
        return {
            "model_path": self.model_path,
            "reference_path": self.reference_path,
            "created": self.created,
            "passed": self.passed,
            "failed_checks": [check.name for check in self.failures],
            "checks": [asdict(check) for check in self.checks],
        }

    def console_lines(self) -> list[str]:
        verdict = (
            "✓ Ready for vLLM"
            if self.passed
            else "✗ Not ready for vLLM: " + ", ".join(check.name for check in self.failures)
        )
        return [check.line for check in self.checks] + [verdict]

    def to_markdown(self) -> str:
        lines = [
            f"# Verification of `{self.model_path}`",
            "",
            f"**{'PASSED: ready for vLLM' if self.passed else 'FAILED'}** ({self.created})",
            "",
        ]
        if self.reference_path:
            lines += [f"Reference for numerics: `{self.reference_path}`", ""]
        lines += ["| check | result | detail |", "|---|---|---|"]
        for check in self.checks:
            detail = check.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {check.title} | {_MARKS[check.status]} {check.status} | {detail} |")
        return "\n".join(lines) + "\n"

    def write(self, json_path: Path, markdown_path: Path | None = None) -> None:
        markdown_path = Path(markdown_path or Path(json_path).with_suffix(".md"))
        # Both or neither: a JSON report without its Markdown twin would look complete.
        atomic_write_texts(
            {
                Path(json_path): json.dumps(self.to_dict(), indent=2, default=str) + "\n",
                markdown_path: self.to_markdown(),
            }
        )
