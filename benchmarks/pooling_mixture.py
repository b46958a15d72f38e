"""Balanced mixture of supernets for pooling placement, ResNet20-like space on CIFAR-10 (narrowed and shortened).

    python benchmarks/pooling_mixture.py --workers 2
    # where a GPU is lent: trainings and mixtures side by side on it, no Ray
    python benchmarks/pooling_mixture.py --train-device cuda --procs 10 --standalone-seeds 0,1,2 ...

Narrowed: widths 8/16/32 by default (half of ResNet20's 16/32/64; --base-width 16 for ResNet20's); --widths fixed
keeps each block at its width wherever the pools sit (the paper's search), doubling (the default) doubles the
width after each pool. Shortened:
every placement trained standalone for a few epochs with one recipe, once per --standalone-seeds seed (the
ground truth is the mean over seeds); supernets for a dozen epochs. For M = 1 and M = 4: Kendall tau between
the supernet-estimated and the standalone accuracy over all 36 placements, the standalone accuracy of the
chosen placement against the default one, and how far the ground truth itself can be trusted (seed repeats,
the tau a perfect ranking would reach). Writes benchmarks/results/pooling_mixture.json.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT, binomial_ceiling_tau, data_sha256, repeat_ceiling_tau, write_result
from scipy.stats import kendalltau

from nas.data import load_data
from nas.errors import UserError
from nas.latency.engine import append_jsonl, load_jsonl
from nas.pooling import (SCORING_RULES, WIDTH_RULES, MixtureConfig, PlacementSpace, score_placements, standalone_recipe,
                         standalone_task, train_mixture)
from nas.train import resolve_device

PAPER = {"resnet20_cifar10_full": {"default_433": 90.52, "spos": 90.34, "mixture_M4": 91.55, "brute_force_best": 92.01},
         "kendall_tau_from_published_table": {"M1": 0.14, "M2": 0.31, "M4": 0.60, "M8": 0.53}}


def mixture_tag(cfg: MixtureConfig) -> str:
    """The file stem of one mixture's checkpoint and summary in --out (the config's hash)."""
    return f"mixture_M{cfg.models}_{hashlib.sha256(repr(cfg).encode()).hexdigest()[:8]}"


def result_space(result: dict) -> dict:
    """The PlacementSpace keywords a result file of this benchmark was made with."""
    space_kw = {k: result["space"][k] for k in ("blocks", "pools", "base_width", "num_classes")}
    space_kw["widths_rule"] = result["space"].get("widths_rule", "doubling")  # results from before the choice
    return space_kw


def mixture_task(space_kw: dict, M: int, data_path: str, epochs: float, warmup: float, subset, out: str,
                 device: str = "cpu", score_extra: str | None = None, threads: int | None = None,
                 rule: str = "best", seed: int = 0):
    """Train one balanced mixture of M supernets and rank every placement with it. The ranking and its
    figures are kept beside the checkpoint, so a rerun (or a run elsewhere, e.g. on a lent GPU) reuses them."""
    import torch

    from nas.data import archive_loader
    from nas.io import read_json, write_json

    if threads:
        torch.set_num_threads(threads)
    space = PlacementSpace(**space_kw)
    cfg = MixtureConfig(models=M, epochs=epochs, warmup_epochs=warmup, seed=seed)
    tag = mixture_tag(cfg)
    # with one model the two scoring rules are the same; earlier summaries of M > 1 used "assigned"
    rule_tag = "_best" if rule == "best" and M > 1 else ""
    summary = Path(out) / f"{tag}{rule_tag}{'_extra' if score_extra else ''}.json"
    # what the ranking depends on beyond cfg; file names only, so that a run made elsewhere is reused here
    key = {"space": space_kw, "data": Path(data_path).name, "subset": subset,
           "score_extra": Path(score_extra).name if score_extra else None}
    if summary.exists():
        saved = read_json(summary)
        if saved.get("key") != key:
            raise UserError(summary, "mixture ranking was made with another space, dataset, subset or extra images",
                            "delete it, or use another --out")
        return pd.DataFrame(saved["ranking"]), saved["info"]
    data = load_data(data_path, seed=0, subset=subset, device=device)
    res = train_mixture(space, data, cfg, device=device, quiet=True, checkpoint=Path(out) / f"{tag}.ckpt")
    t1 = time.time()
    extra = archive_loader(score_extra, device=device) if score_extra else None
    ranking = score_placements(space, res, data, extra=extra, rule=rule)
    # training seconds as recorded in the checkpoint: a rerun that finds the mixture trained only scores it
    info = {"train_seconds": res["seconds"], "score_seconds": time.time() - t1, "steps": res["steps"],
            "split_at_step": res["split_at"], "device": device_name(device),
            **({"extra_images": len(extra.y)} if extra is not None else {}),
            "test_images": len(data.test.y),  # the split every standalone placement is scored on
            "models_share": np.bincount(res["P"].argmax(axis=1), minlength=M).tolist(),
            "mean_supernet_val_accuracy": float(ranking["supernet_accuracy"].mean())}
    write_json(summary, {"key": key, "info": info, "ranking": ranking.to_dict("records")})
    return ranking, info


def device_name(device: str) -> str:
    """``cpu``, or the name of the GPU ``device`` names (recorded with the figures)."""
    import torch

    return device if device == "cpu" else torch.cuda.get_device_name(torch.device(device))


def ground_truth(rows: list[dict], names: list[str], seeds: list[int]) -> dict:
    """Standalone accuracies per seed (records without a seed are seed 0), their mean over the seeds that
    cover every placement, and, over the seeds whose records also counted the extra images, the same pooled
    over test + extra images."""
    by_seed: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_seed.setdefault(int(r.get("seed", 0)), {})[r["placement"]] = r
    complete = [s for s in seeds if set(names) <= set(by_seed.get(s, {}))]
    if not complete:
        raise SystemExit(f"no seed of {seeds} has every placement trained standalone")
    test = {s: {n: by_seed[s][n]["standalone_accuracy"] for n in names} for s in complete}
    out = {"seeds": complete, "test": test, "mean": {n: float(np.mean([test[s][n] for s in complete])) for n in names}}
    pooled_seeds = [s for s in complete if all("extra_correct" in by_seed[s][n] for n in names)]
    if pooled_seeds:
        def pooled(r):
            return (r["test_correct"] + r["extra_correct"]) / (r["test_images"] + r["extra_images"])

        out["pooled"] = {s: {n: pooled(by_seed[s][n]) for n in names} for s in pooled_seeds}
        out["pooled_mean"] = {n: float(np.mean([out["pooled"][s][n] for s in pooled_seeds])) for n in names}
        first = by_seed[pooled_seeds[0]][names[0]]
        out["pooled_images"] = int(first["test_images"] + first["extra_images"])
        out["extra"] = {s: {n: by_seed[s][n]["extra_accuracy"] for n in names} for s in pooled_seeds}
    return out


def tau(a: dict, b: dict) -> float | None:
    """Kendall tau over the placements both rank; None where one side is constant (it ranks nothing)."""
    keys = sorted(a)
    t = float(kendalltau([a[k] for k in keys], [b[k] for k in keys]).statistic)
    return None if np.isnan(t) else t


def repeat_tau(per_seed: dict) -> dict:
    """Kendall tau between the rankings that two seeds give (the ceiling of a one-seed ground truth)."""
    pairs = {f"{s}-{t}": tau(per_seed[s], per_seed[t]) for s, t in itertools.combinations(sorted(per_seed), 2)}
    return {"pairs": pairs, "mean": float(np.mean(list(pairs.values())))} if pairs else {}


def run_parallel_processes(procs: int, mixture_args: dict, standalone_args: list, gt_path: str) -> dict:
    """Mixtures and standalone trainings side by side in ``procs`` processes (one GPU shared by all, or CPU
    cores; no Ray needed). The mixtures go first, since they are the longest; every standalone result is
    appended to the ground truth as soon as it exists."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    runs = {}
    with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as ex:
        futures = {ex.submit(mixture_task, *args): M for M, args in mixture_args.items()}
        futures.update({ex.submit(standalone_task, *args): None for args in standalone_args})
        for f in as_completed(futures):
            if futures[f] is None:
                append_jsonl(gt_path, [f.result()])
            else:
                runs[futures[f]] = f.result()
                print(f"M={futures[f]} done", flush=True)
    return runs


