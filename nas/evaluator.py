"""Scores integer populations of a search space: every objective and metric in one vectorised call."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import cost
from .errors import UserError
from .latency import LatencyTable
from .objectives import BUILTIN, Constraint, Objective
from .placement import load_placement_scores
from .predictor.model import Predictor
from .resources import shipped_dir
from .space import SearchSpace

DEFAULT_DATASET = "cifar10"


def find_predictor(space: SearchSpace, path: Optional[str | os.PathLike] = None,
                   dataset: str = DEFAULT_DATASET) -> Predictor:
    """``path``, else ``./predictors/<space>/<dataset>.json``, else the shipped one."""
    if path:
        return Predictor.load(path, space)
    p = find_predictor_path(space.name, dataset)
    if p is not None:
        return Predictor.load(p, space)
    raise UserError("accuracy", f"no predictor for space {space.name} and dataset {dataset}",
                    predictor_hint(space.name))


def predictor_roots() -> tuple[Path, Path]:
    return Path("predictors"), shipped_dir("predictors")


def find_predictor_path(space_name: str, dataset: str) -> Optional[Path]:
    """``predictors/<space>/<dataset>.json`` in the first root that has it (./predictors, then shipped), or None."""
    return next((p for p in (r / space_name / f"{dataset}.json" for r in predictor_roots()) if p.exists()), None)


def predictor_datasets(space_name: str) -> list[str]:
    """The datasets that ``predictors/<space>/`` (local or shipped) holds a predictor for."""
    return sorted({p.stem for root in predictor_roots() for p in (root / space_name).glob("*.json")})


def predictor_hint(space_name: str) -> str:
    """How to get an accuracy term for this space: the predictors it has, or how to build one."""
    have = predictor_datasets(space_name)
    if have:
        return f"this space has predictors for {', '.join(have)}: choose with --dataset, or pass --predictor FILE"
    return (f"none exists for {space_name} yet: build one with nas pipeline --space {space_name} --data ..., "
            "then pass --predictor FILE")


class Evaluator:
    """Objectives by name: ``accuracy``, ``latency@<device>``, ``macs``, ``params``, ``proxy_accuracy``, and
    ``placement_score`` (the stride placement's score from a mixture-of-supernets ranking).

    ``evaluate`` also returns ``macs``, ``params`` and every constrained quantity, so that output CSVs
    carry all metrics.
    """

    def __init__(self, space: SearchSpace, objectives: list[Objective], constraints: list[Constraint] = (),
                 tables: Optional[dict[str, LatencyTable]] = None, predictor: Optional[Predictor] = None,
                 placement_scores: Optional[np.ndarray] = None):
        self.space, self.objectives, self.constraints = space, list(objectives), list(constraints)
        self.tables = dict(tables or {})
        self.predictor = predictor
        self.placement_scores = None if placement_scores is None else np.asarray(placement_scores, dtype=np.float64)
        names = [o.name for o in objectives] + [c.name for c in constraints]
        for name in names:
            self._check_name(name)
        extra = [n for n in ("macs", "params") if n not in names]
        self.metric_names = list(dict.fromkeys(names + extra + [f"latency@{d}" for d in self.tables]))

    @classmethod
    def build(cls, space: SearchSpace, objectives: list[Objective], constraints: list[Constraint] = (),
              tables_dir: Optional[str] = None, predictor_path: Optional[str] = None,
              placement_ranking: Optional[str] = None, dataset: str = DEFAULT_DATASET) -> "Evaluator":
        names = [o.name for o in objectives] + [c.name for c in constraints]
        devices = list(dict.fromkeys(n.split("@", 1)[1] for n in names if n.startswith("latency@")))
        tables = {d: LatencyTable.find(space, d, tables_dir) for d in devices}
        predictor = find_predictor(space, predictor_path, dataset) if "accuracy" in names else None
        scores = load_placement_scores(space, placement_ranking) if placement_ranking else None
        return cls(space, objectives, constraints, tables, predictor, scores)

    def _check_name(self, name: str) -> None:
        if name.startswith("latency@"):
            if name[len("latency@"):] not in self.tables:
                raise UserError(name, "no latency table loaded for this device", "see nas profile")
        elif name == "accuracy":
            if self.predictor is None:
                raise UserError(name, "needs an accuracy predictor", "pass --predictor or use proxy_accuracy")
        elif name == "placement_score":
            if self.placement_scores is None:
                raise UserError(name, "needs a placement ranking", "pass --placement-ranking FILE.csv")
        elif name not in BUILTIN:
            raise UserError(name, "unknown objective or metric",
                            "use accuracy, latency@<device>, macs, params, proxy_accuracy or placement_score")

    def evaluate(self, pop: np.ndarray) -> dict[str, np.ndarray]:
        pop = self.space.check_pop(pop)
        out: dict[str, np.ndarray] = {}
        for name in self.metric_names:
            if name.startswith("latency@"):
                out[name] = self.tables[name.split("@", 1)[1]].predict(pop)
            elif name == "accuracy":
                out[name] = self.predictor.predict(pop)
            elif name == "macs":
                out[name] = cost.macs(self.space, pop)
            elif name == "params":
                out[name] = cost.params(self.space, pop)
            elif name == "proxy_accuracy":
                out[name] = proxy_accuracy(self.space, pop)
            elif name == "placement_score":
                out[name] = self.placement_scores[pop[:, -1]]
        return out

    def provenance(self) -> dict[str, Any]:
        prov: dict[str, Any] = {"space": self.space.name, "space_signature": self.space.signature()}
        for d, t in self.tables.items():
            prov[f"table_fingerprint@{d}"] = t.fingerprint_hash
            prov[f"table_hash@{d}"] = t.content_hash
        if self.predictor is not None:
            prov["predictor_version"] = self.predictor.version
        if self.placement_scores is not None:
            import hashlib

            prov["placement_ranking_hash"] = hashlib.sha256(self.placement_scores.tobytes()).hexdigest()[:12]
        return prov


def proxy_accuracy(space: SearchSpace, pop: np.ndarray) -> np.ndarray:
    """A stand-in for accuracy where no predictor exists: log MACs scaled to 0..1 over the space.

    Clearly not accuracy: it only says that bigger networks tend to be more accurate.
    """
    lo, hi = _macs_range(space)
    return (np.log(cost.macs(space, pop)) - lo) / (hi - lo)


def _macs_range(space: SearchSpace) -> tuple[float, float]:
    table = cost.cost_table(space, "macs")
    lo = table.fixed + sum(g.min(axis=1).min() for g in table.grids) + table.head.min()
    hi = table.fixed + sum(g.max() for g in table.grids) + table.head.max()
    return float(np.log(lo)), float(np.log(hi))
