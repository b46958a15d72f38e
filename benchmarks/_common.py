"""Shared helpers for benchmark scripts: machine fingerprint and results files."""
from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.io import write_json  # noqa: E402
from nas.latency.engine import cpu_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    import torch

    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "hostname_hint": platform.node()[:8]}


def write_result(name: str, figures: dict) -> Path:
    path = RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **figures})
    print(f"wrote {path}")
    return path
