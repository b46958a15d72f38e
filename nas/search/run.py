"""``nas search``: islands of controllers, a shared evaluation budget, checkpoints, and the run folder.

An *island* is one controller with its own seed (and, for ``rl``, its own latency target). Islands run
in-process (``workers=0``) or as Ray actors; either way they are stepped in a fixed order, so the same
seed gives the same front. After every generation the driver writes ``state/`` (controller states and
every evaluated architecture); a killed run started again with the same command continues from there.
A Ray actor that dies is re-created from the last checkpointed state and its step is retried.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import __version__
from ..errors import UserError, refuse_changed_settings
from ..io import read_json, write_json
from ..objectives import (Constraint, Objective, minimisation_matrix, parse_constraint, parse_objectives,
                          total_violation)
from ..progress import progress_bar
from .base import encode_rows, make_controller

DEFAULT_OBJECTIVES = ["accuracy", "latency@cpu-ort-1t"]


@dataclass
class SearchConfig:
    space: str = "mobilenetv3_cifar"
    table: Optional[str] = None
    decisions: Optional[list[str]] = None
    objectives: list[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    constraints: list[str] = field(default_factory=list)
    controller: str = "evolution"
    sampler: str = "nsga2"
    evaluations: int = 3000
    population: int = 48
    islands: Optional[int] = None
    targets: Optional[list[float]] = None
    migrate_every: int = 5
    seed: int = 0
    tables_dir: Optional[str] = None
    predictor: Optional[str] = None
    placement_ranking: Optional[str] = None
    storage: Optional[str] = None
    dataset: str = "cifar10"  # without --predictor: predictors/<space>/<dataset>.json

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- problem
@dataclass
class Problem:
    space: Any
    evaluator: Any
    objectives: list[Objective]
    constraints: list[Constraint]
    tabular: bool

    def score(self, pop: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        values = self.evaluator.evaluate(pop)
        F = minimisation_matrix(self.objectives, values)
        cv = total_violation(self.constraints, values, len(pop))
        return values, F, cv


def build_problem(cfg: SearchConfig) -> Problem:
    constraints = [parse_constraint(c) for c in cfg.constraints]
    if cfg.table:
        from ..tabular import TabularEvaluator, TabularSpace

        objectives = parse_objectives(cfg.objectives, tabular=True)
        space = TabularSpace.load(cfg.table, list(cfg.decisions or []))
        return Problem(space, TabularEvaluator(space, objectives, constraints), objectives, constraints, True)
    from ..evaluator import Evaluator
    from ..space import SearchSpace

    objectives = parse_objectives(cfg.objectives)
    space = SearchSpace.load(cfg.space)
    evaluator = Evaluator.build(space, objectives, constraints, cfg.tables_dir, cfg.predictor,
                                cfg.placement_ranking, cfg.dataset)
    return Problem(space, evaluator, objectives, constraints, False)


def default_targets(problem: Problem, k: int, seed: int) -> list[float]:
    """Latency targets for ``k`` RL controllers: quantiles of the minimised objective over random samples."""
    lat = next((i for i, o in enumerate(problem.objectives) if o.direction == "min"), None)
    if lat is None:
        return [None] * k
    pop = problem.space.sample(np.random.default_rng(seed), 4000)
    _, F, _ = problem.score(pop)
    vals = F[:, lat][np.isfinite(F[:, lat])]
    qs = np.linspace(0.1, 0.9, k) if k > 1 else [0.5]
    return [float(np.quantile(vals, q)) for q in qs]


# ---------------------------------------------------------------------- islands
class Island:
    """One controller and the problem it scores; the unit that runs as a Ray actor."""

    def __init__(self, cfg: SearchConfig, index: int, options: dict[str, Any]):
        self.problem = build_problem(cfg)
        seed = cfg.seed * 7919 + index
        self.controller = make_controller(cfg.controller, self.problem.space, self.problem.objectives, seed,
                                          **options)

    def step(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        pop = self.controller.ask(n)
        values, F, cv = self.problem.score(pop)
        self.controller.tell(pop, F, cv)
        return pop, values

    def immigrate(self, pop: np.ndarray, values: dict[str, np.ndarray]) -> None:
        F = minimisation_matrix(self.problem.objectives, values)
        cv = total_violation(self.problem.constraints, values, len(pop))
        self.controller.tell(pop, F, cv)

    def elite(self, k: int) -> np.ndarray:
        pop = getattr(self.controller, "pop", None)
        return np.zeros((0, self.problem.space.D), dtype=np.int64) if pop is None else pop[:k]

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state)


class LocalIslands:
    def __init__(self, cfg: SearchConfig, options: list[dict[str, Any]]):
        self.islands = [Island(cfg, i, o) for i, o in enumerate(options)]

    def step(self, ns: list[int], states: list[dict]) -> list[tuple[np.ndarray, dict]]:
        return [isl.step(n) if n > 0 else _empty(isl) for isl, n in zip(self.islands, ns)]

    def call(self, i: int, method: str, *args):
        return getattr(self.islands[i], method)(*args)

    def close(self) -> None:
        pass


class RayIslands:
    """Islands as Ray actors. A dead actor is re-created from its last state and the step retried."""

    def __init__(self, cfg: SearchConfig, options: list[dict[str, Any]], max_retries: int = 3):
        import ray

        self.cfg, self.options, self.max_retries = cfg, options, max_retries
        self._cls = ray.remote(num_cpus=1)(Island)
        self.actors = [self._cls.remote(cfg, i, o) for i, o in enumerate(options)]
        self.restarts = 0

    def _respawn(self, i: int, state: Optional[dict]) -> None:
        import ray

        self.actors[i] = self._cls.remote(self.cfg, i, self.options[i])
        if state is not None:
            ray.get(self.actors[i].load_state_dict.remote(state))
        self.restarts += 1

    def step(self, ns: list[int], states: list[Optional[dict]]) -> list[tuple[np.ndarray, dict]]:
        import ray
        from ray.exceptions import RayActorError

        refs = [a.step.remote(n) if n > 0 else None for a, n in zip(self.actors, ns)]
        out = []
        for i, ref in enumerate(refs):
            if ref is None:
                out.append((np.zeros((0, 0), dtype=np.int64), {}))
                continue
            for attempt in range(self.max_retries + 1):
                try:
                    out.append(ray.get(ref))
                    break
                except RayActorError:
                    if attempt == self.max_retries:
                        raise
                    self._respawn(i, states[i])
                    ref = self.actors[i].step.remote(ns[i])
        return out

    def call(self, i: int, method: str, *args):
        import ray

        return ray.get(getattr(self.actors[i], method).remote(*args))

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


def _empty(isl: Island) -> tuple[np.ndarray, dict]:
    return np.zeros((0, isl.problem.space.D), dtype=np.int64), {}


# ---------------------------------------------------------------------- archive
class Archive:
    """Every distinct architecture evaluated, in order, with its metrics, island and generation."""

    def __init__(self, D: int, metric_names: list[str]):
        self.D, self.metric_names = D, list(metric_names)
        self.pop = np.zeros((0, D), dtype=np.int64)
        self.values = {m: np.zeros(0) for m in self.metric_names}
        self.island = np.zeros(0, dtype=np.int64)
        self.generation = np.zeros(0, dtype=np.int64)
        self.keys: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.pop)

    def add(self, pop: np.ndarray, values: dict[str, np.ndarray], island: int, generation: int, cap: int) -> int:
        new = []
        for i, k in enumerate(encode_rows(pop)):
            if k not in self.keys and len(self) + len(new) < cap:
                self.keys.add(k)
                new.append(i)
        if new:
            idx = np.asarray(new)
            self.pop = np.concatenate([self.pop, pop[idx]])
            for m in self.metric_names:
                self.values[m] = np.concatenate([self.values[m], np.asarray(values[m], dtype=np.float64)[idx]])
            self.island = np.concatenate([self.island, np.full(len(idx), island)])
            self.generation = np.concatenate([self.generation, np.full(len(idx), generation)])
        return len(new)

    def save(self, path: Path) -> None:
        from ..io import atomic_path

        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, pop=self.pop, island=self.island, generation=self.generation,
                         **{f"v_{i}": self.values[m] for i, m in enumerate(self.metric_names)})

    @classmethod
    def load(cls, path: Path, D: int, metric_names: list[str], count: int) -> "Archive":
        import zipfile

        arc = cls(D, metric_names)
        try:
            with np.load(path, allow_pickle=False) as z:
                arc.pop = z["pop"][:count].astype(np.int64)
                arc.island, arc.generation = z["island"][:count], z["generation"][:count]
                arc.values = {m: z[f"v_{i}"][:count] for i, m in enumerate(metric_names)}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(path, f"damaged search state ({type(e).__name__})",
                            "delete the run folder's state/ to start the search over, or choose a new --out") from None
        arc.keys = set(encode_rows(arc.pop))
        return arc

    def subset(self, n: int) -> "Archive":
        """The first ``n`` evaluations (anytime performance at a smaller budget)."""
        arc = Archive(self.D, self.metric_names)
        arc.pop, arc.island, arc.generation = self.pop[:n], self.island[:n], self.generation[:n]
        arc.values = {m: v[:n] for m, v in self.values.items()}
        return arc


# ---------------------------------------------------------------------- the run
@dataclass
class SearchResult:
    config: SearchConfig
    problem: Problem
    archive: Archive
    generations: int
    wall_time_s: float
    out: Optional[Path]
    restarts: int = 0
    targets: Optional[list[float]] = None

    def front_mask(self) -> np.ndarray:
        from ..pareto import non_dominated_mask

        F = minimisation_matrix(self.problem.objectives, self.archive.values)
        cv = total_violation(self.problem.constraints, self.archive.values, len(self.archive))
        mask = np.zeros(len(F), dtype=bool)
        ok = (cv <= 0) & np.isfinite(F).all(axis=1)
        mask[np.flatnonzero(ok)[non_dominated_mask(F[ok])]] = True
        return mask


def _island_options(cfg: SearchConfig, problem: Problem, k: int) -> tuple[list[dict], Optional[list[float]]]:
    base: dict[str, Any] = {"population": cfg.population, "sampler": cfg.sampler}
    if cfg.controller == "rl":
        targets = cfg.targets or default_targets(problem, k, cfg.seed)
        return [{**base, "target": t} for t in targets], targets
    if cfg.controller == "optuna":
        return [{**base, "storage": cfg.storage, "study_name": f"hwnas-{cfg.sampler}-seed{cfg.seed}-island{i}"}
                for i in range(k)], None
    return [dict(base) for _ in range(k)], None


def _n_islands(cfg: SearchConfig) -> int:
    if cfg.controller == "rl" and cfg.targets:
        return len(cfg.targets)
    if cfg.islands is not None:
        if cfg.islands < 1:
            raise UserError("--islands", f"must be at least 1, got {cfg.islands}", "give a positive number")
        return cfg.islands
    return 4 if cfg.controller == "rl" else 1


def _check_config(cfg: SearchConfig) -> None:
    if cfg.evaluations < 1:
        raise UserError("--evaluations", f"must be positive, got {cfg.evaluations}", "e.g. --evaluations 1000")
    if cfg.population < 2:
        raise UserError("--population", f"must be at least 2, got {cfg.population}", "e.g. --population 48")
    if cfg.table and not cfg.decisions:
        raise UserError("--decisions", "a tabular search needs its decision columns", "e.g. --decisions op0,op1")
    # options of one controller given to another would be ignored without a word
    if cfg.targets and cfg.controller != "rl":
        raise UserError("--targets", f"only the rl controller takes latency targets, not {cfg.controller}",
                        "add --controller rl, or drop --targets")
    if cfg.controller != "optuna" and (cfg.storage or cfg.sampler != SearchConfig.sampler):
        option = "--storage" if cfg.storage else "--sampler"
        raise UserError(option, f"only the optuna controller takes it, not {cfg.controller}",
                        f"add --controller optuna, or drop {option}")


def run_search(cfg: SearchConfig, out: Optional[str | Path] = None, workers: int = 0,
               ray_address: Optional[str] = None, quiet: bool = False, stop_after: Optional[int] = None) -> SearchResult:
    """Run (or resume) a search. ``stop_after`` ends after that many generations (tests of resume)."""
    _check_config(cfg)
    out = Path(out) if out else None
    state_dir = out / "state" if out else None
    if cfg.controller == "optuna" and cfg.storage is None and state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.replace(cfg, storage=f"sqlite:///{(state_dir / 'optuna.db').resolve()}")
    problem = build_problem(cfg)
    k = _n_islands(cfg)
    options, targets = _island_options(cfg, problem, k)
    if cfg.controller == "rl" and not cfg.targets:
        cfg = dataclasses.replace(cfg, targets=targets)
    metric_names = list(problem.evaluator.metric_names)
    archive, generation, states, elapsed = Archive(problem.space.D, metric_names), 0, [None] * k, 0.0
    if state_dir is not None and (state_dir / "checkpoint.json").exists():
        archive, generation, states, elapsed = _resume(state_dir, cfg, problem, metric_names)

    if workers > 0 or ray_address:
        from ..parallel import ray_session
        ctx = ray_session(workers, ray_address)
    else:
        import contextlib
        ctx = contextlib.nullcontext()
    t0 = time.time()
    with ctx:
        islands = RayIslands(cfg, options) if (workers > 0 or ray_address) else LocalIslands(cfg, options)
        try:
            for i, s in enumerate(states):
                if s is not None:
                    islands.call(i, "load_state_dict", s)
            generation = _loop(cfg, problem, islands, archive, generation, states, state_dir, elapsed, t0, quiet,
                               stop_after, k)
        finally:
            restarts = getattr(islands, "restarts", 0)
            islands.close()
    return SearchResult(cfg, problem, archive, generation, elapsed + time.time() - t0, out, restarts, targets)


def _loop(cfg, problem, islands, archive, generation, states, state_dir, elapsed, t0, quiet, stop_after, k) -> int:
    stale, ran = 0, 0
    with progress_bar(quiet) as bar:
        task = bar.add_task(f"search ({cfg.controller})", total=cfg.evaluations, completed=len(archive))
        while len(archive) < cfg.evaluations and stale < 50:
            if stop_after is not None and ran >= stop_after:
                break
            remaining = cfg.evaluations - len(archive)
            ns = [min(cfg.population, math.ceil(remaining / k))] * k
            results = islands.step(ns, states)
            added = sum(archive.add(pop, vals, i, generation, cfg.evaluations)
                        for i, (pop, vals) in enumerate(results) if len(pop))
            generation += 1
            ran += 1
            stale = 0 if added else stale + 1
            if k > 1 and cfg.migrate_every and generation % cfg.migrate_every == 0 and cfg.controller == "evolution":
                _migrate(islands, problem, k)
            states = [islands.call(i, "state_dict") for i in range(k)]
            if state_dir is not None:
                _checkpoint(state_dir, cfg, problem, archive, generation, states, elapsed + time.time() - t0)
            bar.update(task, completed=len(archive))
    return generation


def _migrate(islands, problem: Problem, k: int, n: int = 4) -> None:
    """Ring migration: island i receives island i-1's best ``n``."""
    elites = [islands.call(i, "elite", n) for i in range(k)]
    for i in range(k):
        pop = elites[(i - 1) % k]
        if len(pop):
            values = problem.evaluator.evaluate(pop)
            islands.call(i, "immigrate", pop, values)


