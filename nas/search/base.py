"""The controller protocol (ask/tell, like Optuna) and the registry of controllers.

A controller proposes integer-encoded architectures with ``ask(n)`` and learns from ``tell(pop, F, cv)``
where ``F`` is the ``(n, m)`` minimisation matrix of the objectives and ``cv`` the total constraint
violation (0 = feasible). It never sees files, tables or predictors. ``state_dict()`` is JSON-serialisable,
so a run checkpoints after every generation and resumes exactly.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import UserError
from ..objectives import Objective


class DecisionSpace(Protocol):
    """What controllers need of a space (``SearchSpace`` and ``TabularSpace`` both provide it)."""

    n_choices: np.ndarray

    @property
    def D(self) -> int: ...

    @property
    def decision_names(self) -> list[str]: ...

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray: ...

    def mutate(self, rng: np.random.Generator, pop: np.ndarray, p: float, step_prob: float = 0.0) -> np.ndarray: ...

    def crossover(self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class Controller(ABC):
    name = "base"

    def __init__(self, space: DecisionSpace, objectives: list[Objective], seed: int):
        self.space, self.objectives, self.seed = space, list(objectives), int(seed)
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def ask(self, n: int) -> np.ndarray:
        """``n`` architectures to evaluate next, shape ``(n, D)``."""

    @abstractmethod
    def tell(self, pop: np.ndarray, F: np.ndarray, cv: np.ndarray) -> None:
        """Results for architectures returned by ``ask`` (or migrants from other islands)."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


REGISTRY: dict[str, Callable[..., Controller]] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return deco


def make_controller(name: str, space: DecisionSpace, objectives: list[Objective], seed: int,
                    **options: Any) -> Controller:
    from . import evolution, optuna_ctl, random_ctl, rl  # noqa: F401  (fill the registry)

    if name not in REGISTRY:
        raise UserError("--controller", f"unknown controller {name!r}", f"use one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](space, objectives, seed, **options)


def encode_rows(pop: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(pop, dtype=np.int64)]


def fresh_unique(space: DecisionSpace, rng: np.random.Generator, candidates: np.ndarray, seen: set[bytes],
                 n: int, max_tries: int = 20) -> np.ndarray:
    """Up to ``n`` rows of ``candidates`` not in ``seen`` (topped up with random samples, bounded tries)."""
    out, keys = [], set()
    pool = candidates
    for _ in range(max_tries):
        for row, key in zip(pool, encode_rows(pool)):
            if key not in seen and key not in keys:
                keys.add(key)
                out.append(row)
                if len(out) == n:
                    return np.stack(out)
        pool = space.sample(rng, max(n, 8))
    # the space is (nearly) exhausted: allow repeats rather than loop forever
    while len(out) < n:
        out.append(space.sample(rng, 1)[0])
    return np.stack(out)
