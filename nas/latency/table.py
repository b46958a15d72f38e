"""Latency lookup tables: CSV of entries plus JSON metadata; vectorised prediction over populations."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..errors import UserError
from ..io import read_csv, read_json, write_csv, write_json
from ..resources import shipped_dir
from ..space import SearchSpace
from .entries import GRANULARITIES, KEY_COLUMNS, Entry, assemble, entry_counts, enumerate_entries

VALUE_COLUMNS = ("median_ms", "p10_ms", "p90_ms", "runs")
DEVICE_RE = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-\d+t$")


def meta_path(csv_path: str | os.PathLike) -> Path:
    return Path(csv_path).with_suffix(".json")


def table_path(space_name: str, device: str, root: str | os.PathLike = "latency_tables") -> Path:
    return Path(root) / space_name / f"{device}.csv"


class LatencyTable:
    """One device's measured entries for one space. ``predict(pop)`` gives milliseconds per architecture."""

    def __init__(self, rows: pd.DataFrame, meta: dict[str, Any], path: Optional[Path] = None):
        self.rows, self.meta, self.path = rows, meta, path
        self._space: Optional[SearchSpace] = None
        self._cost = None
        self._hash: Optional[str] = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, csv_path: str | os.PathLike, space: Optional[SearchSpace] = None) -> "LatencyTable":
        csv_path = Path(csv_path)
        rows = read_csv(csv_path, "latency table", required=KEY_COLUMNS + ("median_ms",))
        if rows["median_ms"].isna().any() or (pd.to_numeric(rows["median_ms"], errors="coerce") <= 0).any():
            raise UserError(csv_path, "median_ms has missing, non-numeric or non-positive values",
                            "re-run nas profile for this device")
        meta = read_json(meta_path(csv_path), "latency table metadata")
        for k in ("space", "device", "granularity", "fingerprint"):
            if k not in meta:
                raise UserError(meta_path(csv_path), f"metadata lacks {k!r}", "re-run nas profile for this device")
        table = cls(rows, meta, csv_path)
        if space is not None:
            table.bind(space)
        return table

    @classmethod
    def find(cls, space: SearchSpace, device: str, tables_dir: Optional[str | os.PathLike] = None) -> "LatencyTable":
        """The table of ``device`` for ``space``: in ``tables_dir``, else ``./latency_tables``, else shipped."""
        p = find_table_path(space.name, device, tables_dir)
        if p is not None:
            return cls.load(p, space)
        known = available_devices(space.name, table_roots(tables_dir))
        hint = f"known for {space.name}: {', '.join(known)}" if known else f"no tables exist for {space.name}"
        raise UserError(f"device {device!r}", "no latency table for this device",
                        f"{hint}; measure one with: nas profile --space {space.cli_name} --device {device}")

    # ------------------------------------------------------------------ properties
    @property
    def space_name(self) -> str:
        return self.meta["space"]

    @property
    def device(self) -> str:
        return self.meta["device"]

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.meta["fingerprint"]

    @property
    def granularity(self) -> str:
        return self.meta["granularity"]

    @property
    def correction(self) -> dict[str, Any]:
        return self.meta.get("correction") or {}

    @property
    def content_hash(self) -> str:
        """sha256 (first 16 hex digits) of the table's rows, for provenance in run outputs."""
        if self._hash is None:
            blob = self.rows[list(KEY_COLUMNS) + ["median_ms"]].to_csv(index=False).encode()
            self._hash = hashlib.sha256(blob).hexdigest()[:16]
        return self._hash

    @property
    def fingerprint_hash(self) -> str:
        blob = repr(sorted(self.fingerprint.items())).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ------------------------------------------------------------------ binding and prediction
    def _lookup(self) -> dict[str, float]:
        keys = [Entry.from_row(r).key for r in self.rows[list(KEY_COLUMNS)].to_dict("records")]
        return dict(zip(keys, self.rows["median_ms"].astype(float)))

    def missing(self, space: SearchSpace) -> list[Entry]:
        have = self._lookup()
        return [e for e in enumerate_entries(space, self.granularity) if e.key not in have]

    def check(self, space: SearchSpace) -> None:
        """Fail with a clear message if the table was made for another space or lacks entries."""
        where = str(self.path or f"table {self.device}")
        if self.space_name != space.name:
            raise UserError(where, f"table was made for space {self.space_name!r}, not {space.name!r}",
                            f"use latency_tables/{space.name}/ or profile this space")
        sig = self.meta.get("space_signature")
        if sig and sig != space.signature():
            raise UserError(where, f"space {space.name!r} changed since this table was measured", self._fix(space))
        if self.granularity not in GRANULARITIES:
            raise UserError(where, f"unknown granularity {self.granularity!r}", f"use one of {GRANULARITIES}")
        missing = self.missing(space)
        if missing:
            shown = ", ".join(e.key for e in missing[:3])
            raise UserError(where, f"{len(missing)} entries the space needs are missing (e.g. {shown})",
                            self._fix(space))

    def _fix(self, space: SearchSpace) -> str:
        cmd = f"nas profile --space {space.cli_name} --device {self.device}"
        if (self.meta.get("source") or {}).get("imported"):  # measured on a remote device
            return f"measure it there again: {cmd} --export-bundle DIR, then --import-results DIR"
        return f"time what it lacks: {cmd}"

    def bind(self, space: SearchSpace) -> "LatencyTable":
        if self._space is not space:
            self.check(space)
            have = self._lookup()
            self._cost = assemble(space, self.granularity, lambda e: have[e.key])
            self._space = space
        return self

    @property
    def space(self) -> SearchSpace:
        if self._space is None:
            self.bind(SearchSpace.load(self.space_name))
        return self._space

    def predict_sum(self, pop: np.ndarray) -> np.ndarray:
        """The plain sum of the table's entries, in ms."""
        _ = self.space
        return self._cost(pop)

    def quality_warning(self, min_tau: float = 0.9, min_within: float = 0.95) -> Optional[str]:
        """A sentence when the validation falls short of the goals (τ >= 0.9, 95% within ±10%), else None."""
        v = self.meta.get("validation") or {}
        if not v or (v["kendall_tau"] >= min_tau and v["share_within_10pct"] >= min_within):
            return None
        readme = "on this device the stage timings do not add up (README, Latency tables)"
        cause = (f"this machine's own timings varied (noise floor {v['noise_floor']:.0%}: two timings of a network, "
                 f"each in its own session, agree within 10% that often), so it cannot be checked more tightly "
                 f"here: validate again on an idle machine (nas profile ... --validate "
                 f"{v['networks'] + v.get('fit_networks', 0)}); if it stays short, {readme}"
                 if v["noise_floor"] < min_within else f"whole networks time steadily, so {readme}")
        return (f"table {self.device} predicts whole networks loosely: Kendall tau {v['kendall_tau']:.3f}, "
                f"{v['share_within_10pct']:.0%} within 10% on {v['networks']} held-out networks (goals "
                f"{min_tau}, {min_within:.0%}); {cause}")

    def stage_grids(self) -> list[np.ndarray]:
        """Per stage, the table's ms for each (input context, option): the terms ``predict_sum`` adds up
        (besides stem and head)."""
        _ = self.space
        return self._cost.grids

    def predict(self, pop: np.ndarray, corrected: Optional[bool] = None) -> np.ndarray:
        """Predicted latency in ms, shape ``(n,)``; applies the correction when validation kept it."""
        total = self.predict_sum(pop)
        use = self.correction.get("used", False) if corrected is None else corrected
        if use and self.correction:
            total = apply_correction(self.correction, total, entry_counts(self.space, pop, self.granularity))
        return total

    # ------------------------------------------------------------------ writing
    def save(self, csv_path: Optional[str | os.PathLike] = None) -> Path:
        csv_path = Path(csv_path or self.path)
        write_csv(csv_path, self.rows)
        write_json(meta_path(csv_path), self.meta)
        self.path = csv_path
        return csv_path


