"""Training and evaluation loops: SGD with warm-up + cosine, label smoothing, optional knowledge distillation
from a teacher, channels_last, and checkpoints at epoch ends (``torch.load(weights_only=True)`` to resume)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError, refuse_changed_settings
from .io import read_torch, write_torch
from .progress import progress_bar


def resolve_device(name: Optional[str] = None) -> str:
    """The torch device training runs on (``--train-device``): ``cpu`` (default), ``cuda``, ``cuda:N`` or ``mps``,
    checked against what this torch build can reach, so a typo or a missing GPU fails before any work starts."""
    name = name or "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError("--train-device", f"unknown torch device {name!r}", "use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--train-device", f"{name}: this torch build sees no CUDA GPU",
                            "use --train-device cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError("--train-device", f"{name}: only {torch.cuda.device_count()} CUDA GPU(s) visible",
                            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--train-device", "mps: no Apple GPU available to this torch build", "use cpu")
    elif dev.type != "cpu":
        raise UserError("--train-device", f"{name}: unsupported device type", "use cpu, cuda, cuda:N or mps")
    return str(dev)


@dataclass
class TrainConfig:
    epochs: float = 10.0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.5
    kd_alpha: float = 0.9  # share of the distillation term when a teacher is given
    kd_temperature: float = 4.0
    max_steps: Optional[int] = None
    seed: int = 0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms and biases (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1),
                    reduction="batchmean") * T * T


@torch.no_grad()
def evaluate(model: nn.Module, loader, max_batches: Optional[int] = None) -> float:
    """Top-1 accuracy (0..1)."""
    model.eval()
    correct, total = count_correct(model, loader, max_batches)
    return correct / max(1, total)


@torch.no_grad()
def count_correct(model: Callable[[torch.Tensor], torch.Tensor], loader,
                  max_batches: Optional[int] = None) -> tuple[int, int]:
    """Top-1 hits and images over ``loader`` (the model's mode left as it is)."""
    correct = total = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct, total


def train_model(model: nn.Module, train_loader, cfg: TrainConfig, teacher: Optional[nn.Module] = None,
                checkpoint: Optional[str | os.PathLike] = None, desc: str = "train", quiet: bool = True,
                val_loader=None, device: Optional[str] = None) -> dict[str, Any]:
    """Train ``model`` in place; resumable from ``checkpoint`` (written at every epoch end).

    ``device``: where the model (and teacher) live; the loaders must yield batches there too."""
    torch.manual_seed(cfg.seed)
    if device is not None:
        model.to(device)
        if teacher is not None:
            teacher.to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    steps_per_epoch = len(train_loader)
    total = cfg.max_steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    warmup = min(total // 2, int(cfg.warmup_epochs * steps_per_epoch))
    step, history = 0, []
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        state = read_torch(ckpt, "training checkpoint", device or "cpu")
        if "config" in state:  # a run interrupted under another recipe would continue on a mixed schedule
            refuse_changed_settings(ckpt, "this interrupted training ran with", state["config"], asdict(cfg),
                                    "give the same settings to continue it, or delete the checkpoint to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])
        if hasattr(train_loader, "load_state_dict"):
            train_loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["torch_rng"].cpu())
    if teacher is not None:
        teacher.eval()
    t0 = time.time()
    with progress_bar(quiet) as bar:
        task = bar.add_task(desc, total=total, completed=step)
        while step < total:
            model.train()
            seen = loss_sum = 0.0
            for x, y in train_loader:
                if step >= total:
                    break
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, warmup, cfg.lr)
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd_loss(logits, t_logits, cfg.kd_temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                seen += len(y)
                loss_sum += loss.item() * len(y)
                bar.advance(task)
            entry = {"step": step, "loss": loss_sum / max(1.0, seen), "seconds": time.time() - t0}
            if val_loader is not None:
                entry["val_top1"] = evaluate(model, val_loader)
            history.append(entry)
            if ckpt is not None:
                _save_checkpoint(ckpt, model, opt, step, history, train_loader, cfg)
    return {"steps": step, "history": history, "config": asdict(cfg), "seconds": time.time() - t0}


def _save_checkpoint(path: Path, model, opt, step, history, loader, cfg: TrainConfig) -> None:
    write_torch(path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                       "history": history, "loader": loader.state_dict() if hasattr(loader, "state_dict") else {},
                       "torch_rng": torch.get_rng_state(), "config": asdict(cfg)})
