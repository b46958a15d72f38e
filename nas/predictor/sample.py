"""``nas predictor sample``: fine-tune architectures built from the distilled blocks; record their accuracy.

Architectures are spread over the space by MACs (one per MACs quantile bin). Each is initialised from
the block library (teacher stem and head; each stage's option from its supernet, the previous stage's
adapter folded into the first 1x1 conv), fine-tuned briefly with knowledge distillation from the teacher,
and scored on the validation split. Results are appended to a JSONL file as soon as each exists.
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .. import cost
from ..blocks import build_model
from ..errors import UserError
from ..latency.engine import append_jsonl, load_jsonl
from ..progress import progress_bar
from ..space import Arch, SearchSpace
from ..supernet import stage_choices
from ..train import TrainConfig, evaluate, train_model
from .distill import load_stage_weights, recalibrate, teacher_features
from .teacher import check_teacher_data, load_teacher


def stratified_sample(space: SearchSpace, m: int, seed: int, exclude: set[str] = frozenset(),
                      pool: int = 20000) -> np.ndarray:
    """``m`` architectures, one from each MACs quantile bin of a random pool (excluding ``exclude`` ids)."""
    rng = np.random.default_rng(seed)
    cand = np.unique(space.sample(rng, pool), axis=0)
    cand = cand[rng.permutation(len(cand))]
    ids = [a.id for a in space.decode_many(cand)]
    keep = np.array([i not in exclude for i in ids])
    cand = cand[keep]
    macs = cost.macs(space, cand)
    edges = np.quantile(macs, np.linspace(0, 1, m + 1))
    out = []
    for b in range(m):
        inside = np.flatnonzero((macs >= edges[b]) & (macs <= edges[b + 1]))
        out.append(cand[rng.choice(inside)])
    return np.stack(out)


@torch.no_grad()
def build_from_blocks(space: SearchSpace, arch: Arch, teacher_arch: Arch, teacher: torch.nn.Module,
                      blocks_dir: str | Path, recal_images: list[torch.Tensor]) -> torch.nn.Module:
    """A network of ``arch`` initialised from the teacher and the distilled block library."""
    net = build_model(arch)
    sd = net.state_dict()
    tsd = teacher.state_dict()
    for k in sd:
        if k.startswith(("conv_stem.", "bn1.", "blocks.0.", "conv_head.", "classifier.")):
            sd[k] = tsd[k].clone()
    prev_map = None
    cin = arch.frame.first_channels
    for s, sc in enumerate(arch.stages):
        stage_net = load_stage_weights(space, teacher_arch, s, Path(blocks_dir) / f"stage{s}.safetensors")
        c = stage_choices(sc)
        recalibrate(stage_net, c, [teacher_features(teacher, x, s)[0][:, :cin] for x in recal_images])
        # stage s learned on the first `cin` channels of the teacher's input; the previous stage's raw output
        # reaches those channels through the first `cin` rows of its adapter: fold that square map in
        fold = None if prev_map is None else prev_map[:cin, :]
        for k, v in stage_net.export_option(c, cin, fold).items():
            sd[f"blocks.{s + 1}.{k}"] = v
        prev_map, cin = stage_net.adapter_matrix(sc.channels), sc.channels
    head = f"blocks.{len(arch.stages) + 1}.0."
    w = tsd[head + "conv.weight"][:, :, 0, 0]
    sd[head + "conv.weight"] = (w @ prev_map)[:, :, None, None]
    for k in sd:
        if k.startswith(head + "bn1."):
            sd[k] = tsd[k].clone()
    net.load_state_dict(sd)
    return net


def finetune_arch(space_path: str, arch_id: str, teacher_dir: str, blocks_dir: str, data_path: str,
                  cfg: TrainConfig, subset: Optional[int] = None, threads: Optional[int] = None,
                  init: str = "blocks", score_test: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Build one architecture (from the block library, or from scratch), fine-tune it with KD on ``device``,
    score it.

    ``score_test``: also record top-1 on the test split, for ground-truth studies (nothing fits or selects
    on it); off by default, since it adds a pass over the test split to every fine-tune."""
    from ..data import load_data

    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    space = SearchSpace.load(space_path)
    arch = space.parse_id(arch_id)
    t_arch, teacher = load_teacher(teacher_dir)
    data = load_data(data_path, seed=0, subset=subset, device=device, input_size=space.frame.input_size)
    data.train.reseed(cfg.seed)
    recal = [x.cpu() for i, (x, _) in zip(range(2), data.train)]
    torch.manual_seed(cfg.seed)
    net = build_from_blocks(space, arch, t_arch, teacher, blocks_dir, recal) if init == "blocks" else build_model(arch)
    net.to(device)
    teacher.to(device)
    init_top1 = evaluate(net, data.val, max_batches=2)
    train_model(net, data.train, cfg, teacher=teacher, device=device)
    rec = {"arch_id": arch_id, "val_top1": evaluate(net, data.val), "init_val_top1_2batches": init_top1,
           "seed": cfg.seed, "recipe": recipe_id(cfg, init), "seconds": time.time() - t0, "config": asdict(cfg),
           "init": init, "device": device}
    if score_test:
        rec["test_top1"] = evaluate(net, data.test)
    return rec


