"""Downsampling placement with a balanced mixture of supernets (after Javan, Toews, Pedersoli, AutoML 2023).

Where a network halves its resolution changes its accuracy a lot, and one weight-sharing supernet ranks
placements badly because all placements fight over the same weights. The fix: M supernets, with the
placements assigned to them in a balanced, learned way.

* ``W`` (placements x models): moving-average validation accuracy of each placement on each model.
* Each epoch: ``P = softmax_models(tau * W)``, balanced with Sinkhorn iterations so that every model takes an
  equal share of the placements (rows sum to 1, columns to n_placements / M); ``tau`` rises over training.
* Each minibatch: draw a placement uniformly, a model from ``P[placement]``, take one SGD step on that model
  for that placement, and update ``W[placement, model]`` from one validation batch.
* ``M = 1`` is plain single-supernet training.

The space here is ResNet20-like: a stem conv, 9 basic blocks, and ``pools`` 2x2 max-pools placed before
some of the blocks (C(9, 2) = 36 placements). Two width rules:

* ``fixed`` (the paper's ResNet20 search): each block keeps ResNet20's width for its position (16, 16, 16,
  32, ... 64 at base width 16) wherever the pools sit, so a placement changes only resolution; every
  placement uses the same weights whole, and the cost grows the later the network pools.
* ``doubling``: the width doubles after each pool, so every placement costs the same MACs. Block
  weights are stored at their largest width and sliced, so placements also share weights across widths.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError, refuse_changed_settings
from .io import read_torch, write_csv, write_json, write_torch
from .space import Arch, SearchSpace, placement_name
from .supernet import SlicedBN, batch_statistics, recalibrate_bn


# ---------------------------------------------------------------------- space
WIDTH_RULES = ("doubling", "fixed")


@dataclass(frozen=True)
class PlacementSpace:
    blocks: int = 9
    pools: int = 2
    base_width: int = 16
    num_classes: int = 10
    widths_rule: str = "doubling"
    input_size = 32  # CIFAR-sized, like ResNet20 (a class attribute, not a field: recipes hash the fields)

    def __post_init__(self):
        if not (0 < self.pools < self.blocks):
            raise UserError("placement space", f"cannot place {self.pools} pools among {self.blocks} blocks",
                            "use 0 < pools < blocks")
        if self.widths_rule not in WIDTH_RULES:
            raise UserError("--widths", f"unknown width rule {self.widths_rule!r}",
                            f"use one of {', '.join(WIDTH_RULES)}")

    @property
    def placements(self) -> list[tuple[int, ...]]:
        """Each placement: the (1-based) blocks that a 2x2 max-pool precedes, e.g. (4, 7)."""
        return list(itertools.combinations(range(1, self.blocks + 1), self.pools))

    def widths(self, placement: tuple[int, ...]) -> list[int]:
        """Each block's output width: set by the pools before it (``doubling``), or by its position alone, as in
        the default placement (``fixed``)."""
        pools = self.default() if self.widths_rule == "fixed" else placement
        return [self.base_width * 2 ** sum(b >= p for p in pools) for b in range(1, self.blocks + 1)]

    def block_widths(self) -> list[int]:
        """The width each block's weights are stored at: the widest any placement uses (``doubling``: one
        size for all, so that the initialisation scale is the same in every block), or its own (``fixed``)."""
        if self.widths_rule == "fixed":
            return self.widths(self.default())
        return [self.base_width * 2 ** self.pools] * self.blocks

    def default(self) -> tuple[int, ...]:
        """ResNet20's own layout: 3 blocks per resolution, pools before blocks 4 and 7 (the paper's [4,3,3]
        counts the stem conv with the first stage)."""
        per = self.blocks // (self.pools + 1)
        return tuple(1 + per * (i + 1) for i in range(self.pools))

    def name(self, placement: tuple[int, ...]) -> str:
        return "pool@" + ",".join(map(str, placement))

    def build_supernet(self) -> "PlacementNet":
        return PlacementNet(self)

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        if d["widths_rule"] == "doubling":  # the rule before there was a choice: older checkpoints still match
            del d["widths_rule"]
        return {"kind": "resnet20-like", **d}

    def macs(self, placement: tuple[int, ...], size: int = 32) -> int:
        widths, h, total = self.widths(placement), size, size * size * 3 * self.base_width * 9
        cin = self.base_width
        for b, w in enumerate(widths, 1):
            if b in placement:
                h //= 2
            total += h * h * 9 * (cin * w + w * w) + (h * h * cin * w if cin != w else 0)
            cin = w
        return total + cin * self.num_classes

    def params(self, placement: tuple[int, ...]) -> int:
        """Convolution and classifier weights (norms left out). With ``doubling`` widths they depend on where the
        pools sit (every block after a pool is twice as wide) and MACs do not; with ``fixed`` widths it is
        the other way round."""
        cin, total = self.base_width, 3 * self.base_width * 9
        for w in self.widths(placement):
            total += 9 * (cin * w + w * w) + (cin * w if cin != w else 0)
            cin = w
        return total + cin * self.num_classes + self.num_classes


class StridePlacementSpace:
    """The stride placements of a :class:`~nas.space.SearchSpace` that searches them (``downsampling.total``),
    every other decision fixed to one reference architecture: the same mixture training ranks where a
    MobileNetV3-like network should downsample, and ``nas search --placement-ranking`` uses the ranking.

    The supernet is the space's elastic stages at their widest (weights shared across placements; a
    placement only changes each stage's stride), the reference architecture's choices selected in each.
    """

    def __init__(self, space: SearchSpace, reference: Optional[Arch] = None):
        if not space.searches_strides:
            raise UserError(space.source, f"space {space.name} does not search stride placements",
                            "use a space with downsampling.total (e.g. mobilenetv3_cifar_placement)")
        self.space = space
        mid = (np.asarray(space.n_choices) - 1) // 2  # every decision at its middle choice by default
        self.reference = reference or space.decode(mid)
        self.num_classes = space.frame.num_classes
        self.input_size = space.frame.input_size

    @property
    def placements(self) -> list[tuple[int, ...]]:
        return list(self.space.placements)

    def default(self) -> tuple[int, ...]:
        return self.space.placements[0]

    def name(self, placement: tuple[int, ...]) -> str:
        return placement_name(placement)

    def arch(self, placement: tuple[int, ...]) -> Arch:
        vec = self.space.encode(self.reference)
        vec[-1] = self.space.placements.index(tuple(placement))
        return self.space.decode(vec)

    def macs(self, placement: tuple[int, ...]) -> int:
        from . import cost

        return int(cost.macs(self.space, self.space.encode(self.arch(placement))[None])[0])

    def build_supernet(self) -> "StrideSupernet":
        return StrideSupernet(self)

    def describe(self) -> dict[str, Any]:
        return {"kind": "stride placement", "space": self.space.name, "reference": self.reference.id}


class StrideSupernet(nn.Module):
    """Stem, the elastic stages (widest weights) and head of a space; ``forward(x, placement)``."""

    def __init__(self, ps: StridePlacementSpace):
        super().__init__()
        from .supernet import elastic_trunk, stage_choices

        f = ps.space.frame
        self.ps = ps
        self.stem, self.stages, self.head = elastic_trunk(ps.space)
        self.classifier = nn.Linear(f.head_features, f.num_classes)
        self.choices = [stage_choices(sc) for sc in ps.reference.stages]

    def forward(self, x: torch.Tensor, placement: tuple[int, ...]) -> torch.Tensor:
        h = self.stem(x)
        for stage, c, stride in zip(self.stages, self.choices, placement):
            h = stage(h, {**c, "stride": stride})
        return self.classifier(self.head(h))


AnyPlacementSpace = Union[PlacementSpace, StridePlacementSpace]


def fit_to_data(space: AnyPlacementSpace, data, data_path: str | Path) -> AnyPlacementSpace:
    """The space for this data: the ResNet20-like space takes the data's class count; a search space's must
    match its classes (a clear error where it does not; ``load_data`` checks the input size)."""
    if isinstance(space, PlacementSpace):
        return replace(space, num_classes=data.num_classes)
    if data.num_classes != space.num_classes:
        raise UserError(data_path, f"{data.num_classes} classes, space {space.space.name} has {space.num_classes}",
                        "use a space whose num_classes matches the data")
    return space


class SlicedBasicBlock(nn.Module):
    """A ResNet basic block at its largest width; narrower uses slice the weights."""

    def __init__(self, cmax: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cmax, cmax, 3, padding=1, bias=False)
        self.bn1 = SlicedBN(cmax)
        self.conv2 = nn.Conv2d(cmax, cmax, 3, padding=1, bias=False)
        self.bn2 = SlicedBN(cmax)
        self.proj = nn.Conv2d(cmax, cmax, 1, bias=False)
        self.bnp = SlicedBN(cmax)

    def forward(self, x: torch.Tensor, cout: int) -> torch.Tensor:
        cin = x.shape[1]
        h = F.relu(self.bn1.sliced(F.conv2d(x, self.conv1.weight[:cout, :cin], padding=1)))
        h = self.bn2.sliced(F.conv2d(h, self.conv2.weight[:cout, :cout], padding=1))
        skip = x if cin == cout else self.bnp.sliced(F.conv2d(x, self.proj.weight[:cout, :cin]))
        return F.relu(h + skip)


class PlacementNet(nn.Module):
    """A supernet over all placements (or, trained on one placement only, a standalone network)."""

    def __init__(self, space: PlacementSpace):
        super().__init__()
        self.space = space
        widths = space.block_widths()
        self.stem = nn.Sequential(nn.Conv2d(3, space.base_width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(space.base_width), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(SlicedBasicBlock(w) for w in widths)
        self.fc = nn.Linear(max(widths), space.num_classes)

    def forward(self, x: torch.Tensor, placement: tuple[int, ...]) -> torch.Tensor:
        h = self.stem(x)
        for b, (blk, w) in enumerate(zip(self.blocks, self.space.widths(placement)), 1):
            if b in placement:
                h = F.max_pool2d(h, 2)
            h = blk(h, w)
        h = h.mean((2, 3))
        return F.linear(h, self.fc.weight[:, : h.shape[1]], self.fc.bias)


# ---------------------------------------------------------------------- balanced assignment
def sinkhorn(logits: np.ndarray, iters: int = 50) -> np.ndarray:
    """Rows sum to 1 and columns to ``rows / cols``: every model takes an equal share of placements."""
    P = np.exp(logits - logits.max())
    n, m = P.shape
    for _ in range(iters):
        P /= P.sum(axis=0, keepdims=True) / (n / m)
        P /= P.sum(axis=1, keepdims=True)
    return P


def assignment(W: np.ndarray, tau: float) -> np.ndarray:
    """``P = balanced softmax over models of tau * W``."""
    return sinkhorn(tau * W)


@dataclass
class MixtureConfig:
    models: int = 4
    epochs: float = 20.0
    batch_size: int = 128
    lr: float = 0.05
    tau_start: float = 1.0
    tau_end: float = 50.0
    w_decay: float = 0.9
    warmup_epochs: float = 0.0  # train one supernet this long, then clone it into the M models
    seed: int = 0


def train_mixture(space: AnyPlacementSpace, data, cfg: MixtureConfig, device: str = "cpu",
                  quiet: bool = True, checkpoint: Optional[str | Path] = None,
                  checkpoint_every: int = 200, data_id: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Train M supernets with the balanced mixture; return W, the final assignment and the models.

    With ``checkpoint`` the state (models, optimizers, W, assignment, RNG, data position) is saved there
    every ``checkpoint_every`` steps and at the end; a later call with the same file continues from it and
    ends exactly as an uninterrupted run. It continues only with the same configuration, space, number of
    steps and ``data_id`` (which data, e.g. ``{"data": file name, "subset": N}``); otherwise a UserError names
    what differs."""
    from .progress import progress_bar

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    placements = space.placements
    n, M = len(placements), cfg.models
    models = [space.build_supernet().to(device) for _ in range(M)]
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
            for m in models]
    W = np.full((n, M), 0.1)
    steps_per_epoch = len(data.train)
    total = int(cfg.epochs * steps_per_epoch)
    # warm-up (as few-shot NAS splits a trained one-shot supernet): model 0 learns every placement for the
    # first steps, then every model starts from its weights, so each of the M does not start from scratch
    # with a 1/M share of the steps
    split_at = min(int(cfg.warmup_epochs * steps_per_epoch), total) if M > 1 else 0
    P = assignment(W, cfg.tau_start)
    start, seconds = 0, 0.0
    settings = mixture_settings(space, cfg, total, data_id)
    if checkpoint is not None and Path(checkpoint).exists():
        start, seconds, W, P = _load_mixture_checkpoint(checkpoint, settings, models, opts, rng, data)
    train = _cycle(data.train)
    t0 = time.time()
    with progress_bar(quiet) as bar:
        task = bar.add_task(f"mixture M={M}", total=total, completed=start)
        for step in range(start, total):
            if step and step == split_at:
                _clone_first(models, opts, W)
            if step % steps_per_epoch == 0 or step == split_at:  # a new, sharper balanced assignment
                frac = step / max(1, total - 1)
                tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac
                P = assignment(W, tau)
            i = int(rng.integers(n))
            k = int(rng.choice(M, p=P[i] / P[i].sum())) if M > 1 and step >= split_at else 0
            model, opt = models[k], opts[k]
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            x, y = next(train)
            model.train()
            loss = F.cross_entropy(model(x, placements[i]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            xv, yv = data.val.batch(step % len(data.val))
            with torch.no_grad(), batch_statistics(model):
                acc = (model(xv, placements[i]).argmax(1) == yv).float().mean().item()
            W[i, k] = cfg.w_decay * W[i, k] + (1 - cfg.w_decay) * acc
            bar.advance(task)
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == total):
                _save_mixture_checkpoint(checkpoint, settings, step + 1, seconds + time.time() - t0, W, P,
                                         models, opts, rng, data)
                train = _cycle(data.train)  # continue from the saved position, as a resumed run does
    if split_at == total and M > 1:
        _clone_first(models, opts, W)
        P = assignment(W, cfg.tau_end)
    return {"W": W, "P": P, "models": models, "seconds": seconds + time.time() - t0, "steps": total,
            "split_at": split_at}


def mixture_settings(space: AnyPlacementSpace, cfg: MixtureConfig, steps: int,
                     data_id: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """What a mixture checkpoint must match to be continued, flat so that an error can name what differs."""
    return {**asdict(cfg), **{f"space.{k}": v for k, v in space.describe().items()}, "steps": steps,
            **(data_id or {})}


def _legacy_fingerprint(settings: dict[str, Any]) -> str:
    """How checkpoints written before ``settings`` identified their run (without the data)."""
    cfg = {k: v for k, v in settings.items() if k in MixtureConfig.__dataclass_fields__}
    space = {k[len("space."):]: v for k, v in settings.items() if k.startswith("space.")}
    return json.dumps({"config": cfg, "space": space, "steps": settings["steps"]}, sort_keys=True, default=str)


def _save_mixture_checkpoint(path, settings: dict[str, Any], step: int, seconds: float, W: np.ndarray,
                             P: np.ndarray, models: list[nn.Module], opts: list[torch.optim.Optimizer],
                             rng: np.random.Generator, data) -> None:
    extra = {"settings": settings, "step": step, "seconds": seconds, "W": W.tolist(), "P": P.tolist(),
             "rng": rng.bit_generator.state, "train": data.train.state_dict()}
    write_torch(path, {"models": [m.state_dict() for m in models], "opts": [o.state_dict() for o in opts],
                       "extra": json.dumps(extra)})


def _load_mixture_checkpoint(path, settings: dict[str, Any], models: list[nn.Module],
                             opts: list[torch.optim.Optimizer], rng: np.random.Generator,
                             data) -> tuple[int, float, np.ndarray, np.ndarray]:
    st = read_torch(path, "mixture checkpoint")
    extra = json.loads(st["extra"])
    if "settings" in extra:
        refuse_changed_settings(path, "this mixture was trained with", extra["settings"], settings,
                                "give the same settings to continue it, or use another --out")
    elif extra["fingerprint"] != _legacy_fingerprint(settings):
        raise UserError(path, "checkpoint was written by another mixture configuration, space or dataset size",
                        "delete it, or use another output folder")
    for m, o, ms, os_ in zip(models, opts, st["models"], st["opts"]):
        m.load_state_dict(ms)
        o.load_state_dict(os_)
    rng.bit_generator.state = extra["rng"]
    data.train.load_state_dict(extra["train"])
    return extra["step"], extra["seconds"], np.array(extra["W"]), np.array(extra["P"])


def _clone_first(models: list[nn.Module], opts: list[torch.optim.Optimizer], W: np.ndarray) -> None:
    """Every model (and its optimizer state) becomes a copy of model 0; so do their columns of W."""
    for m, o in zip(models[1:], opts[1:]):
        m.load_state_dict(models[0].state_dict())
        o.load_state_dict(copy.deepcopy(opts[0].state_dict()))
    W[:, 1:] = W[:, :1]


SCORING_RULES = ("best", "assigned")


@torch.no_grad()
def score_placements(space: AnyPlacementSpace, result: dict[str, Any], data, max_batches: Optional[int] = None,
                     recal_batches: int = 20, extra: Optional[Iterable] = None, rule: str = "best") -> pd.DataFrame:
    """Every placement's supernet accuracy (full validation split), each model's BN statistics re-estimated for
    the placement first. ``rule="best"``: the placement is evaluated on every model and scored by its best one
    (the issue's rule; M evaluations each); ``"assigned"``: only on the model its final assignment favours.
    ``extra``: more held-out batches (never trained on), scored on the chosen model too: ``extra_accuracy``,
    and ``pooled_accuracy`` over validation + extra."""
    from .train import count_correct

    _check_rule(rule)
    recal = [x for _, (x, _) in zip(range(recal_batches), data.train)]
    n_models = len(result["models"])
    rows = []
    for i, p in enumerate(space.placements):
        candidates = range(n_models) if rule == "best" else [int(np.argmax(result["P"][i]))]
        per_model = {}
        for k in candidates:
            model = result["models"][k]
            recalibrate_bn(model, lambda x: model(x, p), recal)
            per_model[k] = count_correct(_Fixed(model, p), data.val, max_batches)
        k = max(per_model, key=lambda m: per_model[m][0])  # ties: the lower model index
        correct, total = per_model[k]
        row = {"placement": space.name(p), "model": k, "supernet_accuracy": correct / max(1, total),
               "w_estimate": float(result["W"][i, k]), "macs": space.macs(p)}
        if rule == "best" and n_models > 1:
            row.update({f"accuracy_model{m}": c / max(1, t) for m, (c, t) in per_model.items()})
        if extra is not None:  # model k still holds the statistics just re-estimated for this placement
            c, n = count_correct(_Fixed(result["models"][k], p), extra)
            row.update(extra_accuracy=c / max(1, n), pooled_accuracy=(correct + c) / max(1, total + n))
        rows.append(row)
    return pd.DataFrame(rows).sort_values("supernet_accuracy", ascending=False).reset_index(drop=True)


def train_standalone(space: AnyPlacementSpace, placement: tuple[int, ...], data, epochs: float, lr: float = 0.05,
                     seed: int = 0, device: str = "cpu") -> nn.Module:
    """One placement trained on its own (the same short recipe for all); the trained network."""
    from .train import TrainConfig, train_model

    torch.manual_seed(seed)
    model = _Fixed(space.build_supernet(), placement)
    data.train.reseed(seed)
    train_model(model, data.train, TrainConfig(epochs=epochs, lr=lr, warmup_epochs=0.2, label_smoothing=0.0,
                                               seed=seed), device=device)
    return model


class _Fixed(nn.Module):
    def __init__(self, net: nn.Module, placement: tuple[int, ...]):
        super().__init__()
        self.net, self.placement = net, placement

    def forward(self, x):
        return self.net(x, self.placement)


def standalone_recipe(space_kw: dict, data_path: str, epochs: float, subset: Optional[int]) -> dict[str, Any]:
    """What a standalone result depends on besides placement and seed (the data by file name, so that results
    trained elsewhere, e.g. on a lent GPU, still count); stored in every record, so that a ground truth never
    mixes recipes."""
    return {"space": dict(space_kw), "data": Path(data_path).name, "epochs": float(epochs), "subset": subset}


def standalone_task(space_kw: dict, placement: tuple[int, ...], data_path: str, epochs: float, seed: int,
                    subset: Optional[int], threads: Optional[int] = None, device: str = "cpu",
                    extra_path: Optional[str] = None) -> dict[str, Any]:
    """Train one placement standalone; its top-1 on the test split and, with ``extra_path`` (an archive of
    images used nowhere else), on those too. Hit counts are kept so that splits and seeds can be pooled."""
    from .data import archive_loader, load_data
    from .train import count_correct

    if threads:
        torch.set_num_threads(threads)
    space = PlacementSpace(**space_kw)
    data = load_data(data_path, seed=0, subset=subset, device=device, input_size=space.input_size)
    space = fit_to_data(space, data, data_path)
    t0 = time.time()
    model = train_standalone(space, tuple(placement), data, epochs, seed=seed, device=device).eval()
    correct, n = count_correct(model, data.test)
    row = {"placement": space.name(tuple(placement)), "seed": seed, "standalone_accuracy": correct / n,
           "test_correct": correct, "test_images": n, "recipe": standalone_recipe(space_kw, data_path, epochs, subset)}
    if extra_path:
        c, m = count_correct(model, archive_loader(extra_path, device=device))
        row.update(extra_accuracy=c / m, extra_correct=c, extra_images=m)
    return {**row, "seconds": time.time() - t0}


def _cycle(loader):
    while True:
        yield from loader


def _check_rule(rule: str) -> None:
    if rule not in SCORING_RULES:
        raise UserError("--scoring", f"unknown rule {rule!r}", f"use one of {', '.join(SCORING_RULES)}")


def run_mixture(space: AnyPlacementSpace, data_path: str | Path, out_dir: str | Path, cfg: MixtureConfig,
                subset: Optional[int] = None, quiet: bool = False, device: str = "cpu",
                rule: str = "best", val_size: Optional[int] = None) -> pd.DataFrame:
    """Train the mixture on ``device``, write the placement ranking (CSV; ``rule``: see
    :func:`score_placements`) and a summary. ``val_size``: validation images taken out of the training set
    (default: :func:`nas.data.load_data`'s); every placement is scored on all of them, so more images give a
    steadier ranking."""
    from .data import load_data

    _check_rule(rule)  # before the training, not after it
    out = Path(out_dir)
    data = load_data(data_path, seed=cfg.seed, batch_size=cfg.batch_size, subset=subset, device=device,
                     input_size=space.input_size, val_size=val_size)
    space = fit_to_data(space, data, data_path)
    res = train_mixture(space, data, cfg, device=device, quiet=quiet, checkpoint=out / f"mixture_M{cfg.models}.ckpt",
                        data_id={"data": Path(data_path).name, "subset": subset,
                                 **({"val_size": val_size} if val_size is not None else {})})
    ranking = score_placements(space, res, data, rule=rule)
    write_csv(out / f"placement_ranking_M{cfg.models}.csv", ranking)
    write_json(out / f"mixture_M{cfg.models}.json", {"config": asdict(cfg), "space": space.describe(),
                                                      "seconds": res["seconds"], "device": device,
                                                      "scoring": rule, "val_images": len(data.val.y),
                                                      "W": res["W"].tolist(),
                                                      "assignment": res["P"].tolist(),
                                                      "best": ranking.iloc[0].to_dict()})
    return ranking
