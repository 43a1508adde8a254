"""Where and how benchmark results are saved: one JSON file per run, named by benchmark and time."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path


def save_result(results_dir: Path, name: str, record: dict) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {path}")
    return path
