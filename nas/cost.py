"""Additive per-stage costs, vectorised over integer populations.

MACs, parameters and table latency all have the form ``fixed + sum over stages of cost(stage input,
stage option) + head(last width)``. :class:`AdditiveCost` stores every stage's costs as one flat array
and scores a population with one gather and one sum.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from .blocks import head_cost, stage_cost, stem_cost
from .space import SearchSpace, StageOption


class AdditiveCost:
    """``cost(pop) = fixed + sum_s grids[s][ctx_s, opt_s] + head[last width]``."""

    def __init__(self, space: SearchSpace, fixed: float, grids: list[np.ndarray], head: np.ndarray):
        for s, g in enumerate(grids):
            expected = (space.n_contexts(s), space.stages[s].n_options)
            if g.shape != expected:
                raise ValueError(f"grid {s} has shape {g.shape}, expected {expected}")
        self.space, self.fixed = space, float(fixed)
        self.grids = [np.asarray(g, dtype=np.float64) for g in grids]
        self.head = np.asarray(head, dtype=np.float64)
        self._flat = np.concatenate([g.ravel() for g in self.grids])
        sizes = [g.size for g in self.grids]
        self._offsets = np.cumsum([0] + sizes[:-1]).astype(np.int64)
        self._n_opt = np.array([g.shape[1] for g in self.grids], dtype=np.int64)

    @classmethod
    def tabulate(cls, space: SearchSpace, stage_fn: Callable[[StageOption], float], fixed: float,
                 head_fn: Callable[[int], float]) -> "AdditiveCost":
        grids = []
        for s, st in enumerate(space.stages):
            g = np.empty((space.n_contexts(s), st.n_options))
            for ctx in range(g.shape[0]):
                for opt in range(g.shape[1]):
                    g[ctx, opt] = stage_fn(space.stage_option(s, ctx, opt))
            grids.append(g)
        return cls(space, fixed, grids, np.array([head_fn(c) for c in space.head_cins], dtype=np.float64))

    def stage_terms(self, pop: np.ndarray) -> np.ndarray:
        """Per-stage costs, shape ``(n, S)``."""
        ctx, opt, _ = self.space.grid_index(pop)
        return self._flat[self._offsets + ctx * self._n_opt + opt]

    def __call__(self, pop: np.ndarray) -> np.ndarray:
        ctx, opt, head_ctx = self.space.grid_index(pop)
        return self._flat[self._offsets + ctx * self._n_opt + opt].sum(axis=1) + self.head[head_ctx] + self.fixed


@lru_cache(maxsize=16)
def _cost_tables(space: SearchSpace) -> tuple[AdditiveCost, AdditiveCost]:
    res = space.final_resolution
    m_stem, p_stem = stem_cost(space.frame)
    macs = AdditiveCost.tabulate(space, lambda o: stage_cost(o)[0], m_stem,
                                 lambda c: head_cost(space.frame, c, res)[0])
    params = AdditiveCost.tabulate(space, lambda o: stage_cost(o)[1], p_stem,
                                   lambda c: head_cost(space.frame, c, res)[1])
    return macs, params


def macs(space: SearchSpace, pop: np.ndarray) -> np.ndarray:
    """Multiply-accumulates per architecture (convolutions and linear layers, batch 1)."""
    return _cost_tables(space)[0](pop)


def params(space: SearchSpace, pop: np.ndarray) -> np.ndarray:
    """Trainable parameters per architecture."""
    return _cost_tables(space)[1](pop)


def cost_table(space: SearchSpace, kind: str) -> AdditiveCost:
    return _cost_tables(space)[{"macs": 0, "params": 1}[kind]]
