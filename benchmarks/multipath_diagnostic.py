"""Why does the fully shared network beat multi-path on CIFAR-10? Architecture or shared training data?

    python benchmarks/multipath_diagnostic.py --workers 2

Reads the paths and recipe of a from-scratch multipath run (``--base``, default
benchmarks/results/multipath_scratch.json) and retrains, with that recipe (2 seeds):
  E1: the Fashion-MNIST path (the shared network's architecture) on CIFAR-10 alone;
  E2: one fully shared network on the CIFAR-10 path (per-domain heads and norms), both domains.
Compared with that file's single_domain (CIFAR path alone) and shared (Fashion-MNIST path, both domains),
E1 isolates the architecture and E2 the shared training.
  E3 (``--extra-seeds K``): its multipath and shared models retrained with K more seeds, so that
  their difference can be set against seed noise.
Writes benchmarks/results/multipath_diagnostic.json.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
from _common import RESULTS, ROOT, write_result
from multipath import train_variant

from nas.io import read_json
from nas.multipath import MultipathConfig, parse_domains


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--base", default="multipath_scratch",
                    help="the benchmarks/results file (without .json) of a multipath.py --init scratch run")
    ap.add_argument("--subset", type=int, default=20000, help="as the base run")
    ap.add_argument("--extra-seeds", type=int, default=0, help="E3: more seeds for multipath and shared")
    a = ap.parse_args()
    base = read_json(RESULTS / f"{a.base}.json", "multipath result")
    cfg = MultipathConfig(**base["config"])
    specs = parse_domains([f"{x['name']}={x['data']}" for x in base["domains"]])
    cifar = [s for s in specs if s.name == "cifar10"]
    fm_path, c_path = base["paths"]["fashion-mnist"], base["paths"]["cifar10"]
    space = str(ROOT / "search_spaces" / "mobilenetv3_cifar.yaml")
    jobs = {"E1_cifar_alone_on_fmnist_path": ("single", cifar, {"cifar10": fm_path}),
            "E2_shared_on_cifar_path": ("joint", specs, {"cifar10": c_path, "fashion-mnist": c_path})}
    keys = [(name, s) for name in jobs for s in range(a.seeds)]
    n0 = len(base["retrain_seeds"])
    extra = {"E3_multipath": ("joint", specs, base["paths"]),
             "E3_shared": ("joint", specs, {d: base["shared_network_arch"] for d in base["paths"]})}
    jobs.update(extra)
    keys += [(name, s) for name in extra for s in range(n0, n0 + a.extra_seeds)]
    args = lambda name, s: (jobs[name][0], space, jobs[name][1], jobs[name][2], replace(cfg, seed=s), a.subset)  # noqa: E731
    if a.workers > 0:
        import ray

        from nas.parallel import ray_session

        with ray_session(a.workers):
            task = ray.remote(num_cpus=1, max_retries=0)(train_variant)
            runs = dict(zip(keys, ray.get([task.remote(*args(*k), 1) for k in keys])))
    else:
        runs = {k: train_variant(*args(*k)) for k in keys}
    out = {}
    for name in jobs:
        per_seed = [runs[k] for k in keys if k[0] == name]
        if not per_seed:
            continue
        acc = {d: float(np.mean([r["accuracy"][d] for r in per_seed])) for d in per_seed[0]["accuracy"]}
        out[name] = {"accuracy": acc, "per_seed": [r["accuracy"] for r in per_seed],
                     "unique_params": per_seed[0]["unique_params"]}
    c = {f"cifar_path_alone ({a.base}.json single_domain)": base["single_domain"]["accuracy"]["cifar10"],
         "fmnist_path_alone (E1)": out["E1_cifar_alone_on_fmnist_path"]["accuracy"]["cifar10"],
         "cifar_path_shared (E2)": out["E2_shared_on_cifar_path"]["accuracy"]["cifar10"],
         f"fmnist_path_shared ({a.base}.json shared)": base["shared"]["accuracy"]["cifar10"]}
    print(c)
    seeds = {}
    if a.extra_seeds:
        for k in ("multipath", "shared"):
            means = base[k]["per_seed_mean_accuracy"] + [float(np.mean(list(r.values())))
                                                          for r in out[f"E3_{k}"]["per_seed"]]
            seeds[k] = {"per_seed_mean_accuracy": means, "mean": float(np.mean(means)),
                        "std": float(np.std(means, ddof=1)), "seeds": len(means)}
        diff = np.subtract(seeds["multipath"]["per_seed_mean_accuracy"], seeds["shared"]["per_seed_mean_accuracy"])
        seeds["multipath_minus_shared"] = {"per_seed": diff.tolist(), "mean": float(diff.mean()),
                                           "standard_error": float(diff.std(ddof=1) / np.sqrt(len(diff)))}
        print(seeds)
    write_result("multipath_diagnostic", {"paths": base["paths"], "config": base["config"], "subset": a.subset,
                                          **out, "cifar10_accuracy": c, **({"seeds": seeds} if seeds else {})})


if __name__ == "__main__":
    main()
