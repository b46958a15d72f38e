"""Optuna's NSGA-II, TPE and random samplers through ask/tell, on Optuna storage.

The study lives in an RDB storage (SQLite file in the run folder by default, any SQLAlchemy URL
otherwise), so it resumes and opens in optuna-dashboard. The sampler is re-seeded from
``(seed, trials so far)`` at every ask, which makes an interrupted and resumed study identical to an
uninterrupted one (Optuna keeps a sampler's random state in memory only).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from ..errors import UserError
from .base import Controller, register

SAMPLERS = ("nsga2", "tpe", "random")


def _sampler(name: str, seed: int, population: int):
    import optuna

    # constraints travel with each trial (Trial.set_constraint, Optuna >= 5); samplers read them there
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError("--sampler", f"unknown Optuna sampler {name!r}", f"use one of {', '.join(SAMPLERS)}")


@register("optuna")
class OptunaController(Controller):
    def __init__(self, space, objectives, seed: int, sampler: str = "nsga2", storage: Optional[str] = None,
                 study_name: Optional[str] = None, population: int = 48, **_: Any):
        import optuna

        super().__init__(space, objectives, seed)
        optuna.logging.set_verbosity(logging.WARNING)
        self.sampler_name, self.population = sampler, int(population)
        _sampler(sampler, 0, self.population)  # validate the name early
        self.storage = storage  # None: in-memory (fast; a run folder gives a SQLite file instead)
        self.study_name = study_name or f"hwnas-{sampler}-{seed}"
        self.study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, load_if_exists=True,
            directions=["maximize" if o.direction == "max" else "minimize" for o in objectives])
        self.pending: dict[bytes, list[Any]] = {}
        self._fail_stale_trials()

    def _fail_stale_trials(self) -> None:
        """Trials asked but never told (an interrupted run) are marked failed, not left running."""
        import optuna

        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    def ask(self, n: int) -> np.ndarray:
        n_done = len(self.study.get_trials(deepcopy=False))
        # numpy's legacy seeding (inside Optuna) takes 32 bits only: mix (seed, n_done) into that range
        seed = int(np.random.SeedSequence([self.seed, n_done]).generate_state(1)[0])
        self.study.sampler = _sampler(self.sampler_name, seed, self.population)
        rows = []
        for _ in range(n):
            trial = self.study.ask()
            row = [d.choices.index(trial.suggest_categorical(d.name, list(_plain(d.choices))))
                   if not isinstance(d.choices[0], tuple) else
                   int(trial.suggest_categorical(d.name, list(range(len(d.choices)))))
                   for d in self.space.decisions]
            row = np.asarray(row, dtype=np.int64)
            self.pending.setdefault(row.tobytes(), []).append(trial)
            rows.append(row)
        return np.stack(rows)

    def tell(self, pop: np.ndarray, F: np.ndarray, cv: np.ndarray) -> None:
        import optuna

        for row, f, v in zip(np.asarray(pop, dtype=np.int64), F, cv):
            trials = self.pending.get(row.tobytes())
            if not trials:
                continue  # migrants from other islands: Optuna only learns from its own trials
            trial = trials.pop(0)
            values = [o.sign * x for o, x in zip(self.objectives, f)]
            if not np.isfinite(values).all():
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            trial.set_constraint("violation", float(v))
            self.study.tell(trial, values=[float(x) for x in values])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "storage": self.storage, "study_name": self.study_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)


def _plain(choices: tuple) -> tuple:
    """Optuna categorical choices must be None, bool, int, float or str."""
    return tuple(c.item() if hasattr(c, "item") else c for c in choices)
