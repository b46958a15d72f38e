"""Closed-form MACs and parameters, and additive per-stage costs vectorised over integer populations.

MACs, parameters and table latency all have the form ``fixed + sum over stages of cost(stage input,
stage option) + head(last width)``. :class:`AdditiveCost` stores every stage's costs as one flat array
and scores a population with one gather and one sum. Nothing here imports torch, so scoring (and every
search worker) starts without it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from .space import Arch, Frame, SearchSpace, StageOption


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's channel rounding (``timm.layers.make_divisible``), without importing torch."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


def _conv_out(h: int, stride: int) -> int:
    return (h - 1) // stride + 1


def ir_layer_cost(cin: int, cout: int, hin: int, stride: int, kernel: int, expansion: float,
                  se: bool) -> tuple[int, int]:
    """(MACs, params) of one timm InvertedResidual block with batch norm and optional SE."""
    mid = make_divisible(cin * expansion)
    hout = _conv_out(hin, stride)
    macs = hin * hin * cin * mid + hout * hout * mid * kernel * kernel + hout * hout * mid * cout
    params = cin * mid + mid * kernel * kernel + mid * cout + 2 * (mid + mid + cout)
    if se:
        rd = make_divisible(mid * 0.25)
        macs += 2 * mid * rd
        params += 2 * mid * rd + rd + mid
    return macs, params


def stage_cost(option: StageOption) -> tuple[int, int]:
    """(MACs, params) of a whole stage option: its first (strided) block plus ``depth - 1`` repeats."""
    m0, p0 = ir_layer_cost(option.cin, option.cout, option.hin, option.stride, option.kernel,
                           option.expansion, option.se)
    m1, p1 = ir_layer_cost(option.cout, option.cout, option.hout, 1, option.kernel, option.expansion, option.se)
    return m0 + (option.depth - 1) * m1, p0 + (option.depth - 1) * p1


def stem_cost(frame: Frame) -> tuple[int, int]:
    hs = _conv_out(frame.input_size, frame.stem_stride)
    h1 = _conv_out(hs, frame.first_stride)
    c0, c1, k = frame.stem_channels, frame.first_channels, frame.first_kernel
    macs = hs * hs * frame.in_chans * c0 * 9 + h1 * h1 * c0 * k * k + h1 * h1 * c0 * c1
    params = frame.in_chans * c0 * 9 + 2 * c0 + c0 * k * k + 2 * c0 + c0 * c1 + 2 * c1
    return macs, params


def head_cost(frame: Frame, cin: int, resolution: int) -> tuple[int, int]:
    hc, nf, nc = frame.head_channels, frame.head_features, frame.num_classes
    macs = resolution * resolution * cin * hc + hc * nf + nf * nc
    params = cin * hc + 2 * hc + hc * nf + nf + nf * nc + nc
    return macs, params



def stage_choice_option(arch: Arch, stage: int) -> StageOption:
    """The :class:`StageOption` (with its input shape) that ``arch`` uses at ``stage``."""
    f = arch.frame
    h = _conv_out(_conv_out(f.input_size, f.stem_stride), f.first_stride)
    cin = f.first_channels
    for i, sc in enumerate(arch.stages):
        if i == stage:
            return StageOption(i, cin, h, sc.stride, sc.depth, sc.kernel, sc.expansion, sc.channels, sc.se, sc.act)
        h, cin = _conv_out(h, sc.stride), sc.channels
    raise IndexError(stage)





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