def _checkpoint(state_dir: Path, cfg: SearchConfig, problem: Problem, archive: Archive, generation: int,
                states: list, elapsed: float) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    archive.save(state_dir / "evaluated.npz")  # append-only: a newer file than the checkpoint is truncated
    write_json(state_dir / "checkpoint.json", {
        "toolkit_version": __version__, "config": cfg.to_json(), "scored_with": problem.evaluator.provenance(),
        "generation": generation,
        "evaluated": len(archive), "metric_names": archive.metric_names, "elapsed_s": elapsed,
        "islands": states})


_RESUME_IGNORED = {"storage"}


def _resume(state_dir: Path, cfg: SearchConfig, problem: Problem, metric_names: list[str]):
    ck = read_json(state_dir / "checkpoint.json", "search checkpoint")
    old, new = ck.get("config", {}), cfg.to_json()
    defaults = SearchConfig().to_json()  # a setting added since the checkpoint was written had its default then
    diff = [k for k in new if k not in _RESUME_IGNORED and old.get(k, defaults.get(k)) != new[k]]
    if diff:
        raise UserError(state_dir.parent, f"holds a run with other settings ({', '.join(diff)})",
                        "repeat the original options to resume, or choose a new --out")
    if ck["metric_names"] != metric_names:
        raise UserError(state_dir.parent, "checkpoint metrics differ from this run's", "choose a new --out")
    if "scored_with" in ck:  # same options, but a table or predictor file re-made since: old scores would mix in
        refuse_changed_settings(state_dir.parent, "holds networks scored with", ck["scored_with"],
                                problem.evaluator.provenance(),
                                "restore those files to resume, or choose a new --out to search with these")
    archive = Archive.load(state_dir / "evaluated.npz", problem.space.D, metric_names, ck["evaluated"])
    return archive, int(ck["generation"]), ck["islands"], float(ck.get("elapsed_s", 0.0))


