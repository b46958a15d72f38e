"""Pareto tools on minimisation matrices ``F`` of shape ``(n, m)``: dominance, sorting, crowding, hypervolume.

Objectives to maximise are negated before they get here (see :mod:`nas.objectives`).
"""
from __future__ import annotations

import numpy as np


def dominance_matrix(F: np.ndarray) -> np.ndarray:
    """``D[i, j]`` is True when row ``i`` dominates row ``j`` (no worse everywhere, better somewhere)."""
    F = np.asarray(F, dtype=np.float64)
    le = (F[:, None, :] <= F[None, :, :]).all(axis=2)
    lt = (F[:, None, :] < F[None, :, :]).any(axis=2)
    return le & lt


def non_dominated_mask(F: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Rows of ``F`` that no other row dominates. Handles millions of rows (sort, then filter by chunks)."""
    F = np.asarray(F, dtype=np.float64)
    n, m = F.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    if m == 1:
        return F[:, 0] == F[:, 0].min()
    order = np.lexsort(F.T[::-1])  # by first objective, ties by the next ones
    if m == 2:
        Fs = F[order]
        best_before = np.minimum.accumulate(np.concatenate([[np.inf], Fs[:-1, 1]]))
        kept_sorted = Fs[:, 1] < best_before
        # an exact duplicate of a kept point is not dominated either: it shares its run's verdict
        new_run = np.concatenate([[True], (Fs[1:] != Fs[:-1]).any(axis=1)])
        run_id = np.cumsum(new_run) - 1
        kept_sorted = kept_sorted[np.flatnonzero(new_run)][run_id]
        keep = np.zeros(n, dtype=bool)
        keep[order[kept_sorted]] = True
        return keep
    front = np.zeros((0, m))
    keep = np.zeros(n, dtype=bool)
    for start in range(0, n, chunk):
        idx = order[start:start + chunk]
        cand = F[idx]
        if len(front):
            dominated = _dominated_by(cand, front)
            idx, cand = idx[~dominated], cand[~dominated]
        if len(cand):
            inner = dominance_matrix(cand).any(axis=0)
            idx, cand = idx[~inner], cand[~inner]
        if len(cand):
            # earlier rows are lexicographically smaller, so new points never dominate the front
            keep[idx] = True
            front = np.concatenate([front, cand])
    return keep


def _dominated_by(cand: np.ndarray, front: np.ndarray, block: int = 512) -> np.ndarray:
    out = np.zeros(len(cand), dtype=bool)
    for s in range(0, len(front), block):
        f = front[s:s + block]
        le = (f[None, :, :] <= cand[:, None, :]).all(axis=2)
        lt = (f[None, :, :] < cand[:, None, :]).any(axis=2)
        out |= (le & lt).any(axis=1)
    return out


def non_dominated_sort(F: np.ndarray) -> np.ndarray:
    """Front rank of every row (0 = non-dominated), by peeling fronts off the dominance matrix."""
    F = np.asarray(F, dtype=np.float64)
    n = F.shape[0]
    ranks = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return ranks
    D = dominance_matrix(F)
    count = D.sum(axis=0)
    current = np.flatnonzero(count == 0)
    r = 0
    while current.size:
        ranks[current] = r
        count = count - D[current].sum(axis=0)
        count[ranks >= 0] = -1
        current = np.flatnonzero(count == 0)
        r += 1
    return ranks


def constrained_sort(F: np.ndarray, violation: np.ndarray) -> np.ndarray:
    """Deb's rule: feasible rows ranked by fronts; infeasible ones after them, by total violation."""
    violation = np.asarray(violation, dtype=np.float64)
    feasible = violation <= 0
    ranks = np.empty(len(F), dtype=np.int64)
    ranks[feasible] = non_dominated_sort(F[feasible])
    top = ranks[feasible].max() + 1 if feasible.any() else 0
    inf_idx = np.flatnonzero(~feasible)
    order = np.argsort(violation[inf_idx], kind="stable")
    ranks[inf_idx[order]] = top + np.arange(len(inf_idx))
    return ranks


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance (boundary points get infinity)."""
    F = np.asarray(F, dtype=np.float64)
    n, m = F.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(F[:, j], kind="stable")
        f = F[order, j]
        span = f[-1] - f[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (f[2:] - f[:-2]) / span
    return dist


def hypervolume(F: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume dominated by ``F`` and bounded by ``ref`` (minimisation).

    2 objectives: one sweep; 3 objectives: sweep over the third with exact 2-D slices;
    more: recursive slicing (exact, exponential: for small fronts only).
    """
    F = np.asarray(F, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if F.size == 0:
        return 0.0
    F = F[(F < ref).all(axis=1)]
    if len(F) == 0:
        return 0.0
    F = F[non_dominated_mask(F)]
    return _hv(F, ref)


def _hv(F: np.ndarray, ref: np.ndarray) -> float:
    m = F.shape[1]
    if m == 1:
        return float(ref[0] - F[:, 0].min())
    if m == 2:
        order = np.argsort(F[:, 0], kind="stable")
        x, y = F[order, 0], F[order, 1]
        y_run = np.minimum.accumulate(y)
        widths = np.diff(np.concatenate([x, [ref[0]]]))
        return float(np.sum(widths * (ref[1] - y_run)))
    order = np.argsort(F[:, -1], kind="stable")
    F = F[order]
    total = 0.0
    for i in range(len(F)):
        upper = F[i + 1, -1] if i + 1 < len(F) else ref[-1]
        depth = upper - F[i, -1]
        if depth > 0:
            slab = F[: i + 1, :-1]
            total += depth * _hv(slab[non_dominated_mask(slab)], ref[:-1])
    return float(total)
