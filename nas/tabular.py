"""Tabular search spaces: a CSV whose decision columns define the space and whose other columns are scores.

This is the form of tabular NAS benchmarks (e.g. NAS-Bench-201 cells with HW-NAS-Bench latencies).
Each decision column's distinct values are its choices; a combination that is not a row is infeasible.
Evaluation is a vectorised lookup.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError
from .io import read_csv
from .objectives import Constraint, Objective
from .space import Decision, EncodedSpace, uniform_crossover, uniform_mutation


class TabularSpace(EncodedSpace):
    """The decision part of a tabular benchmark, with the same encoding interface as :class:`SearchSpace`."""

    def __init__(self, frame: pd.DataFrame, decision_cols: list[str], source: str = "<frame>"):
        missing = [c for c in decision_cols if c not in frame.columns]
        if missing:
            raise UserError(source, f"decision column(s) {', '.join(missing)} not in the table",
                            f"columns are: {', '.join(map(str, frame.columns))}")
        if not decision_cols:
            raise UserError("--decisions", "no decision columns given", "e.g. --decisions op0,op1,op2")
        if frame[decision_cols].isna().any().any():
            raise UserError(source, "decision columns have empty cells", "fill or drop those rows")
        self.frame, self.source = frame.reset_index(drop=True), source
        self.name = Path(source).stem
        choices = [tuple(sorted(frame[c].unique(), key=_sort_key)) for c in decision_cols]
        self.decisions = tuple(Decision(c, ch) for c, ch in zip(decision_cols, choices))
        self.n_choices = np.array([len(ch) for ch in choices], dtype=np.int64)
        codes = np.stack([pd.Categorical(frame[c], categories=list(ch)).codes.astype(np.int64)
                          for c, ch in zip(decision_cols, choices)], axis=1)
        self._radix = np.array([int(np.prod(self.n_choices[j + 1:])) for j in range(self.D)], dtype=np.int64)
        keys = codes @ self._radix
        if len(np.unique(keys)) != len(keys):
            raise UserError(source, "two rows share the same decisions", "deduplicate the table")
        order = np.argsort(keys)
        self._keys, self._rows = keys[order], order
        self.gene_groups = np.arange(self.D)

    @classmethod
    def load(cls, path: str | os.PathLike, decisions: list[str]) -> "TabularSpace":
        return cls(read_csv(path, "tabular space"), decisions, str(path))

    @property
    def cardinality(self) -> int:
        return len(self.frame)

    def mutate(self, rng: np.random.Generator, pop: np.ndarray, p: float, step_prob: float = 0.0) -> np.ndarray:
        return uniform_mutation(rng, np.asarray(pop, dtype=np.int64), self.n_choices, p, step_prob)

    def crossover(self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return uniform_crossover(rng, np.asarray(a), np.asarray(b), self.gene_groups)

    def rows(self, pop: np.ndarray) -> np.ndarray:
        """Row index of each architecture in the table, -1 where the combination is not a row."""
        keys = np.asarray(pop, dtype=np.int64) @ self._radix
        pos = np.clip(np.searchsorted(self._keys, keys), 0, len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, self._rows[pos], -1)

    def arch_ids(self, pop: np.ndarray) -> list[str]:
        return ["|".join(str(self.decisions[j].choices[v]) for j, v in enumerate(row)) for row in pop]

    def decode(self, vec: np.ndarray) -> dict[str, Any]:
        return {d.name: d.choices[v] for d, v in zip(self.decisions, vec)}

class TabularEvaluator:
    """Looks up objective columns; combinations missing from the table come back as NaN (infeasible)."""

    def __init__(self, space: TabularSpace, objectives: list[Objective], constraints: list[Constraint] = ()):
        self.space, self.objectives, self.constraints = space, list(objectives), list(constraints)
        cols = {o.name for o in objectives} | {c.name for c in constraints}
        missing = sorted(c for c in cols if c not in space.frame.columns)
        if missing:
            raise UserError(space.source, f"no column {missing[0]!r} for an objective or constraint",
                            f"columns are: {', '.join(map(str, space.frame.columns))}")
        self._values = {}
        for c in sorted(cols):
            v = pd.to_numeric(space.frame[c], errors="coerce").to_numpy(np.float64)
            if np.isnan(v).all():
                raise UserError(space.source, f"column {c!r} is not numeric", "objectives must be numbers")
            self._values[c] = v
        self.metric_names = [o.name for o in objectives] + sorted(cols - {o.name for o in objectives})

    def evaluate(self, pop: np.ndarray) -> dict[str, np.ndarray]:
        rows = self.space.rows(pop)
        found = rows >= 0
        out = {}
        for name in self.metric_names:
            v = np.full(len(rows), np.nan)
            v[found] = self._values[name][rows[found]]
            out[name] = v
        out["_found"] = found
        return out

    def provenance(self) -> dict[str, Any]:
        import hashlib

        blob = self.space.frame.to_csv(index=False).encode()
        return {"table": self.space.source, "table_hash": hashlib.sha256(blob).hexdigest()[:16]}


def _sort_key(v: Any):
    return (0, v) if isinstance(v, (int, float, np.integer, np.floating)) else (1, str(v))


def subspace_population(space, keep: dict[str, int]) -> np.ndarray:
    """Every architecture of ``space`` whose decisions use only their first ``keep[suffix]`` choices.

    ``keep`` maps a decision suffix (``kernel``, ``expansion``...) to how many choices stay; decisions not
    named keep one choice. Gives exhaustive, known-front tabular benchmarks built from a real space.
    """
    import itertools

    ranges = [range(min(keep.get(d.name.split(".")[-1], 1), len(d.choices))) for d in space.decisions]
    return np.array(list(itertools.product(*ranges)), dtype=np.int64)


def table_from_space(space, evaluator, pop: np.ndarray) -> pd.DataFrame:
    """A tabular benchmark: decision columns (choice values) plus every metric the evaluator gives."""
    values = evaluator.evaluate(pop)
    cols = {d.name: [str(d.choices[v]) for v in pop[:, j]] for j, d in enumerate(space.decisions)}
    return pd.DataFrame({**cols, **{m: values[m] for m in evaluator.metric_names}})
