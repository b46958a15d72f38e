"""Candidates scored per second by the evaluator (one core), and whole-search throughput vs Optuna's NSGA-II.

    taskset -c 0 python benchmarks/throughput.py

Writes benchmarks/results/throughput.json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import write_result

os.environ.setdefault("OMP_NUM_THREADS", "1")

from nas.evaluator import Evaluator  # noqa: E402
from nas.objectives import parse_objectives  # noqa: E402
from nas.search.run import SearchConfig, run_search  # noqa: E402
from nas.space import SearchSpace  # noqa: E402


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objectives", default="accuracy,latency@cpu-ort-1t,latency@cpu-ort-2t,macs,params")
    ap.add_argument("--evaluations", type=int, default=3000)
    a = ap.parse_args()
    space = SearchSpace.load("mobilenetv3_cifar")
    objectives = parse_objectives(a.objectives)
    ev = Evaluator.build(space, objectives)
    rng = np.random.default_rng(0)
    figures = {"objectives": a.objectives, "evaluator": {}}
    for n in (1_000, 100_000, 1_000_000):
        pop = space.sample(rng, n)
        t = best_of(lambda: ev.evaluate(pop), 3 if n >= 1_000_000 else 5)
        figures["evaluator"][str(n)] = {"seconds": t, "candidates_per_s": n / t}
        print(f"evaluate {n:>9,} candidates: {n / t:,.0f}/s")
    parts = {}
    pop = space.sample(rng, 100_000)
    if ev.predictor is not None:
        parts["accuracy_predictor"] = 100_000 / best_of(lambda: ev.predictor.predict(pop))
    for d, table in ev.tables.items():
        parts[f"latency@{d}"] = 100_000 / best_of(lambda: table.predict(pop))
    figures["per_metric_candidates_per_s"] = parts
    two = [o for o in a.objectives.split(",")[:2]]
    search = {}
    for name, kw in (("evolution", {}), ("optuna-nsga2", {"sampler": "nsga2"}), ("random", {})):
        cfg = SearchConfig(objectives=two, controller="optuna" if name.startswith("optuna") else name,
                           evaluations=a.evaluations, population=48, seed=0, **kw)
        t0 = time.perf_counter()
        res = run_search(cfg, quiet=True)
        dt = time.perf_counter() - t0
        search[name] = {"evaluations": len(res.archive), "seconds": dt, "evaluations_per_s": len(res.archive) / dt}
        print(f"search {name:13s}: {len(res.archive)} evaluations in {dt:.2f}s ({len(res.archive) / dt:,.0f}/s)")
    search["evolution_speedup_vs_optuna_nsga2"] = search["evolution"]["evaluations_per_s"] / \
        search["optuna-nsga2"]["evaluations_per_s"]
    figures["search"] = search
    figures["search_objectives"] = two
    figures["threads"] = "taskset/OMP: one core" if os.environ.get("OMP_NUM_THREADS") == "1" else "default"
    write_result("throughput", figures)


if __name__ == "__main__":
    main()
