"""NetAdapt on the largest cifar network (the trained teacher of the predictor pipeline) to 50% of its latency,
against uniform width scaling and the search's Pareto front at the same measured latency.

    python benchmarks/netadapt.py --workers 2

Every compared network gets the same fine-tuning budget (the steps NetAdapt spent along its chosen path plus
its final fine-tune). Accuracies are test top-1. Writes benchmarks/results/netadapt.json.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import ROOT, write_result

from nas.data import load_data
from nas.export import load_network
from nas.latency import LatencyTable
from nas.latency.profile import measure_networks
from nas.netadapt import AdaptConfig, adapt, shrink_weights
from nas.predictor.sample import build_from_blocks
from nas.predictor.teacher import load_teacher
from nas.search.run import SearchConfig, run_search
from nas.space import Arch, SearchSpace, round_width
from nas.train import TrainConfig, evaluate, train_model


def uniform_scaled(arch: Arch, m: float, divisor: int = 4) -> Arch:
    stages = tuple(replace(s, channels=round_width(s.channels * m, divisor), width=round(s.width * m, 4))
                   for s in arch.stages)
    return replace(arch, stages=stages)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    ap.add_argument("--pipeline", default=str(ROOT / "runs" / "pipeline_cifar"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "netadapt"))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--short-steps", type=int, default=50)
    ap.add_argument("--initial-step", type=float, default=0.1)
    ap.add_argument("--long-epochs", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    space = SearchSpace.load("mobilenetv3_cifar")
    table = LatencyTable.find(space, a.device)
    t_arch, teacher = load_network(Path(a.pipeline) / "teacher")
    data = load_data(a.data, seed=0)
    teacher_acc = evaluate(teacher, data.test)
    t0 = time.time()
    cfg = AdaptConfig(budget_ratio=a.ratio, initial_step=a.initial_step, short_steps=a.short_steps,
                      long_epochs=a.long_epochs)
    state = adapt(space, teacher, t_arch, table, a.data, a.out, cfg, workers=a.workers)
    adapt_wall = time.time() - t0
    ad_arch, adapted = load_network(Path(a.out) / "adapted")
    adapted_acc = evaluate(adapted, data.test)
    lat_teacher, lat_adapted = measure_networks(table, [t_arch, ad_arch])

    # the fine-tuning budget NetAdapt spent on its chosen path
    steps_per_epoch = len(data.train)
    budget_steps = state["iteration"] * cfg.short_steps + int(cfg.long_epochs * steps_per_epoch)
    recipe = TrainConfig(max_steps=budget_steps, lr=cfg.long_lr, warmup_epochs=0.0)

    # (a) uniform width scaling at the same measured latency, initialised from the teacher the same way
    cands = [uniform_scaled(t_arch, m) for m in np.arange(0.30, 1.001, 0.05)]
    lats = measure_networks(table, cands)
    fits = [(c, l) for c, l in zip(cands, lats) if l <= lat_adapted * 1.02]
    uni_arch, uni_lat = max(fits, key=lambda cl: cl[1]) if fits else (cands[0], lats[0])
    uni = shrink_weights(teacher, t_arch, uni_arch)
    data.train.reseed(1)
    train_model(uni, data.train, recipe)
    uniform_acc = evaluate(uni, data.test)

    # (b) the best Pareto-front network (predictor + table) within the adapted network's measured latency
    res = run_search(SearchConfig(evaluations=3000, seed=0), quiet=True)
    front = res.front_mask()
    vals = res.archive.values
    idx = np.flatnonzero(front & (vals["latency@cpu-ort-1t"] <= lat_adapted))
    best = idx[np.argmax(vals["accuracy"][idx])]
    p_arch = space.decode(res.archive.pop[best])
    (p_lat,) = measure_networks(table, [p_arch])
    t_arch2, t_model = load_teacher(Path(a.pipeline) / "teacher")
    recal = [x for i, (x, _) in zip(range(2), data.train)]
    pnet = build_from_blocks(space, p_arch, t_arch2, t_model, Path(a.pipeline) / "blocks", recal)
    data.train.reseed(2)
    train_model(pnet, data.train, recipe, teacher=t_model)
    pareto_acc = evaluate(pnet, data.test)

    figures = {
        "teacher": {"arch_id": t_arch.id, "accuracy": teacher_acc, "measured_ms": lat_teacher},
        "adapted": {"arch_id": ad_arch.id, "measured_ms": lat_adapted,
                    "table_ms": float(table.predict(space.encode(ad_arch)[None])[0]), "iterations": state["iteration"]},
        "accuracy": adapted_acc, "measured_speedup": lat_teacher / lat_adapted, "accuracy_drop": teacher_acc - adapted_acc,
        "uniform_accuracy": uniform_acc,
        "uniform": {"width_multiplier": float(uni_arch.stages[0].width / t_arch.stages[0].width),
                    "channels": [s.channels for s in uni_arch.stages], "measured_ms": uni_lat},
        "pareto_accuracy": pareto_acc,
        "pareto": {"arch_id": p_arch.id, "measured_ms": p_lat, "predicted_accuracy": float(vals["accuracy"][best])},
        "finetune_budget_steps": budget_steps, "config": {**cfg.__dict__}, "adapt_wall_time_s": adapt_wall,
        "trajectory": [{k: v for k, v in r.items() if k in ("iteration", "arch_id", "table_ms", "measured_ms",
                                                              "accuracy", "stage", "dimension", "value")}
                       for r in state["trajectory"]],
        "goal_met": bool(adapted_acc > uniform_acc)}
    print({k: figures[k] for k in ("accuracy", "measured_speedup", "accuracy_drop", "uniform_accuracy", "pareto_accuracy")})
    write_result("netadapt", figures)


if __name__ == "__main__":
    main()
