"""How well the blockwise-distilled predictor ranks architectures it never saw.

    python benchmarks/predictor_quality.py --data ../shared/data/cifar10.npz --workers 2 --install

1. runs (or resumes) the whole pipeline for mobilenetv3_cifar: teacher, block library, M fine-tuned samples, fit;
2. fine-tunes K held-out architectures (never used to fit) with the same recipe, twice (seeds 0 and 1);
3. compares predicted and measured accuracy, against MACs, params and a one-hot linear model on the same M samples;
4. compares weight-shared and separate distillation of a few options of one stage (cost and ranking).

Writes benchmarks/results/predictor_quality.json; ``--install`` copies the predictor to
predictors/mobilenetv3_cifar/cifar10.json (the shipped default).
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import ROOT, write_result
from scipy.stats import kendalltau, spearmanr

from nas import cost
from nas.io import read_json
from nas.latency.engine import load_jsonl
from nas.predictor.distill import DistillConfig, distill_stage, load_block_quality
from nas.predictor.fit import fit_predictor, fit_ridge, onehot_features
from nas.predictor.model import Predictor, predict_from_features
from nas.predictor.pipeline import PipelineConfig, run_pipeline
from nas.predictor.sample import mean_accuracy, recipe_id, run_sample_seeds, run_samples, stratified_sample
from nas.space import SearchSpace
from nas.train import TrainConfig, resolve_device


def rank_figures(pred: np.ndarray, acc: np.ndarray) -> dict:
    return {"kendall_tau": float(kendalltau(pred, acc).statistic), "spearman": float(spearmanr(pred, acc).statistic),
            "mae": float(np.mean(np.abs(pred - acc)))}


def linear_on(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    return predict_from_features(fit_ridge(x_fit, y_fit), x_test)


def image_noise_figures(predicted: np.ndarray, log_macs: np.ndarray, val: np.ndarray, test: np.ndarray,
                        data_path: str) -> dict:
    """The held-out ground truth on more images: val (the headline), test, and both pooled.

    ``val`` / ``test``: (seeds, K) top-1. Seed repeats share their images, so gt_repeat_tau cannot see how
    much of a ranking on 5k validation images is which images they happen to be; val vs test can."""
    n_val, n_test = split_sizes(data_path)
    pooled = (val * n_val + test * n_test) / (n_val + n_test)
    tau = lambda x, y: float(kendalltau(x, y).statistic)  # noqa: E731
    out = {"n_val_images": n_val, "n_test_images": n_test,
           "val_vs_test_tau": tau(val.mean(0), test.mean(0)),
           "note": "test top-1 of the same held-out fine-tunes; nothing was fitted or selected on it"}
    for name, gt in (("test", test), ("val_plus_test", pooled)):
        out[name] = {**rank_figures(predicted, gt.mean(0)), "gt_repeat_tau": tau(gt[0], gt[1]),
                     "macs_baseline_tau": tau(log_macs, gt.mean(0))}
    return out


def split_sizes(data_path: str) -> tuple[int, int]:
    """Images in the validation and test splits, as the fine-tunes were scored."""
    from nas.data import load_data
    d = load_data(data_path, seed=0)
    return d.val.num_samples, d.test.num_samples


def compare_distill_modes(space: SearchSpace, out: Path, a: argparse.Namespace,
                          cfg: PipelineConfig, device: str) -> tuple[dict, list[float]]:
    """Weight-shared vs separate distillation of a few options of stage 2: NSR ranking and cost."""
    rng = np.random.default_rng(0)
    stage = 1
    options = sorted(rng.choice(space.stages[stage].n_options, a.separate_options, replace=False).tolist())
    shared = read_json(out / "blocks" / f"stage{stage}_nsr.json")
    separate, separate_train_s = [], []
    for opt in options:
        r = distill_stage(str(space.source), str(out / "teacher"), a.data, stage,
                          replace(cfg.distill, fixed_option=int(opt)), str(out / "separate" / f"opt{opt}"), a.subset,
                          device=device)
        separate.append(r["nsr"][0])
        separate_train_s.append(r["train_seconds"])  # recorded when trained (a rerun reuses the result)
    shared_nsr = [shared["nsr"][o] for o in options]
    distill_cmp = {"stage": space.stages[stage].name, "options": options, "shared_nsr": shared_nsr,
                   "separate_nsr": separate, "kendall_tau_shared_vs_separate": float(kendalltau(shared_nsr, separate).statistic),
                   "mean_nsr_shared": float(np.mean(shared_nsr)), "mean_nsr_separate": float(np.mean(separate)),
                   "shared_train_seconds_all_options": shared["train_seconds"],
                   "separate_train_seconds_per_option": float(np.mean(separate_train_s)),
                   "separate_seconds_for_all_options_estimate": float(np.mean(separate_train_s)) * space.stages[stage].n_options,
                   "chosen": "shared"}
    return distill_cmp, separate_train_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "pipeline_cifar"))
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--extra-samples", type=int, default=0,
                    help="fine-tune this many more fit samples (a second stratified draw) and refit on all of them")
    ap.add_argument("--sample-seeds", type=int, default=1,
                    help="fine-tune every fit sample with this many seeds and fit the predictor on their mean")
    ap.add_argument("--heldout", type=int, default=20)
    ap.add_argument("--teacher-epochs", type=float, default=15)
    ap.add_argument("--finetune-epochs", type=float, default=2.0)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--distill-steps", type=int, default=1000)
    ap.add_argument("--separate-options", type=int, default=8, help="options distilled alone for the comparison (0 skips it)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--train-device", default="cpu", help="torch device of every training (cpu, cuda, ...)")
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--install", action="store_true")
    ap.add_argument("--result-name", default="predictor_quality")
    a = ap.parse_args()

    space = SearchSpace.load("mobilenetv3_cifar")
    out = Path(a.out)
    cfg = PipelineConfig(teacher=TrainConfig(epochs=a.teacher_epochs, lr=0.1),
                         distill=DistillConfig(steps=a.distill_steps),
                         finetune=TrainConfig(epochs=a.finetune_epochs, lr=a.finetune_lr, warmup_epochs=0.1),
                         samples=a.samples, sample_seeds=a.sample_seeds, subset=a.subset)
    device = resolve_device(a.train_device)
    pred = run_pipeline(space, a.data, out, cfg, workers=a.workers, device=device)
    log = read_json(out / "pipeline.json")

    fit_pop = stratified_sample(space, a.samples, cfg.seed)
    fit_ids = {x.id for x in space.decode_many(fit_pop)}
    held = stratified_sample(space, a.heldout, seed=1000, exclude=fit_ids)
    held_ids = [x.id for x in space.decode_many(held)]
    t0 = time.time()
    accs, test_accs = [], []
    for seed in (0, 1):
        recs = run_samples(space, held, out / "teacher", out / "blocks", a.data, out / "heldout.jsonl",
                           replace(cfg.finetune, seed=seed), a.workers, subset=a.subset,
                           desc=f"held-out fine-tunes (seed {seed})", score_test=True, device=device)
        by_id = {r["arch_id"]: r for r in recs}
        accs.append(np.array([by_id[i]["val_top1"] for i in held_ids]))
        test_accs.append([by_id[i].get("test_top1") for i in held_ids])
    heldout_wall = time.time() - t0
    acc = (accs[0] + accs[1]) / 2

    if a.extra_samples:
        extra = stratified_sample(space, a.extra_samples, cfg.seed + 1, exclude=fit_ids | set(held_ids))
        run_sample_seeds(space, extra, out / "teacher", out / "blocks", a.data, out / "samples.jsonl", cfg.finetune,
                         a.sample_seeds, a.workers, subset=a.subset, device=device)
        fit_pop = np.concatenate([fit_pop, extra])
    recipe = recipe_id(cfg.finetune)
    # the fine-tunes this fit used: samples.jsonl also holds other seeds of the same networks from other runs
    used_ids = {x.id for x in space.decode_many(fit_pop)}
    sample_recs = [r for r in load_jsonl(str(out / "samples.jsonl")) if r.get("recipe") == recipe
                   and r["arch_id"] in used_ids and r.get("seed", 0) < a.sample_seeds]
    fit_acc = mean_accuracy(space, fit_pop, out / "samples.jsonl", cfg.finetune, a.sample_seeds)
    if a.extra_samples:
        kept = ("dataset", "teacher", "finetune", "distill", "samples_file", "sample_seeds")
        info = {k: pred.meta[k] for k in kept if k in pred.meta}
        nsr = load_block_quality(out / "blocks" / "block_quality.csv", space)
        pred = fit_predictor(space, nsr, fit_pop, fit_acc, info, cfg.seed)
        pred.save(out / f"predictor_m{len(fit_pop)}.json")
    predicted = pred.predict(held)
    macs_f, macs_h = np.log(cost.macs(space, fit_pop))[:, None], np.log(cost.macs(space, held))[:, None]
    par_f, par_h = np.log(cost.params(space, fit_pop))[:, None], np.log(cost.params(space, held))[:, None]
    baselines = {
        "macs": rank_figures(linear_on(macs_f, fit_acc, macs_h), acc),
        "params": rank_figures(linear_on(par_f, fit_acc, par_h), acc),
        "onehot_linear": rank_figures(linear_on(onehot_features(space, fit_pop), fit_acc,
                                                onehot_features(space, held)), acc),
    }

    distill_cmp, separate_train_s = (compare_distill_modes(space, out, a, cfg, device) if a.separate_options
                                     else ({"skipped": "--separate-options 0"}, []))

    big = space.sample(np.random.default_rng(0), 1_000_000)
    t2 = time.perf_counter()
    pred.predict(big)
    speed = 1_000_000 / (time.perf_counter() - t2)

    phases = {k: v["wall_time_s"] for k, v in log["phases"].items()}
    phases["heldout_finetunes"] = round(heldout_wall, 1)
    # compute seconds recorded by each unit of work when it ran (a resumed rerun reuses them, adds nothing)
    distill_log = read_json(out / "blocks" / "distill.json")["stages"]
    heldout_recs = [r for r in load_jsonl(str(out / "heldout.jsonl")) if r.get("recipe") == recipe]
    compute = {"distill_stage_train_s": [round(r["train_seconds"], 1) for r in distill_log],
               "samples_finetune_s_total": round(sum(r["seconds"] for r in sample_recs), 1),
               "heldout_finetune_s_total": round(sum(r["seconds"] for r in heldout_recs), 1),
               "heldout_finetunes": len(heldout_recs)}
    if separate_train_s:
        phases["separate_distillation_comparison"] = round(float(np.sum(separate_train_s)), 1)
    figures = {"n_heldout": int(len(held)), **rank_figures(predicted, acc), "vs_seed0_only": rank_figures(predicted, accs[0]),
               "baselines": baselines, "gt_repeat_tau": float(kendalltau(accs[0], accs[1]).statistic),
               "heldout_accuracy_range": [float(acc.min()), float(acc.max())],
               "m_fit_samples": int(len(fit_pop)), "sample_seeds": a.sample_seeds, "predictor": {"chosen": pred.meta["chosen"], "cv": pred.meta["cv"],
                                                             "version": pred.version},
               "teacher": log.get("teacher"), "finetune_recipe": log["config"]["finetune"],
               "distill_recipe": log["config"]["distill"], "teacher_recipe": log["config"]["teacher"],
               "phase_wall_time_s": phases, "pipeline_wall_time_s": log.get("total_wall_time_s"),
               "phase_wall_time_note": "pipeline.json sums each phase over every invocation (resumed reruns add "
                                       "their start-up); heldout_finetunes is this invocation's share",
               "compute_seconds": compute,
               "predict_archs_per_s": speed, "distill_mode_comparison": distill_cmp, "workers": a.workers,
               "train_device": device,
               "subset": a.subset}
    if all(v is not None for seed_accs in test_accs for v in seed_accs):
        figures["ground_truth_images"] = image_noise_figures(predicted, macs_h[:, 0], np.array(accs),
                                                             np.array(test_accs, dtype=float), a.data)
    print({k: figures[k] for k in ("n_heldout", "kendall_tau", "spearman", "mae", "gt_repeat_tau")})
    print("baselines:", {k: round(v["kendall_tau"], 3) for k, v in baselines.items()})
    write_result(a.result_name, figures)
    if a.install:
        dest = ROOT / "predictors" / space.name / "cifar10.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pred.path, dest)
        Predictor.load(dest, space)
        print(f"installed {dest}")


if __name__ == "__main__":
    main()
