"""How much does one mixture run's ranking vary? Train the placement benchmark's mixtures again (same recipe,
another run: another machine, or --mixture-seed) and score them against the ground truth already in
``benchmarks/results/pooling_mixture.json`` or --truth (no standalone training), with the shipped scoring rule and a few
others computed from the same evaluations (per-model accuracies, the final assignment P and the moving
averages W).

    python benchmarks/pooling_repeat.py --data .devdata/cifar_sub.npz --models 1,4 --mixture-epochs 24 \\
        --mixture-warmup 12 --out runs/pooling_repeat --procs 2

Writes benchmarks/results/<--result-name>.json: per M and rule, Kendall tau against the 3-seed test ground
truth and the pooled one, the chosen placement and its standalone accuracy; and the first run's figures beside.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import RESULTS, data_sha256, write_result
from pooling_mixture import mixture_tag, mixture_task, result_space, run_parallel_processes, tau

from nas.io import read_torch
from nas.pooling import MixtureConfig, PlacementSpace


def rules(ranking, P: np.ndarray, W: np.ndarray, order: list[str]) -> dict[str, dict[str, float]]:
    """Each rule: placement -> score. ``ranking`` holds every model's accuracy on every placement."""
    names = list(ranking["placement"])
    scores = {"best (shipped)": dict(zip(names, ranking["supernet_accuracy"]))}
    if "pooled_accuracy" in ranking:  # --score-extra: the best model's accuracy on validation + extra images
        scores["best, validation + extra images"] = dict(zip(names, ranking["pooled_accuracy"]))
    M = P.shape[1]
    if M == 1:
        return scores
    acc = ranking[[f"accuracy_model{m}" for m in range(M)]].to_numpy()
    idx = [order.index(n) for n in names]  # ranking rows are sorted by score; P and W follow the placements
    Pn, Wn = P[idx], W[idx]
    z = (acc - acc.mean(axis=0)) / acc.std(axis=0)
    rows = np.arange(len(acc))
    scores.update({"mean over models": dict(zip(names, acc.mean(axis=1))),
                   "assigned model (argmax P)": dict(zip(names, acc[rows, Pn.argmax(axis=1)])),
                   "P-weighted mean": dict(zip(names, (acc * Pn).sum(axis=1) / Pn.sum(axis=1))),
                   "z-scored per model, max": dict(zip(names, z.max(axis=1))),
                   "z-scored per model, mean": dict(zip(names, z.mean(axis=1))),
                   "W (moving averages), max": dict(zip(names, Wn.max(axis=1)))})
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="the archive the first run used (see make_subset.py)")
    ap.add_argument("--truth", default=str(RESULTS / "pooling_mixture.json"))
    ap.add_argument("--models", default="1,4")
    ap.add_argument("--mixture-epochs", type=float, default=24.0)
    ap.add_argument("--mixture-warmup", type=float, default=12.0)
    ap.add_argument("--mixture-seed", type=int, default=0,
                    help="the mixtures' seed (0, as the first run: the same run again, only the machine differs)")
    ap.add_argument("--procs", type=int, default=0, help="mixtures side by side in processes (one core each)")
    ap.add_argument("--score-extra", help="an archive of further held-out images: each placement's best model "
                                          "(chosen on the validation split) is scored on these too")
    ap.add_argument("--out", default="runs/pooling_repeat")
    ap.add_argument("--result-name", default="pooling_mixture_repeat")
    a = ap.parse_args()
    first = json.loads(Path(a.truth).read_text())
    space_kw = result_space(first)
    space = PlacementSpace(**space_kw)
    order = [space.name(p) for p in space.placements]
    gt = first["standalone_accuracy"]
    pooled = first["ground_truth"].get("pooled", {}).get("standalone_accuracy")  # with --score-extra only
    Path(a.out).mkdir(parents=True, exist_ok=True)
    models = [int(m) for m in a.models.split(",")]
    args = {M: (space_kw, M, a.data, a.mixture_epochs, a.mixture_warmup, None, a.out, "cpu", a.score_extra,
                1 if a.procs else None, "best", a.mixture_seed) for M in models}
    runs = run_parallel_processes(a.procs, args, [], "") if a.procs else \
        {M: mixture_task(*x) for M, x in args.items()}
    figures = {"truth": a.truth, "data": a.data, "data_sha256": data_sha256(a.data), "score_extra": a.score_extra,
               "recipe": {"mixture_epochs": a.mixture_epochs, "mixture_warmup_epochs": a.mixture_warmup,
                          "space": space_kw, "mixture_seed": a.mixture_seed}}
    for M in models:
        ranking, info = runs[M]
        cfg = MixtureConfig(models=M, epochs=a.mixture_epochs, warmup_epochs=a.mixture_warmup, seed=a.mixture_seed)
        ckpt = Path(a.out) / f"{mixture_tag(cfg)}.ckpt"
        extra = json.loads(read_torch(ckpt, "mixture checkpoint")["extra"])  # the final W and assignment P
        per_rule = {}
        for rule, score in rules(ranking, np.array(extra["P"]), np.array(extra["W"]), order).items():
            chosen = max(score, key=score.get)
            per_rule[rule] = {"kendall_tau": tau(score, gt), "chosen": chosen, "chosen_standalone_accuracy": gt[chosen],
                              **({"kendall_tau_vs_pooled_gt": tau(score, pooled)} if pooled else {})}
        was = first.get(f"M{M}", {})
        figures[f"M{M}"] = {**info, "rules": per_rule,
                            "supernet_accuracy": dict(zip(ranking["placement"], ranking["supernet_accuracy"])),
                            "first_run": {k: was.get(k) for k in ("kendall_tau", "kendall_tau_vs_pooled_gt", "chosen",
                                                                  "mean_supernet_val_accuracy")},
                            "first_run_machine": first["machine"]["cpu_model"]}
        print(f"M={M}:", {r: round(v["kendall_tau"], 3) for r, v in per_rule.items()})
    write_result(a.result_name, figures)


if __name__ == "__main__":
    main()
