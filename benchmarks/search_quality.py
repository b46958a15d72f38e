"""Hypervolume of the found front / hypervolume of the true front, per controller and budget, over seeds.

    python benchmarks/search_quality.py                       # problems built from the real cifar space
    python benchmarks/search_quality.py --table T.csv --decisions a,b,c --objectives "acc:max,lat:min"

Problems (a): ``subspace`` -- an exhaustive tabular table of the cifar space (every architecture with
kernel x expansion x depth choices per stage, 248,832 rows, predictor accuracy and table latency), true
front exact; ``fullspace`` -- the whole cifar space (3.6e12 architectures) scored by predictor + table,
reference front from 1e6 random samples united with everything any controller found. (b): any tabular
CSV given on the command line, reference = the whole table.

HV is computed on objectives normalised by the reference front (ideal 0, nadir 1), reference point 1.1.
Budgets are read off one run per seed and controller (anytime: the first N evaluations).
Writes benchmarks/results/search_quality.json.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import write_result

from nas.evaluator import Evaluator
from nas.objectives import minimisation_matrix, parse_objectives
from nas.pareto import hypervolume, non_dominated_mask
from nas.search.run import SearchConfig, run_search
from nas.space import SearchSpace
from nas.tabular import subspace_population, table_from_space

BUDGETS = (100, 300, 1000, 3000)
CONTROLLERS = {"evolution": {}, "rl": {}, "optuna-nsga2": {"sampler": "nsga2"}, "optuna-tpe": {"sampler": "tpe"},
               "random": {}}
# Optuna's TPE costs O(trials) per ask; at 3,000 trials and 10 seeds x 2 problems it would take hours here
MAX_EVALUATIONS = {"optuna-tpe": 1000}


class Normaliser:
    def __init__(self, front: np.ndarray):
        self.lo, self.hi = front.min(axis=0), front.max(axis=0)
        self.ref = np.full(front.shape[1], 1.1)
        self.true_hv = self.hv(front)

    def hv(self, F: np.ndarray) -> float:
        F = F[np.isfinite(F).all(axis=1)]
        return hypervolume((F - self.lo) / np.maximum(self.hi - self.lo, 1e-12), self.ref)


def run_all(make_cfg, objectives, controllers, seeds, budgets, evaluations):
    archives = {}
    for name in controllers:
        for seed in seeds:
            t0 = time.time()
            res = run_search(make_cfg(name, seed), quiet=True)
            F = minimisation_matrix(objectives, res.archive.values)
            archives[(name, seed)] = (F, time.time() - t0)
        print(f"  {name}: {len(seeds)} seeds done", flush=True)
    return archives


def summarise(archives, norm: Normaliser, controllers, seeds, budgets):
    out = {}
    for name in controllers:
        per_budget = {}
        for b in budgets:
            if b > MAX_EVALUATIONS.get(name, b):
                per_budget[str(b)] = None
                continue
            ratios = [norm.hv(archives[(name, s)][0][:b]) / norm.true_hv for s in seeds]
            per_budget[str(b)] = {"mean": float(np.mean(ratios)), "std": float(np.std(ratios))}
        out[name] = {"hv_ratio": per_budget,
                     "seconds_per_run": float(np.mean([archives[(name, s)][1] for s in seeds]))}
    return out


def problem_table(space, objectives, keep, tmp: Path):
    ev = Evaluator.build(space, objectives)
    pop = subspace_population(space, keep)
    frame = table_from_space(space, ev, pop)
    path = tmp / "subspace.csv"
    frame.to_csv(path, index=False)
    F = minimisation_matrix(objectives, {o.name: frame[o.name].to_numpy() for o in objectives})
    return path, [d.name for d in space.decisions], F[non_dominated_mask(F)], len(frame)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--population", type=int, default=48)
    ap.add_argument("--controllers", default=",".join(CONTROLLERS))
    ap.add_argument("--problems", default="subspace,fullspace")
    ap.add_argument("--table")
    ap.add_argument("--decisions")
    ap.add_argument("--objectives", default="accuracy,latency@cpu-ort-1t")
    a = ap.parse_args()
    seeds = list(range(a.seeds))
    controllers = a.controllers.split(",")
    budgets, evals = BUDGETS, max(BUDGETS)
    results = {}

    def cfg_for(base: dict):
        def make(name: str, seed: int) -> SearchConfig:
            ctl = "optuna" if name.startswith("optuna") else name
            return SearchConfig(**base, controller=ctl, evaluations=MAX_EVALUATIONS.get(name, evals),
                                population=a.population, seed=seed, **CONTROLLERS.get(name, {}))
        return make

    with tempfile.TemporaryDirectory() as tmp:
        if a.table:
            objectives = parse_objectives(a.objectives, tabular=True)
            base = {"table": a.table, "decisions": a.decisions.split(","), "objectives": a.objectives.split(",")}
            import pandas as pd

            frame = pd.read_csv(a.table)
            F = minimisation_matrix(objectives, {o.name: frame[o.name].to_numpy(float) for o in objectives})
            norm = Normaliser(F[non_dominated_mask(F)])
            print(f"table {a.table}: {len(frame)} rows")
            arch = run_all(cfg_for(base), objectives, controllers, seeds, budgets, evals)
            results[Path(a.table).stem] = {"rows": len(frame), "reference": "exhaustive",
                                           "controllers": summarise(arch, norm, controllers, seeds, budgets)}
        else:
            space = SearchSpace.load("mobilenetv3_cifar")
            objectives = parse_objectives(a.objectives)
            names = [o.name for o in objectives]
            if "subspace" in a.problems:
                keep = {"kernel": 3, "expansion": 2, "depth": 2}
                path, decisions, front, rows = problem_table(space, objectives, keep, Path(tmp))
                print(f"subspace: {rows} rows, true front {len(front)}")
                base = {"table": str(path), "decisions": decisions,
                        "objectives": [f"{o.name}:{o.direction}" for o in objectives]}
                arch = run_all(cfg_for(base), parse_objectives(base["objectives"], tabular=True), controllers,
                               seeds, budgets, evals)
                results["subspace"] = {"rows": rows, "reference": "exhaustive", "true_front_size": len(front),
                                       "controllers": summarise(arch, Normaliser(front), controllers, seeds, budgets)}
            if "fullspace" in a.problems:
                ev = Evaluator.build(space, objectives)
                rng = np.random.default_rng(12345)
                ref_F = []
                for _ in range(10):
                    pop = space.sample(rng, 100_000)
                    F = minimisation_matrix(objectives, ev.evaluate(pop))
                    ref_F.append(F[non_dominated_mask(F)])
                base = {"space": "mobilenetv3_cifar", "objectives": names}
                arch = run_all(cfg_for(base), objectives, controllers, seeds, budgets, evals)
                union = np.concatenate(ref_F + [F for F, _ in arch.values()])
                front = union[non_dominated_mask(union)]
                print(f"fullspace: reference front {len(front)} points from 1e6 samples + all runs")
                results["fullspace"] = {"space_size": space.cardinality, "reference": "1e6 random samples + union of all runs",
                                        "reference_front_size": len(front),
                                        "controllers": summarise(arch, Normaliser(front), controllers, seeds, budgets)}
    for prob, r in results.items():
        print(prob)
        for name, c in r["controllers"].items():
            print(f"  {name:13s} " + "  ".join(f"{b}: {v['mean']:.4f}±{v['std']:.4f}" for b, v in c["hv_ratio"].items()
                                                 if v is not None))
    write_result("search_quality", {"objectives": a.objectives, "seeds": len(seeds), "budgets": list(budgets),
                                    "max_evaluations": MAX_EVALUATIONS,
                                    "population": a.population, "normalisation": "ideal/nadir of the reference front, ref point 1.1",
                                    "problems": results})


if __name__ == "__main__":
    main()