def default_objectives(space: str, table: Optional[str], predictor: Optional[str],
                       dataset: str = "cifar10") -> list[str]:
    """accuracy + latency on the shipped 1-thread table; the MACs proxy where no predictor exists."""
    if table:
        raise UserError("--objectives", "a tabular search needs its objective columns", "e.g. acc:max,lat_ms:min")
    from ..evaluator import find_predictor, predictor_hint
    from ..space import SearchSpace

    sp = SearchSpace.load(space)
    try:
        find_predictor(sp, predictor, dataset)
        return list(DEFAULT_OBJECTIVES)
    except UserError:
        if predictor:
            raise
        print(f"note: no accuracy predictor predictors/{sp.name}/{dataset}.json ({predictor_hint(sp.name)}); "
              "using proxy_accuracy (log MACs), not accuracy")
        return ["proxy_accuracy", "latency@cpu-ort-1t"]


def default_out(cfg: SearchConfig) -> Path:
    """runs/<space>-<controller>-<hash of the settings>: the same command finds (and resumes) its folder."""
    import hashlib

    blob = json.dumps(cfg.to_json(), sort_keys=True).encode()
    name = Path(cfg.table).stem if cfg.table else Path(cfg.space).stem
    return Path("runs") / f"{name}-{cfg.controller}-{hashlib.sha256(blob).hexdigest()[:8]}"