def recipe_id(cfg: TrainConfig, init: str = "blocks") -> str:
    """Identifies a fine-tuning recipe (seed excluded): results of another recipe are never mixed in."""
    import hashlib
    import json

    blob = json.dumps({**asdict(cfg), "seed": None, "init": init}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def run_samples(space: SearchSpace, pop: np.ndarray, teacher_dir: str | Path, blocks_dir: str | Path,
                data_path: str | Path, results: str | Path, cfg: TrainConfig, workers: int = 0,
                ray_address: Optional[str] = None, subset: Optional[int] = None, quiet: bool = False,
                desc: str = "fine-tune samples", score_test: bool = False,
                device: str = "cpu") -> list[dict[str, Any]]:
    """Fine-tune every architecture of ``pop`` not yet in ``results`` (JSONL) on ``device``; Ray tasks when
    ``workers > 0``.

    ``score_test``: new fine-tunes also record test top-1 (see ``finetune_arch``)."""
    check_teacher_data(teacher_dir, data_path, subset)
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    recipe = recipe_id(cfg)
    mine = lambda r: r.get("recipe") == recipe and r["seed"] == cfg.seed  # noqa: E731
    done = {r["arch_id"] for r in load_jsonl(str(results)) if mine(r)}
    ids = [a.id for a in space.decode_many(pop)]
    todo = [i for i in ids if i not in done]
    args = (str(space.source),)
    tail = (str(teacher_dir), str(blocks_dir), str(data_path), cfg, subset)
    with progress_bar(quiet) as bar:
        task = bar.add_task(desc, total=len(ids), completed=len(ids) - len(todo))
        if workers > 0 or ray_address:
            import ray

            from ..parallel import device_in_task, ray_session, training_task_options

            with ray_session(workers, ray_address):
                remote = ray.remote(max_retries=2, **training_task_options(device, workers))(finetune_arch)
                pending = [remote.remote(*args, i, *tail, 1, score_test=score_test, device=device_in_task(device))
                           for i in todo]
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    append_jsonl(str(results), [ray.get(ready[0])])
                    bar.advance(task)
        else:
            for i in todo:
                append_jsonl(str(results), [finetune_arch(*args, i, *tail, score_test=score_test, device=device)])
                bar.advance(task)
    wanted = set(ids)
    return [r for r in load_jsonl(str(results)) if r["arch_id"] in wanted and mine(r)]


def run_sample_seeds(space: SearchSpace, pop: np.ndarray, teacher_dir: str | Path, blocks_dir: str | Path,
                     data_path: str | Path, results: str | Path, cfg: TrainConfig, seeds: int = 1,
                     workers: int = 0, ray_address: Optional[str] = None, subset: Optional[int] = None,
                     quiet: bool = False, device: str = "cpu") -> np.ndarray:
    """Fine-tune every architecture with seeds ``cfg.seed .. cfg.seed + seeds - 1``; mean accuracy per row."""
    for k in range(seeds):
        run_samples(space, pop, teacher_dir, blocks_dir, data_path, results, replace(cfg, seed=cfg.seed + k),
                    workers, ray_address, subset, quiet,
                    desc="fine-tune samples" + (f" (seed {cfg.seed + k})" if seeds > 1 else ""), device=device)
    return mean_accuracy(space, pop, results, cfg, seeds)


def mean_accuracy(space: SearchSpace, pop: np.ndarray, results: str | Path, cfg: TrainConfig,
                  seeds: int = 1) -> np.ndarray:
    """Validation top-1 of each row of ``pop`` under ``cfg``'s recipe, averaged over ``seeds`` fine-tune seeds.

    Averaging k seeds divides the fine-tune noise variance by k: the targets the predictor is fitted to,
    and the cross-validation that picks the model, rank more like the true accuracies."""
    if not Path(results).exists():
        raise UserError(results, "no fine-tuned samples here", "run nas predictor sample or nas pipeline with the same --out first")
    recipe = recipe_id(cfg)
    wanted = {cfg.seed + k for k in range(seeds)}
    acc: dict[str, dict[int, float]] = {}
    for r in load_jsonl(str(results)):
        if r.get("recipe") == recipe and r["seed"] in wanted:
            acc.setdefault(r["arch_id"], {})[r["seed"]] = r["val_top1"]
    ids = [a.id for a in space.decode_many(pop)]
    missing = [i for i in ids if len(acc.get(i, ())) < seeds]
    if missing:
        raise UserError(results, f"{len(missing)} of {len(ids)} samples lack a fine-tune with seeds {sorted(wanted)}",
                        "run nas predictor sample with the same --samples, --seed and --sample-seeds first")
    return np.array([np.mean(list(acc[i].values())) for i in ids])