def run_with_ray(workers: int, mixture_args: dict, standalone_args: list, gt_path: str) -> dict:
    """The standalone trainings, then the mixtures, as Ray tasks of one core each."""
    import ray

    from nas.parallel import ray_session

    with ray_session(workers):
        task = ray.remote(num_cpus=1, max_retries=1)(standalone_task)
        pending = [task.remote(*args) for args in standalone_args]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            append_jsonl(gt_path, [ray.get(ready[0])])
        task = ray.remote(num_cpus=1, max_retries=0)(mixture_task)
        return dict(zip(mixture_args, ray.get([task.remote(*args) for args in mixture_args.values()])))


def compare_truth(path: str, space_kw: dict, data_sha: str, gt: dict, results: dict, default: str) -> dict:
    """The same supernet estimates ranked against another result file's ground truth."""
    from nas.io import read_json

    other = read_json(path)
    if other["recipe"].get("data_sha256") not in (None, data_sha):
        raise UserError(path, "its ground truth was trained on other data", "compare with a result of the same --data")
    if result_space(other) != json.loads(json.dumps(space_kw)):  # tuples as JSON has them
        raise UserError(path, "its ground truth was trained on another placement space",
                        "compare with a result of the same --base-width and --widths")
    truth = other["standalone_accuracy"]
    return {"source": path, "standalone_epochs": other["recipe"]["standalone_epochs"],
            "standalone_seeds": other["recipe"]["standalone_seeds"],
            "tau_between_truths": tau(gt, truth), "default_standalone_accuracy": truth[default],
            "brute_force_best": max(truth, key=truth.get),
            **{M: {"kendall_tau": tau(r["supernet_accuracy"], truth),
                   "chosen_standalone_accuracy": truth[r["chosen"]]} for M, r in results.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    ap.add_argument("--base-width", type=int, default=8)
    ap.add_argument("--widths", choices=WIDTH_RULES, default="doubling",
                    help="fixed: each block keeps ResNet20's width for its position, as in the paper; doubling: "
                         "the width doubles after each pool (every placement the same MACs)")
    ap.add_argument("--standalone-epochs", type=float, default=4.0)
    ap.add_argument("--standalone-seeds", default="0",
                    help="train every placement standalone once per seed; the ground truth is their mean")
    ap.add_argument("--mixture-epochs", type=float, default=12.0)
    ap.add_argument("--mixture-warmup", type=float, default=0.0,
                    help="epochs of one shared supernet before it is cloned into the M models")
    ap.add_argument("--models", default="1,4")
    ap.add_argument("--workers", type=int, default=0, help="Ray tasks of one core each")
    ap.add_argument("--procs", type=int, default=0,
                    help="processes sharing --train-device instead of Ray (e.g. several trainings on one GPU)")
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "pooling_bench"))
    ap.add_argument("--train-device", "--device", dest="device", default="cpu",
                    help="where PyTorch trains: cpu, or cuda where a GPU is lent (--device: the older name)")
    ap.add_argument("--result-name", default="pooling_mixture")
    ap.add_argument("--scoring", choices=SCORING_RULES, default="best",
                    help="a placement's supernet accuracy: its best model's, or its assigned model's")
    ap.add_argument("--standalone-note", default="", help="where the standalone ground truth was trained")
    ap.add_argument("--score-extra", help="an archive of further held-out images (used by neither the mixtures "
                                          "nor the ground truth's training): placements are also scored on these, "
                                          "by the supernets and by the standalone networks trained from now on")
    ap.add_argument("--compare-truth", help="an earlier result file of this benchmark on the same space (e.g. a "
                                            "shorter standalone recipe): the supernets are also ranked against its "
                                            "ground truth, and the two ground truths against each other")
    a = ap.parse_args()
    a.device = resolve_device(a.device)  # a typo fails here, not deep inside the first training
    space = PlacementSpace(base_width=a.base_width, widths_rule=a.widths)
    space_kw = asdict(space)
    seeds = [int(s) for s in a.standalone_seeds.split(",")]
    names = [space.name(p) for p in space.placements]

    # ground truth: every placement trained standalone with one short recipe per seed (resumable, JSONL)
    gt_path = f"{a.out}/standalone.jsonl"
    os.makedirs(a.out, exist_ok=True)
    recipe = standalone_recipe(space_kw, a.data, a.standalone_epochs, a.subset)
    mine = lambda rows: [r for r in rows if r.get("recipe") == recipe]  # noqa: E731  (other recipes: retrained)
    done = {(r["placement"], int(r.get("seed", 0))) for r in mine(load_jsonl(gt_path))}
    threads = 1 if a.workers or a.procs else None  # many trainers side by side: one CPU thread each
    standalone_args = [(space_kw, p, a.data, a.standalone_epochs, s, a.subset, threads, a.device, a.score_extra)
                       for s in seeds for p in space.placements if (space.name(p), s) not in done]
    models = [int(m) for m in a.models.split(",")]
    mixture_args = {M: (space_kw, M, a.data, a.mixture_epochs, a.mixture_warmup, a.subset, a.out, a.device,
                        a.score_extra, threads, a.scoring) for M in models}
    t0 = time.time()
    if a.procs:
        runs = run_parallel_processes(a.procs, mixture_args, standalone_args, gt_path)
    elif a.workers:
        runs = run_with_ray(a.workers, mixture_args, standalone_args, gt_path)
    else:
        for args in standalone_args:
            append_jsonl(gt_path, [standalone_task(*args)])
        runs = {M: mixture_task(*args) for M, args in mixture_args.items()}
    wall = time.time() - t0
    records = mine(load_jsonl(gt_path))
    truth = ground_truth(records, names, seeds)
    gt = truth["mean"]

    results = {}
    for M, (ranking, info) in runs.items():
        ranking["standalone_accuracy"] = ranking["placement"].map(gt)
        # named like the mixture's checkpoint: runs with other mixture settings in the same --out keep theirs
        tag = mixture_tag(MixtureConfig(models=M, epochs=a.mixture_epochs, warmup_epochs=a.mixture_warmup))
        ranking.to_csv(f"{a.out}/{tag}_ranking.csv", index=False)
        supernet = dict(zip(ranking["placement"], ranking["supernet_accuracy"]))
        chosen = ranking.iloc[0]["placement"]
        extra_images = info.pop("extra_images", None)
        test_images = info.pop("test_images")
        # the estimates themselves too, so that a later ground truth can be compared without retraining
        results[f"M{M}"] = {"kendall_tau": tau(supernet, gt), "chosen": chosen, "chosen_standalone_accuracy": gt[chosen],
                            **info, "supernet_accuracy": supernet}
        if "pooled_mean" in truth:  # validation images for the supernets, test + extra for the ground truth
            results[f"M{M}"]["kendall_tau_vs_pooled_gt"] = tau(supernet, truth["pooled_mean"])
        if "pooled_accuracy" in ranking:
            pooled = ranking.sort_values("pooled_accuracy", ascending=False)
            scores = dict(zip(pooled["placement"], pooled["pooled_accuracy"]))
            results[f"M{M}"]["pooled_scoring"] = {
                "images": extra_images, "source": a.score_extra,
                "kendall_tau": tau(scores, gt),
                "kendall_tau_extra_only": tau(dict(zip(pooled["placement"], pooled["extra_accuracy"])), gt),
                "val_vs_extra_tau": float(kendalltau(pooled["supernet_accuracy"], pooled["extra_accuracy"]).statistic),
                "chosen": pooled.iloc[0]["placement"], "chosen_standalone_accuracy": gt[pooled.iloc[0]["placement"]]}
        print(M, results[f"M{M}"], flush=True)
    default = space.name(space.default())
    best_name = max(gt, key=gt.get)
    per_seed = lambda acc: [[acc[s][n] for n in names] for s in acc]  # noqa: E731
    gt_summary = {"seeds": truth["seeds"], "seed_repeat_tau": repeat_tau(truth["test"]),
                  "standalone_accuracy_by_seed": truth["test"]}
    if len(truth["seeds"]) > 1:  # the ceiling with training noise counted, from the seeds themselves
        gt_summary["repeat_ceiling_tau"] = repeat_ceiling_tau(per_seed(truth["test"]))
    if "pooled_mean" in truth:
        gt_summary["pooled"] = {"images": truth["pooled_images"], "source": a.score_extra,
                                "seeds": sorted(truth["pooled"]), "standalone_accuracy": truth["pooled_mean"],
                                "seed_repeat_tau": repeat_tau(truth["pooled"]),
                                "test_vs_extra_tau": {s: tau(truth["test"][s], truth["extra"][s]) for s in truth["pooled"]},
                                "mean_test_vs_pooled_tau": tau(gt, truth["pooled_mean"])}
        if len(truth["pooled"]) > 1:
            gt_summary["pooled"]["repeat_ceiling_tau"] = repeat_ceiling_tau(per_seed(truth["pooled"]))
    figures = {"device": device_name(a.device),
               "space": {**space_kw, "placements": len(space.placements), "narrowed": f"widths {a.base_width}/{2 * a.base_width}/{4 * a.base_width} (ResNet20: 16/32/64), "
                                     + ("each block's fixed by its position, as in the paper" if a.widths == "fixed"
                                        else "doubling after each pool")},
               "recipe": {"standalone_epochs": a.standalone_epochs, "standalone_seeds": truth["seeds"],
                          "mixture_epochs": a.mixture_epochs, "mixture_warmup_epochs": a.mixture_warmup,
                          "data": a.data, "data_sha256": data_sha256(a.data), "subset": a.subset,
                          "score_extra_sha256": data_sha256(a.score_extra) if a.score_extra else None,
                          "scoring": a.scoring},
               "default": default, "default_standalone_accuracy": gt[default],
               "brute_force_best": best_name, "brute_force_best_accuracy": gt[best_name],
               # this invocation only (results reused from an earlier one cost nothing here); the trainings
               # themselves: their own seconds, summed over every standalone record in the ground truth
               "standalone_accuracy": gt, "wall_time_s": wall,
               "standalone_seconds_total": sum(r.get("seconds", 0.0) for r in records
                                               if int(r.get("seed", 0)) in truth["seeds"]),
               # doubling widths: MACs are equal for every placement and parameters are not; fixed widths:
               # the other way round (a constant ranks nothing: tau is NaN, written as null)
               **{f"{cost}_baseline_tau": tau({space.name(p): float(getattr(space, cost)(p)) for p in space.placements}, gt)
                  for cost in ("params", "macs")},
               # no supernet can rank better against this ground truth than a perfect ranking would
               "gt_ceiling_tau": binomial_ceiling_tau(list(gt.values()), test_images),
               "ground_truth": gt_summary, "standalone_note": a.standalone_note, **results,
               "goals": {"M4_tau_above_M1": results.get("M4", {}).get("kendall_tau", 0) > results.get("M1", {}).get("kendall_tau", 1),
                         "M4_tau_at_least_0.6": results.get("M4", {}).get("kendall_tau", 0) >= 0.6,
                         "chosen_beats_default": results.get("M4", {}).get("chosen_standalone_accuracy", 0) > gt[default]},
               "paper": PAPER}
    if a.compare_truth:
        figures["compared_truth"] = compare_truth(a.compare_truth, space_kw, figures["recipe"]["data_sha256"], gt, results,
                                                   default)
    write_result(a.result_name, figures)


if __name__ == "__main__":
    main()
