"""How well the blockwise-distilled predictor ranks architectures it never saw.

    python benchmarks/predictor_quality.py --data ../shared/data/cifar10.npz --workers 2 --install

1. runs (or resumes) the whole pipeline for mobilenetv3_cifar: teacher, block library, M fine-tuned samples, fit;
2. fine-tunes K held-out architectures (never used to fit) with the same recipe, twice (seeds 0 and 1),
   scored on the validation and the test split (``--heldout-extra K2`` adds a second, disjoint draw);
3. compares predicted and measured accuracy, against MACs, params and a one-hot linear model on the same M samples;
4. compares weight-shared and separate distillation of a few options of one stage (cost and ranking).

The result keeps every fit and held-out network with its measured top-1 (``architectures``), so that other
predictors can be scored against the same ground truth without fine-tuning anything again.

Writes benchmarks/results/predictor_quality.json; ``--install`` copies the predictor to
predictors/mobilenetv3_cifar/cifar10.json (the shipped default).
"""
from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import ROOT, data_sha256, repeat_ceiling_tau, write_result
from scipy.stats import kendalltau, spearmanr

from nas import cost
from nas.io import read_json
from nas.latency.engine import load_jsonl
from nas.predictor.distill import DistillConfig, distill_stage
from nas.predictor.fit import fit_ridge, onehot_features
from nas.predictor.model import Predictor, predict_from_features
from nas.predictor.pipeline import PipelineConfig, fit_on_samples, run_pipeline, training_recipe
from nas.predictor.sample import mean_accuracy, recipe_id, run_sample_seeds, run_samples, stratified_sample
from nas.space import SearchSpace
from nas.train import resolve_device


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