def apply_correction(corr: dict[str, Any], total: np.ndarray, counts: np.ndarray) -> np.ndarray:
    a, b, c = corr["coef"]
    return a * total + b * counts + c


def fit_correction(table_sum: np.ndarray, counts: np.ndarray, measured: np.ndarray) -> dict[str, Any]:
    """Least squares ``measured ~ a * sum + b * n_entries + c``: a scale plus a per-entry overhead."""
    X = np.stack([table_sum, counts, np.ones_like(table_sum)], axis=1)
    coef, *_ = np.linalg.lstsq(X, measured, rcond=None)
    return {"kind": "linear(sum, n_entries)", "coef": [float(x) for x in coef]}


def table_roots(tables_dir: Optional[str | os.PathLike] = None) -> list[Path]:
    """Where tables are looked for, first match wins: ``tables_dir``, else ``./latency_tables`` then shipped."""
    return [Path(tables_dir)] if tables_dir else [Path("latency_tables"), shipped_dir("latency_tables")]


def find_table_path(space_name: str, device: str, tables_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The CSV of ``device``'s table for ``space_name`` in the first root that has one, or None."""
    return next((p for p in (table_path(space_name, device, r) for r in table_roots(tables_dir)) if p.exists()),
                None)


def available_devices(space_name: str, roots) -> list[str]:
    out = set()
    for root in roots:
        d = Path(root) / space_name
        if d.is_dir():
            out |= {p.stem for p in d.glob("*.csv") if meta_path(p).exists() and "." not in p.stem}
    return sorted(out)
