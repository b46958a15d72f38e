"""Balanced mixture of supernets for pooling placement, ResNet20-like space on CIFAR-10 (narrowed and shortened).

    python benchmarks/pooling_mixture.py --workers 2

Narrowed: widths 8/16/32 (half of ResNet20's 16/32/64). Shortened: every placement trained standalone for a
few epochs with one recipe; supernets for a dozen epochs. For M = 1 and M = 4: Kendall tau between the
supernet-estimated and the standalone accuracy over all 36 placements, and the standalone accuracy of the
chosen placement against the default one. Writes benchmarks/results/pooling_mixture.json.
"""
from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from _common import ROOT, binomial_ceiling_tau, write_result
from scipy.stats import kendalltau

from nas.data import load_data
from nas.latency.engine import append_jsonl, load_jsonl
from nas.pooling import MixtureConfig, PlacementSpace, score_placements, standalone_task, train_mixture

PAPER = {"resnet20_cifar10_full": {"default_433": 90.52, "spos": 90.34, "mixture_M4": 91.55, "brute_force_best": 92.01},
         "kendall_tau_from_published_table": {"M1": 0.14, "M2": 0.31, "M4": 0.60, "M8": 0.53}}


def extra_batches(path: str, device: str = "cpu"):
    """Every image of an archive (train and test arrays) as evaluation batches: held-out images for scoring."""
    import torch

    from nas.data import TensorLoader, load_npz_archive

    xtr, ytr, xte, yte = load_npz_archive(path)
    x, y = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
    return TensorLoader(torch.from_numpy(x), torch.from_numpy(y), 512, False, device=device)