def benchmark_sets(space: SearchSpace, samples: int, extra_samples: int, heldout: int, heldout_extra: int,
                   seed: int = 0, more_samples: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The fit samples, the extra fit samples and the held-out draws, each disjoint from the others.
    ``more_samples``: a third fit draw (seed 3000, disjoint from all of those), appended to the extra samples."""
    fit_pop = stratified_sample(space, samples, seed)
    fit_ids = {x.id for x in space.decode_many(fit_pop)}
    held = stratified_sample(space, heldout, seed=1000, exclude=fit_ids)
    held_ids = {x.id for x in space.decode_many(held)}
    extra = (stratified_sample(space, extra_samples, seed + 1, exclude=fit_ids | held_ids)
             if extra_samples else fit_pop[:0])
    draws = [held]
    if heldout_extra:
        taken = fit_ids | held_ids | {x.id for x in space.decode_many(extra)}
        draws.append(stratified_sample(space, heldout_extra, seed=2000, exclude=taken))
    if more_samples:
        taken = fit_ids | {x.id for d in (extra, *draws) for x in space.decode_many(d)}
        extra = np.concatenate([extra, stratified_sample(space, more_samples, seed=3000, exclude=taken)])
    return fit_pop, extra, draws


def heldout_truth(space: SearchSpace, pop: np.ndarray, out: Path, a: argparse.Namespace, cfg: PipelineConfig,
                  device: str, label: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validation and test top-1 of every held-out network, fine-tuned with seeds 0 and 1: two (2, K) arrays
    (test is NaN where a fine-tune did not record it). Fine-tunes already in heldout.jsonl are reused."""
    ids = [x.id for x in space.decode_many(pop)]
    val, test = [], []
    for seed in (0, 1):
        recs = run_samples(space, pop, out / "teacher", out / "blocks", a.data, out / "heldout.jsonl",
                           replace(cfg.finetune, seed=seed), a.workers, subset=a.subset,
                           desc=f"held-out fine-tunes{label} (seed {seed})", score_test=True, device=device)
        by_id = {r["arch_id"]: r for r in recs}
        val.append([by_id[i]["val_top1"] for i in ids])
        test.append([by_id[i].get("test_top1", np.nan) for i in ids])
    return np.array(val), np.array(test, dtype=float)


def device_of(record: dict) -> str:
    """Where a fine-tune ran (records made before devices were recorded ran on the CPU)."""
    return record.get("device") or "cpu"


def device_check(out: Path, recipe: str) -> dict | None:
    """Held-out fine-tunes repeated on another device with seed 0 (``heldout_device_check.jsonl``) against
    the same seed in heldout.jsonl: does that device give the recipe's results?"""
    path = out / "heldout_device_check.jsonl"
    if not path.exists():
        return None
    main = [r for r in load_jsonl(str(out / "heldout.jsonl")) if r.get("recipe") == recipe]
    ref = {(r["arch_id"], r["seed"]): r for r in main}
    other = [r for r in load_jsonl(str(path)) if r.get("recipe") == recipe and (r["arch_id"], 0) in ref
             and (r["arch_id"], 1) in ref]
    if len(other) < 3:
        return None
    res = {"n": len(other), "device": sorted({device_of(r) for r in other}),
           "reference_device": sorted({device_of(ref[(r["arch_id"], 0)]) for r in other})}
    for key in ("val_top1", "test_top1"):
        dev = np.array([r[key] for r in other])
        s0 = np.array([ref[(r["arch_id"], 0)][key] for r in other])
        s1 = np.array([ref[(r["arch_id"], 1)][key] for r in other])
        res[key] = {"tau_same_seed_other_device": float(kendalltau(dev, s0).statistic),
                    "tau_seed0_vs_seed1": float(kendalltau(s0, s1).statistic),
                    "mean_abs_diff_same_seed": float(np.mean(np.abs(dev - s0))),
                    "mean_abs_diff_seed0_vs_seed1": float(np.mean(np.abs(s0 - s1))),
                    "mean_other_device": float(dev.mean()), "mean_reference": float(s0.mean())}
    return res


def draw_figures(draws: list[np.ndarray], predicted: np.ndarray, accs: np.ndarray,
                 baselines_pred: dict[str, np.ndarray]) -> list[dict]:
    """The headline figures of each held-out draw on its own."""
    out, start = [], 0
    for d in draws:
        part = slice(start, start + len(d))
        start += len(d)
        acc = accs[:, part].mean(0)
        out.append({"n_heldout": len(d), **rank_figures(predicted[part], acc),
                    "baselines_kendall_tau": {k: float(kendalltau(v[part], acc).statistic)
                                              for k, v in baselines_pred.items()},
                    "gt_repeat_tau": float(kendalltau(accs[0, part], accs[1, part]).statistic),
                    "heldout_accuracy_range": [float(acc.min()), float(acc.max())]})
    return out


def architecture_rows(space: SearchSpace, fit_pop: np.ndarray, fit_acc: np.ndarray, held: np.ndarray,
                      val: np.ndarray, test: np.ndarray, predicted: np.ndarray) -> dict:
    """Every network behind the figures, so that another predictor can be fitted and scored later without a
    fine-tune: fit samples with the accuracy they were fitted on, held-out ones with each seed's top-1 and the
    prediction. Features need no storing: the predictor's ``stage_nsr`` and the arch ids give them."""
    r = lambda x: round(float(x), 6)  # noqa: E731
    fit = [{"arch_id": x.id, "val_top1": r(y)} for x, y in zip(space.decode_many(fit_pop), fit_acc)]
    heldout = [{"arch_id": x.id, "val_top1": [r(v) for v in val[:, k]],
                "test_top1": [None if np.isnan(t) else r(t) for t in test[:, k]], "predicted": r(predicted[k])}
               for k, x in enumerate(space.decode_many(held))]
    return {"fit": fit, "heldout": heldout}


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
    ap.add_argument("--more-samples", type=int, default=0,
                    help="a third stratified fit draw of this many networks (seed 3000), fine-tuned and fitted like "
                         "the extra samples")
    ap.add_argument("--sample-seeds", type=int, default=1,
                    help="fine-tune every fit sample with this many seeds and fit the predictor on their mean")
    ap.add_argument("--heldout", type=int, default=20)
    ap.add_argument("--heldout-extra", type=int, default=0,
                    help="a second held-out draw of this many networks (seed 2000, disjoint from every other set), "
                         "fine-tuned the same way; the headline figures then cover both draws")
    ap.add_argument("--teacher-epochs", type=float, default=None, help="default: the pipeline's recipe")
    ap.add_argument("--finetune-epochs", type=float, default=None, help="default: the pipeline's recipe")
    ap.add_argument("--finetune-lr", type=float, default=None, help="default: the pipeline's recipe")
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
    cfg = PipelineConfig(teacher=training_recipe("teacher", a.teacher_epochs),
                         distill=DistillConfig(steps=a.distill_steps),
                         finetune=training_recipe("finetune", a.finetune_epochs, a.finetune_lr),
                         samples=a.samples, sample_seeds=a.sample_seeds, subset=a.subset)
    device = resolve_device(a.train_device)
    pred = run_pipeline(space, a.data, out, cfg, workers=a.workers, device=device)
    log = read_json(out / "pipeline.json")

    fit_pop, extra, draws = benchmark_sets(space, a.samples, a.extra_samples, a.heldout, a.heldout_extra, cfg.seed,
                                           a.more_samples)
    t0 = time.time()
    truth = [heldout_truth(space, d, out, a, cfg, device, f" draw {k + 1}" if len(draws) > 1 else "")
             for k, d in enumerate(draws)]
    heldout_wall = time.time() - t0
    held = np.concatenate(draws)
    accs = np.concatenate([t[0] for t in truth], axis=1)  # (seeds, K) validation top-1
    test_accs = np.concatenate([t[1] for t in truth], axis=1)
    acc = accs.mean(0)

    if len(extra):
        run_sample_seeds(space, extra, out / "teacher", out / "blocks", a.data, out / "samples.jsonl", cfg.finetune,
                         a.sample_seeds, a.workers, subset=a.subset, device=device)
        fit_pop = np.concatenate([fit_pop, extra])
    recipe = recipe_id(cfg.finetune)
    # the fine-tunes this fit used: samples.jsonl also holds other seeds of the same networks from other runs
    used_ids = {x.id for x in space.decode_many(fit_pop)}
    sample_recs = [r for r in load_jsonl(str(out / "samples.jsonl")) if r.get("recipe") == recipe
                   and r["arch_id"] in used_ids and r.get("seed", 0) < a.sample_seeds]
    fit_acc = mean_accuracy(space, fit_pop, out / "samples.jsonl", cfg.finetune, a.sample_seeds)
    if len(extra):
        pred = fit_on_samples(space, out, fit_pop, fit_acc, cfg.dataset, cfg.finetune, a.sample_seeds, cfg.seed)
        pred.save(out / f"predictor_m{len(fit_pop)}.json")
    predicted = pred.predict(held)
    macs_f, macs_h = np.log(cost.macs(space, fit_pop))[:, None], np.log(cost.macs(space, held))[:, None]
    par_f, par_h = np.log(cost.params(space, fit_pop))[:, None], np.log(cost.params(space, held))[:, None]
    baselines_pred = {
        "macs": linear_on(macs_f, fit_acc, macs_h),
        "params": linear_on(par_f, fit_acc, par_h),
        "onehot_linear": linear_on(onehot_features(space, fit_pop), fit_acc, onehot_features(space, held)),
    }
    baselines = {k: rank_figures(v, acc) for k, v in baselines_pred.items()}

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
    all_held = {x.id for x in space.decode_many(held)}
    heldout_recs = [r for r in load_jsonl(str(out / "heldout.jsonl")) if r.get("recipe") == recipe
                    and r["arch_id"] in all_held and r["seed"] in (0, 1)]  # the fine-tunes in the figures
    cpu_recs = [r for r in heldout_recs if device_of(r) == "cpu"]
    compute = {"distill_stage_train_s": [round(r["train_seconds"], 1) for r in distill_log],
               "samples_finetune_s_total": round(sum(r["seconds"] for r in sample_recs if device_of(r) == "cpu"), 1),
               "samples_finetunes": sum(device_of(r) == "cpu" for r in sample_recs),
               "heldout_finetune_s_total": round(sum(r["seconds"] for r in cpu_recs), 1),
               "heldout_finetunes": len(cpu_recs),
               "note": "CPU fine-tunes only; sample_devices and heldout_devices say how many ran elsewhere"}
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
    if len(draws) > 1:
        figures["draws"] = draw_figures(draws, predicted, accs, baselines_pred)
    figures["repeat_ceiling_tau"] = repeat_ceiling_tau(accs.tolist())
    figures["data_sha256"] = data_sha256(a.data)
    figures["architectures"] = architecture_rows(space, fit_pop, fit_acc, held, accs, test_accs, predicted)
    figures["heldout_devices"] = dict(Counter(device_of(r) for r in heldout_recs))
    figures["sample_devices"] = dict(Counter(device_of(r) for r in sample_recs))
    check = device_check(out, recipe)
    if check:
        figures["device_check"] = check
    if not np.isnan(test_accs).any():
        figures["ground_truth_images"] = image_noise_figures(predicted, macs_h[:, 0], accs, test_accs, a.data)
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
