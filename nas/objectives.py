"""Objective and constraint names, directions, and the minimisation matrix controllers see.

Names: ``accuracy`` (max, from a predictor), ``latency@<device>`` (min, ms, from that device's table),
``macs`` and ``params`` (min), ``proxy_accuracy`` (max: a MACs-based stand-in, for spaces without a
predictor), or, for tabular spaces, any column written ``name:max`` / ``name:min``.
Constraints: ``<name><=<value>`` or ``<name>>=<value>``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import UserError

BUILTIN = {"accuracy": "max", "macs": "min", "params": "min", "proxy_accuracy": "max", "placement_score": "max"}


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "max" | "min"

    @property
    def device(self) -> str | None:
        return self.name.split("@", 1)[1] if self.name.startswith("latency@") else None

    @property
    def sign(self) -> float:
        return -1.0 if self.direction == "max" else 1.0


@dataclass(frozen=True)
class Constraint:
    name: str
    op: str  # "<=" | ">="
    bound: float

    def violation(self, values: np.ndarray) -> np.ndarray:
        """Relative amount by which ``values`` break the bound (0 where satisfied)."""
        scale = max(abs(self.bound), 1e-12)
        excess = values - self.bound if self.op == "<=" else self.bound - values
        return np.maximum(excess, 0.0) / scale

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.bound:g}"


def parse_objectives(text: str | list[str], tabular: bool = False) -> list[Objective]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise UserError("--objectives", "no objectives given", "e.g. accuracy,latency@cpu-ort-1t")
    out = []
    for item in items:
        name, _, direction = item.partition(":")
        if direction:
            if direction not in ("max", "min"):
                raise UserError("--objectives", f"{item!r}: direction must be max or min", "write name:max or name:min")
        elif name in BUILTIN:
            direction = BUILTIN[name]
        elif name.startswith("latency@") and len(name) > len("latency@"):
            direction = "min"
        elif tabular:
            raise UserError("--objectives", f"{item!r} has no direction", "write column:max or column:min")
        else:
            known = ", ".join([*BUILTIN, "latency@<device>"])
            raise UserError("--objectives", f"unknown objective {name!r}", f"use one of: {known}")
        out.append(Objective(name, direction))
    if len({o.name for o in out}) != len(out):
        raise UserError("--objectives", "an objective is listed twice", "list each once")
    return out


_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_@.\-]+?)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


def parse_constraint(text: str, option: str = "--constraint") -> Constraint:
    m = _CONSTRAINT.match(text)
    if not m:
        raise UserError(option, f"cannot parse {text!r}", "write e.g. \"latency@cpu-ort-1t<=3.5\"")
    try:
        bound = float(m.group(3))
    except ValueError:
        raise UserError(option, f"bad number in {text!r}", "write e.g. \"macs<=3e8\"") from None
    return Constraint(m.group(1), m.group(2), bound)


def minimisation_matrix(objectives: list[Objective], values: dict[str, np.ndarray]) -> np.ndarray:
    """``(n, m)`` matrix with maximised objectives negated; NaN (infeasible lookups) become +inf."""
    F = np.stack([o.sign * np.asarray(values[o.name], dtype=np.float64) for o in objectives], axis=1)
    return np.where(np.isnan(F), np.inf, F)


def total_violation(constraints: list[Constraint], values: dict[str, np.ndarray], n: int) -> np.ndarray:
    v = np.zeros(n)
    for c in constraints:
        vals = np.asarray(values[c.name], dtype=np.float64)
        v += np.where(np.isnan(vals), np.inf, c.violation(vals))
    return v
