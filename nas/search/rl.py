"""REINFORCE over the per-decision choices (independent categorical logits, as MnasNet / multi-path NAS).

Reward (MnasNet): ``accuracy * (latency / target) ** w`` with ``w = -0.07``; or, with ``reward="absolute"``
(TuNAS, Bender et al. 2020), ``accuracy + w * |latency / target - 1|``, which pulls toward the target from both
sides instead of paying a bonus for every millisecond under it. The accuracy term is the first
maximised objective, the latency term the first minimised one. One controller serves one target; several
targets run as separate controllers (islands) so that together they trace the front.
Constraint violations are subtracted from the reward; infeasible lookups get the batch's worst reward.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .base import Controller, register


class CategoricalPolicy:
    """Independent softmax over each decision's choices, trained with Adam on the REINFORCE gradient."""

    def __init__(self, n_choices: np.ndarray, lr: float = 0.1, entropy: float = 0.0):
        self.n_choices = np.asarray(n_choices, dtype=np.int64)
        C = int(self.n_choices.max())
        self.mask = np.arange(C)[None, :] < self.n_choices[:, None]
        self.logits = np.zeros((len(self.n_choices), C))
        self.lr, self.entropy = lr, entropy
        self.m = np.zeros_like(self.logits)
        self.v = np.zeros_like(self.logits)
        self.t = 0

    def probs(self) -> np.ndarray:
        z = np.where(self.mask, self.logits, -np.inf)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        gumbel = -np.log(-np.log(rng.random((n, *self.logits.shape)) + 1e-300) + 1e-300)
        z = np.where(self.mask[None], self.logits[None] + gumbel, -np.inf)
        return z.argmax(axis=2).astype(np.int64)

    def most_likely(self) -> np.ndarray:
        return np.where(self.mask, self.logits, -np.inf).argmax(axis=1).astype(np.int64)

    def update(self, actions: np.ndarray, advantages: np.ndarray) -> None:
        p = self.probs()
        onehot = np.zeros((len(actions), *self.logits.shape))
        np.put_along_axis(onehot, actions[:, :, None], 1.0, axis=2)
        grad = (advantages[:, None, None] * (onehot - p[None])).mean(axis=0)
        if self.entropy:
            logp = np.where(self.mask, np.log(np.maximum(p, 1e-12)), 0.0)
            ent = -(p * logp).sum(axis=1, keepdims=True)
            grad += self.entropy * (-p * (logp + ent))
        grad = np.where(self.mask, grad, 0.0)
        self.t += 1
        b1, b2 = 0.9, 0.999
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad * grad
        mhat, vhat = self.m / (1 - b1 ** self.t), self.v / (1 - b2 ** self.t)
        self.logits += self.lr * mhat / (np.sqrt(vhat) + 1e-8)  # gradient ascent on expected reward

    def state_dict(self) -> dict[str, Any]:
        return {"logits": self.logits.tolist(), "m": self.m.tolist(), "v": self.v.tolist(), "t": self.t}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.logits, self.m, self.v = (np.asarray(s[k], dtype=np.float64) for k in ("logits", "m", "v"))
        self.t = int(s["t"])


def mnasnet_reward(acc: np.ndarray, lat: Optional[np.ndarray], target: Optional[float], w: float) -> np.ndarray:
    """``acc * (lat / target) ** w``; without a latency term, the accuracy term alone."""
    if lat is None or target is None:
        return acc
    return acc * np.power(np.maximum(lat, 1e-12) / target, w)


def absolute_reward(acc: np.ndarray, lat: Optional[np.ndarray], target: Optional[float], w: float) -> np.ndarray:
    """``acc + w * |lat / target - 1|`` (``w < 0``); without a latency term, the accuracy term alone."""
    if lat is None or target is None:
        return acc
    return acc + w * np.abs(lat / target - 1.0)


REWARDS = {"mnasnet": mnasnet_reward, "absolute": absolute_reward}


@register("rl")
class Reinforce(Controller):
    def __init__(self, space, objectives, seed: int, target: Optional[float] = None, w: float = -0.07,
                 lr: float = 0.1, entropy: float = 0.0, baseline_decay: float = 0.9, reward: str = "mnasnet",
                 **_: Any):
        super().__init__(space, objectives, seed)
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose one of {sorted(REWARDS)}")
        self.reward_fn = REWARDS[reward]
        self.policy = CategoricalPolicy(space.n_choices, lr, entropy)
        self.target, self.w, self.decay = target, float(w), float(baseline_decay)
        self.acc_idx = next((i for i, o in enumerate(objectives) if o.direction == "max"), 0)
        self.lat_idx = next((i for i, o in enumerate(objectives) if o.direction == "min"), None)
        self.baseline: Optional[float] = None
        self.scale: Optional[float] = None

    def ask(self, n: int) -> np.ndarray:
        return self.policy.sample(self.rng, n)

    def reward(self, F: np.ndarray, cv: np.ndarray) -> np.ndarray:
        obj = [o.sign * F[:, i] for i, o in enumerate(self.objectives)]  # back to natural units
        acc = obj[self.acc_idx]
        lat = obj[self.lat_idx] if self.lat_idx is not None else None
        r = self.reward_fn(acc, lat, self.target, self.w) - cv
        bad = ~np.isfinite(r)
        if bad.all():
            return np.zeros_like(r)
        r[bad] = r[~bad].min() - abs(r[~bad]).mean() * 0.1
        return r

    def tell(self, pop: np.ndarray, F: np.ndarray, cv: np.ndarray) -> None:
        r = self.reward(F, cv)
        mean, std = float(r.mean()), float(r.std())
        if self.baseline is None:
            self.baseline, self.scale = mean, std or 1.0
        adv = (r - self.baseline) / (self.scale + 1e-12)
        self.policy.update(np.asarray(pop, dtype=np.int64), adv)
        self.baseline = self.decay * self.baseline + (1 - self.decay) * mean
        self.scale = self.decay * self.scale + (1 - self.decay) * (std or self.scale)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "policy": self.policy.state_dict(), "baseline": self.baseline,
                "scale": self.scale, "target": self.target}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.policy.load_state_dict(state["policy"])
        self.baseline, self.scale, self.target = state["baseline"], state["scale"], state["target"]
