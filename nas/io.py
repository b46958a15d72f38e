"""File helpers: atomic writes and loaders that turn malformed input into a UserError."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import UserError


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _MODE)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (checkpoints: a kill mid-write leaves the previous one intact)."""
    import torch

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def read_torch(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu",
               fix: str = "delete it to start that step over") -> Any:
    """``torch.load(weights_only=True)`` (never an arbitrary pickle); a damaged or foreign file is a UserError."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        # torch's own first line suggests weights_only=False, which this toolkit never does
        raise UserError(path, f"cannot read {what}: damaged, or not a weights-only PyTorch file "
                        f"({type(e).__name__})", fix) from None


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically, without its index."""
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(path, f"{what} not found", "check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(path, f"malformed {what}: {e}", "fix or regenerate the file") from None


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(path, f"{what} not found", "check the path")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        detail = str(e).replace("\n", " ")
        raise UserError(path, f"malformed YAML: {detail}", "fix the syntax") from None


def read_csv(path: str | os.PathLike, what: str = "CSV file", required: tuple[str, ...] = ()):
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UserError(path, f"{what} not found", "check the path")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        detail = str(e).strip().replace("\n", " ")
        raise UserError(path, f"malformed {what}: {detail}", "fix or regenerate the file") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(path, f"{what} lacks column(s) {', '.join(missing)}", "regenerate the file")
    return frame
