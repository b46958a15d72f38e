"""Where the shipped defaults live: the repository's top-level folders, or their installed copy."""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent
KINDS = ("search_spaces", "latency_tables", "predictors")


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``kind`` files: the source checkout's, else the one installed with the package."""
    if kind not in KINDS:
        raise ValueError(kind)
    source = _PKG.parent / kind
    return source if source.is_dir() else _PKG / "_shipped" / kind