def mixture_task(space_kw: dict, M: int, data_path: str, epochs: float, warmup: float, subset, out: str,
                 device: str = "cpu", score_extra: str | None = None, threads: int | None = None):
    """Train one balanced mixture of M supernets and rank every placement with it."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    space = PlacementSpace(**space_kw)
    data = load_data(data_path, seed=0, subset=subset, device=device)
    cfg = MixtureConfig(models=M, epochs=epochs, warmup_epochs=warmup)
    ckpt = Path(out) / f"mixture_M{M}_{hashlib.sha256(repr(cfg).encode()).hexdigest()[:8]}.ckpt"  # resumable
    res = train_mixture(space, data, cfg, device=device, quiet=True, checkpoint=ckpt)
    t1 = time.time()
    extra = extra_batches(score_extra, device) if score_extra else None
    ranking = score_placements(space, res, data, extra=extra)
    # training seconds as recorded in the checkpoint: a rerun that finds the mixture trained only scores it
    info = {"train_seconds": res["seconds"], "score_seconds": time.time() - t1, "steps": res["steps"],
            "split_at_step": res["split_at"],
            **({"extra_images": len(extra.y)} if extra is not None else {}),
            "test_images": len(data.test.y),  # the split every standalone placement is scored on
            "models_share": np.bincount(res["P"].argmax(axis=1), minlength=M).tolist(),
            "mean_supernet_val_accuracy": float(ranking["supernet_accuracy"].mean())}
    return ranking, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    ap.add_argument("--base-width", type=int, default=8)
    ap.add_argument("--standalone-epochs", type=float, default=4.0)
    ap.add_argument("--mixture-epochs", type=float, default=12.0)
    ap.add_argument("--mixture-warmup", type=float, default=0.0,
                    help="epochs of one shared supernet before it is cloned into the M models")
    ap.add_argument("--models", default="1,4")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "pooling_bench"))
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is lent")
    ap.add_argument("--result-name", default="pooling_mixture")
    ap.add_argument("--standalone-note", default="", help="where the standalone ground truth was trained")
    ap.add_argument("--score-extra", help="an archive of further held-out images (used by neither the mixtures "
                                          "nor the ground truth): placements are also scored on validation + these")
    a = ap.parse_args()
    space = PlacementSpace(base_width=a.base_width)
    space_kw = asdict(space)

    # ground truth: every placement trained standalone with one short recipe (resumable, JSONL)
    gt_path = f"{a.out}/standalone.jsonl"
    import os

    os.makedirs(a.out, exist_ok=True)
    done = {r["placement"] for r in load_jsonl(gt_path)}
    todo = [p for p in space.placements if space.name(p) not in done]
    t0 = time.time()
    if todo and a.workers > 0:
        import ray

        from nas.parallel import ray_session

        with ray_session(a.workers):
            task = ray.remote(num_cpus=1, max_retries=1)(standalone_task)
            pending = [task.remote(space_kw, p, a.data, a.standalone_epochs, 0, a.subset, 1) for p in todo]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                append_jsonl(gt_path, [ray.get(ready[0])])
    else:
        for p in todo:
            append_jsonl(gt_path, [standalone_task(space_kw, p, a.data, a.standalone_epochs, 0, a.subset,
                                                   device=a.device)])
    standalone_wall = time.time() - t0
    gt = {r["placement"]: r["standalone_accuracy"] for r in load_jsonl(gt_path)}

    models = [int(m) for m in a.models.split(",")]
    args = lambda M: (space_kw, M, a.data, a.mixture_epochs, a.mixture_warmup, a.subset, a.out, a.device,  # noqa: E731
                      a.score_extra)
    if a.workers > 0:  # one mixture per Ray task, one thread each
        import ray

        from nas.parallel import ray_session

        with ray_session(a.workers):
            task = ray.remote(num_cpus=1, max_retries=0)(mixture_task)
            runs = dict(zip(models, ray.get([task.remote(*args(M), 1) for M in models])))
    else:
        runs = {M: mixture_task(*args(M)) for M in models}
    results = {}
    for M, (ranking, info) in runs.items():
        ranking["standalone_accuracy"] = ranking["placement"].map(gt)
        ranking.to_csv(f"{a.out}/ranking_M{M}.csv", index=False)
        chosen = ranking.iloc[0]["placement"]
        extra_images = info.pop("extra_images", None)
        test_images = info.pop("test_images")
        results[f"M{M}"] = {
            "kendall_tau": float(kendalltau(ranking["supernet_accuracy"], ranking["standalone_accuracy"]).statistic),
            "chosen": chosen, "chosen_standalone_accuracy": gt[chosen], **info}
        if "pooled_accuracy" in ranking:
            pooled = ranking.sort_values("pooled_accuracy", ascending=False)
            results[f"M{M}"]["pooled_scoring"] = {
                "images": extra_images, "source": a.score_extra,
                "kendall_tau": float(kendalltau(pooled["pooled_accuracy"], pooled["standalone_accuracy"]).statistic),
                "kendall_tau_extra_only": float(kendalltau(pooled["extra_accuracy"],
                                                           pooled["standalone_accuracy"]).statistic),
                "val_vs_extra_tau": float(kendalltau(pooled["supernet_accuracy"], pooled["extra_accuracy"]).statistic),
                "chosen": pooled.iloc[0]["placement"], "chosen_standalone_accuracy": gt[pooled.iloc[0]["placement"]]}
        print(M, results[f"M{M}"])
    default = space.name(space.default())
    best_name = max(gt, key=gt.get)
    import torch

    figures = {"device": a.device if a.device == "cpu" else torch.cuda.get_device_name(0),
               "space": {**space_kw, "placements": len(space.placements), "narrowed": f"widths {a.base_width}/{2 * a.base_width}/{4 * a.base_width} (ResNet20: 16/32/64)"},
               "recipe": {"standalone_epochs": a.standalone_epochs, "mixture_epochs": a.mixture_epochs,
                          "mixture_warmup_epochs": a.mixture_warmup,
                          "data": a.data, "subset": a.subset},
               "default": default, "default_standalone_accuracy": gt[default],
               "brute_force_best": best_name, "brute_force_best_accuracy": gt[best_name],
               "standalone_accuracy": gt, "standalone_wall_time_s": standalone_wall,
               # MACs are equal for every placement (widths double at each pool); parameters are not
               "params_baseline_tau": float(kendalltau([space.params(p) for p in space.placements],
                                                       [gt[space.name(p)] for p in space.placements]).statistic),
               # no supernet can rank better against this ground truth than a perfect ranking would
               "gt_ceiling_tau": binomial_ceiling_tau(list(gt.values()), test_images),
               "standalone_note": a.standalone_note, **results,
               "goals": {"M4_tau_above_M1": results.get("M4", {}).get("kendall_tau", 0) > results.get("M1", {}).get("kendall_tau", 1),
                         "M4_tau_at_least_0.6": results.get("M4", {}).get("kendall_tau", 0) >= 0.6,
                         "chosen_beats_default": results.get("M4", {}).get("chosen_standalone_accuracy", 0) > gt[default]},
               "paper": PAPER}
    write_result(a.result_name, figures)


if __name__ == "__main__":
    main()
