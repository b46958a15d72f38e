"""NSGA-II: non-dominated sorting + crowding distance, binary tournaments, the space's crossover and mutation.

Constraints follow Deb's rule (feasible first, then by violation), so an infeasible budget still
yields a population (the least-violating ones) and never stalls the loop.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..pareto import constrained_sort, crowding_distance
from .base import Controller, encode_rows, fresh_unique, register


@register("evolution")
class Evolution(Controller):
    def __init__(self, space, objectives, seed: int, population: int = 48, crossover_prob: float = 0.9,
                 mutation_rate: float | None = None, **_: Any):
        super().__init__(space, objectives, seed)
        self.population = int(population)
        self.crossover_prob = float(crossover_prob)
        self.mutation_rate = float(mutation_rate) if mutation_rate else 1.5 / space.D
        self.pop = np.zeros((0, space.D), dtype=np.int64)
        self.F = np.zeros((0, len(objectives)))
        self.cv = np.zeros(0)
        self.seen: set[bytes] = set()

    # ------------------------------------------------------------------ ask / tell
    def ask(self, n: int) -> np.ndarray:
        if len(self.pop) < 2:
            cand = self.space.sample(self.rng, n)
        else:
            rank, crowd = self._rank_and_crowding()
            a = self.pop[self._tournament(rank, crowd, n)]
            b = self.pop[self._tournament(rank, crowd, n)]
            cross = self.rng.random(n) < self.crossover_prob
            child = np.where(cross[:, None], self.space.crossover(self.rng, a, b), a)
            cand = self.space.mutate(self.rng, child, self.mutation_rate)
        return fresh_unique(self.space, self.rng, cand, self.seen, n)

    def tell(self, pop: np.ndarray, F: np.ndarray, cv: np.ndarray) -> None:
        self.seen.update(encode_rows(pop))
        allpop = np.concatenate([self.pop, pop])
        keys = encode_rows(allpop)
        _, first = np.unique(np.array(keys, dtype=object), return_index=True)
        first = np.sort(first)
        self.pop, self.F, self.cv = allpop[first], np.concatenate([self.F, F])[first], np.concatenate([self.cv, cv])[first]
        self._select()

    # ------------------------------------------------------------------ NSGA-II pieces
    def _rank_and_crowding(self) -> tuple[np.ndarray, np.ndarray]:
        rank = constrained_sort(self.F, self.cv)
        crowd = np.zeros(len(rank))
        for r in np.unique(rank):
            idx = np.flatnonzero(rank == r)
            crowd[idx] = crowding_distance(self.F[idx]) if np.isfinite(self.F[idx]).all() else 0.0
        return rank, crowd

    def _tournament(self, rank: np.ndarray, crowd: np.ndarray, n: int) -> np.ndarray:
        i = self.rng.integers(0, len(rank), n)
        j = self.rng.integers(0, len(rank), n)
        better_i = (rank[i] < rank[j]) | ((rank[i] == rank[j]) & (crowd[i] > crowd[j]))
        return np.where(better_i, i, j)

    def _select(self) -> None:
        if len(self.pop) <= self.population:
            return
        rank, crowd = self._rank_and_crowding()
        order = np.lexsort((-crowd, rank))[: self.population]
        self.pop, self.F, self.cv = self.pop[order], self.F[order], self.cv[order]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pop": self.pop.tolist(), "F": _finite_list(self.F),
                "cv": _finite_list(self.cv), "seen": [list(np.frombuffer(k, dtype=np.int64)) for k in self.seen]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pop = np.asarray(state["pop"], dtype=np.int64).reshape(-1, self.space.D)
        self.F = np.asarray(state["F"], dtype=np.float64).reshape(-1, len(self.objectives))
        self.cv = np.asarray(state["cv"], dtype=np.float64)
        self.seen = set(encode_rows(np.asarray(state["seen"], dtype=np.int64).reshape(-1, self.space.D)))


def _finite_list(a: np.ndarray) -> list:
    """JSON has no infinity: store it as a large number (infeasible lookups)."""
    return np.where(np.isfinite(a), a, 1e300).tolist()
