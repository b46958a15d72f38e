"""Random search: the baseline every benchmark compares with."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Controller, encode_rows, fresh_unique, register


@register("random")
class RandomSearch(Controller):
    def __init__(self, space, objectives, seed: int, **_: Any):
        super().__init__(space, objectives, seed)
        self.seen: set[bytes] = set()

    def ask(self, n: int) -> np.ndarray:
        return fresh_unique(self.space, self.rng, self.space.sample(self.rng, n), self.seen, n)

    def tell(self, pop: np.ndarray, F: np.ndarray, cv: np.ndarray) -> None:
        self.seen.update(encode_rows(pop))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": [list(np.frombuffer(k, dtype=np.int64)) for k in self.seen]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = set(encode_rows(np.asarray(state["seen"], dtype=np.int64).reshape(-1, self.space.D)))
