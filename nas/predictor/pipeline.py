"""``nas pipeline``: teacher -> block library -> fine-tuned samples -> fitted predictor, in one resumable command.

Every phase writes its results under ``--out`` as it goes and is skipped when they exist, so running
the same command again after an interruption continues where it stopped. Phase wall times go to
``pipeline.json``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data import dataset_name
from ..errors import UserError
from ..io import read_json, write_json
from ..space import SearchSpace
from ..train import TrainConfig
from .distill import DistillConfig, load_block_quality, run_distillation
from .fit import fit_predictor
from .model import Predictor
from .sample import run_sample_seeds, stratified_sample
from .teacher import teacher_dataset, train_teacher


@dataclass
class PipelineConfig:
    teacher: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, lr=0.1))
    distill: DistillConfig = field(default_factory=DistillConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, lr=0.01, warmup_epochs=0.1))
    samples: int = 40
    sample_seeds: int = 1  # fine-tunes per sample (seeds 0..k-1); the predictor fits their mean
    seed: int = 0
    subset: Optional[int] = None
    dataset: Optional[str] = None  # recorded in the predictor; None: the data's own name (data.dataset_name)


def training_recipe(phase: str, epochs: Optional[float] = None, lr: Optional[float] = None,
                    seed: int = 0) -> TrainConfig:
    """The pipeline's ``teacher`` or ``finetune`` recipe, with ``epochs`` and ``lr`` where given."""
    kw = {k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None}
    return replace(getattr(PipelineConfig(), phase), **kw, seed=seed)


def samples_dataset(out: str | Path, dataset: Optional[str] = None) -> str:
    """``dataset`` if given, else the name of the data the teacher in ``out`` was trained on."""
    if dataset:
        return dataset
    report_path = Path(out) / "teacher.json"
    name = teacher_dataset(read_json(report_path, "teacher report")) if report_path.exists() else None
    if name:
        return name
    raise UserError("--dataset", f"cannot tell which dataset the samples in {out} were made on",
                    "name it with --dataset (e.g. cifar10)")


def provenance(out: str | Path, dataset: Optional[str], finetune: TrainConfig, sample_seeds: int) -> dict[str, Any]:
    """What a predictor fitted on the samples in ``out`` records of how they were made: dataset (``None``: the
    teacher's), teacher, distillation and fine-tune recipes."""
    out = Path(out)
    info: dict[str, Any] = {"dataset": samples_dataset(out, dataset), "finetune": asdict(finetune),
                            "samples_file": "samples.jsonl", "sample_seeds": sample_seeds}
    if (out / "teacher.json").exists():
        report = read_json(out / "teacher.json", "teacher report")
        info["teacher"] = {k: report[k] for k in ("arch_id", "val_top1", "test_top1")}
    if (out / "blocks" / "distill.json").exists():
        info["distill"] = read_json(out / "blocks" / "distill.json", "distillation log")["config"]
    return info


def fit_on_samples(space: SearchSpace, out: str | Path, pop: np.ndarray, acc: np.ndarray, dataset: Optional[str],
                   finetune: TrainConfig, sample_seeds: int, seed: int,
                   placement_scores: Optional[np.ndarray] = None) -> Predictor:
    """The predictor fitted to fine-tuned samples of the pipeline folder ``out``: its block library's NSRs as
    features, and its :func:`provenance` recorded."""
    nsr = load_block_quality(Path(out) / "blocks" / "block_quality.csv", space)
    return fit_predictor(space, nsr, pop, acc, provenance(out, dataset, finetune, sample_seeds), seed,
                         placement_scores=placement_scores)


def run_pipeline(space: SearchSpace, data_path: str | Path, out_dir: str | Path, cfg: PipelineConfig = PipelineConfig(),
                 workers: int = 0, ray_address: Optional[str] = None, quiet: bool = False,
                 device: str = "cpu") -> Predictor:
    """Every phase on ``device`` (a torch device: ``cpu``, ``cuda``...); Ray tasks when ``workers > 0``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "pipeline.json"
    log: dict[str, Any] = read_json(log_path, "pipeline log") if log_path.exists() else {"phases": {}}
    log["config"] = asdict(cfg)
    log.setdefault("devices", [])
    if device not in log["devices"]:
        log["devices"].append(device)  # a resumed run may continue elsewhere

    def phase(name: str, fn):
        t0 = time.time()
        result = fn()
        entry = log["phases"].setdefault(name, {"wall_time_s": 0.0})
        entry["wall_time_s"] = round(entry["wall_time_s"] + time.time() - t0, 1)
        write_json(log_path, log)
        if not quiet:
            print(f"[{name}] done in {time.time() - t0:.0f}s")
        return result

    teacher = phase("teacher", lambda: train_teacher(space, data_path, out, cfg=cfg.teacher, subset=cfg.subset,
                                                      quiet=quiet, device=device))
    log["teacher"] = {k: teacher[k] for k in ("arch_id", "val_top1", "test_top1")}
    phase("distill", lambda: run_distillation(space, out / "teacher", data_path, out / "blocks", cfg.distill,
                                              workers, ray_address, cfg.subset, quiet, device))
    pop = stratified_sample(space, cfg.samples, cfg.seed)
    acc = phase("samples", lambda: run_sample_seeds(space, pop, out / "teacher", out / "blocks", data_path,
                                                    out / "samples.jsonl", cfg.finetune, cfg.sample_seeds, workers,
                                                    ray_address, cfg.subset, quiet, device))
    dataset = cfg.dataset or dataset_name(data_path)
    pred = phase("fit", lambda: fit_on_samples(space, out, pop, acc, dataset, cfg.finetune, cfg.sample_seeds,
                                               cfg.seed))
    pred.save(out / "predictor.json")
    log["predictor"] = {"chosen": pred.meta["chosen"], "cv": pred.meta["cv"][pred.meta["chosen"]]}
    log["total_wall_time_s"] = round(sum(p["wall_time_s"] for p in log["phases"].values()), 1)
    write_json(log_path, log)
    return pred

