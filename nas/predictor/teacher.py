"""``nas teacher``: train the reference network (the space's largest, or a named arch), or load a user's."""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from ..blocks import build_model
from ..data import dataset_name
from ..errors import UserError, refuse_changed_settings
from ..export import load_network, load_user_weights, save_network
from ..io import read_json, write_json
from ..space import SearchSpace
from ..train import TrainConfig, evaluate, train_model


def teacher_arch(space: SearchSpace, arch_id: Optional[str] = None):
    return space.parse_id(arch_id) if arch_id and arch_id != "largest" else space.decode(space.largest())


def teacher_dataset(report: dict[str, Any]) -> Optional[str]:
    """The dataset a teacher report names; a report from before teachers recorded it is named by its data path
    (``None`` where that path no longer tells)."""
    if report.get("dataset"):
        return report["dataset"]
    with contextlib.suppress(UserError):
        return dataset_name(report["data"])
    return None


def check_teacher_data(teacher_dir: str | Path, data_path: str | Path, subset: Optional[int] = None) -> None:
    """Refuse to mix data in one pipeline folder: the teacher next to ``teacher_dir`` (its report,
    ``teacher.json``) was made on ``data_path``'s dataset and, if trained here, on the same ``subset``; or there
    is none yet. Distillation, samples and the predictor's name all follow the teacher, and results already in
    the folder would be reused for the other data."""
    report_path = Path(teacher_dir).parent / "teacher.json"
    if not report_path.exists():
        return
    report = read_json(report_path, "teacher report")
    theirs = teacher_dataset(report)
    ours = dataset_name(data_path)
    if theirs is not None and theirs != ours:
        raise UserError(report_path, f"this folder's teacher was trained on {theirs} ({report['data']}), not on "
                        f"{ours} ({data_path})", "use another --out for other data, or give the same --data")
    if report.get("source") == "trained" and report.get("subset") != subset:
        raise UserError(report_path, f"this folder's teacher was trained on {_images(report.get('subset'))}, "
                        f"not {_images(subset)}", f"{_subset_flag(report.get('subset'))}, or use another --out")


def _images(subset: Optional[int]) -> str:
    return "all training images" if subset is None else f"--subset {subset}"


def _subset_flag(subset: Optional[int]) -> str:
    return "drop --subset to use it" if subset is None else f"give --subset {subset} to use it"


def check_teacher_recipe(report: dict[str, Any], report_path: Path, cfg: TrainConfig) -> None:
    """A teacher trained here with another recipe (epochs, lr, seed, ...) is not the one asked for."""
    if report.get("source") != "trained" or "config" not in report:  # a user's weights, or cannot tell
        return
    refuse_other_recipe(report_path, "this folder's teacher was trained with", report["config"], asdict(cfg))


# the command-line flags that ask for a recipe's values
_RECIPE_FLAGS = {"epochs": "--teacher-epochs", "lr": "--teacher-lr", "steps": "--steps", "seed": "--seed"}


def refuse_other_recipe(path: Path, made_with: str, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
    """What ``path`` holds was made with the recipe ``theirs``; asked for ``ours``, reusing it would be wrong."""
    def fix(keys: list[str]) -> str:
        if set(keys) <= set(_RECIPE_FLAGS) and all(theirs.get(k) is not None for k in keys):
            flags = " ".join(f"{_RECIPE_FLAGS[k]} {theirs[k]:g}" for k in keys)
            return f"give {flags} to use it, or use another --out"
        return "use the same recipe, or another --out"

    refuse_changed_settings(path, made_with, theirs, ours, fix)


def train_teacher(space: SearchSpace, data_path: str | Path, out_dir: str | Path, arch_id: Optional[str] = None,
                  cfg: TrainConfig = TrainConfig(epochs=15), checkpoint: Optional[str] = None,
                  subset: Optional[int] = None, batch_size: int = 128, quiet: bool = False,
                  device: str = "cpu") -> dict[str, Any]:
    """Train (resumably) or load the teacher on ``device``; saves ``<out>/teacher/`` (arch.json, safetensors,
    onnx) and a report."""
    from ..data import load_data

    out = Path(out_dir)
    report_path = out / "teacher.json"
    check_teacher_data(out / "teacher", data_path, subset)
    if report_path.exists() and (out / "teacher" / "model.safetensors").exists():
        report = read_json(report_path, "teacher report")
        if arch_id is not None and report["arch_id"] != teacher_arch(space, arch_id).id:
            raise UserError(report_path, f"this folder's teacher is {report['arch_id']}, not {arch_id}",
                            "drop --arch to use it, or use another --out")
        if not checkpoint:
            check_teacher_recipe(report, report_path, cfg)
        return report
    arch = teacher_arch(space, arch_id)
    data = load_data(data_path, batch_size=batch_size, seed=cfg.seed, subset=subset, device=device,
                     input_size=space.frame.input_size)
    if data.num_classes != space.frame.num_classes:
        raise UserError(str(data_path), f"has {data.num_classes} classes, space {space.name} {space.frame.num_classes}",
                        "use data that matches the space")
    torch.manual_seed(cfg.seed)
    model = build_model(arch)
    history: dict[str, Any] = {}
    if checkpoint:
        load_user_weights(model, checkpoint, arch.id, "pass --arch for the checkpoint's architecture")
    else:
        history = train_model(model, data.train, cfg, checkpoint=out / "teacher.ckpt", desc="teacher", quiet=quiet,
                              device=device)
    model.to(device)
    report = {"arch_id": arch.id, "val_top1": evaluate(model, data.val), "test_top1": evaluate(model, data.test),
              "source": str(checkpoint) if checkpoint else "trained", "data": str(data_path), "dataset": data.name,
              "subset": subset,
              "device": device,
              "config": asdict(cfg), "train_seconds": history.get("seconds", 0.0), "history": history.get("history")}
    save_network(arch, model.cpu().eval(), out / "teacher")
    write_json(report_path, report)
    (out / "teacher.ckpt").unlink(missing_ok=True)
    return report


def load_teacher(net_dir: str | Path, device: str = "cpu"):
    """The teacher network saved in ``net_dir`` (``<pipeline out>/teacher``), frozen, channels_last, on ``device``."""
    if not (Path(net_dir) / "arch.json").exists():
        raise UserError(net_dir, "no teacher here", "run nas teacher or nas pipeline with the same --out first")
    arch, model = load_network(net_dir)
    for p in model.parameters():
        p.requires_grad_(False)
    return arch, model.to(device, memory_format=torch.channels_last).eval()
