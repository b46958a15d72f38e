"""Weight-sharing supernets of one stage (OFA-style elastic depth, kernel, expansion and width).

An :class:`ElasticStage` holds the largest version of every block of a stage; an option uses the first
``depth`` blocks, the centre ``k x k`` of each depthwise kernel, the first ``mid`` expanded channels and
the first ``cout`` output channels, switches SE and the activation. Parameter names match timm's
``InvertedResidual``, so :meth:`ElasticStage.export_option` yields exactly the state dict of the timm
stage that :func:`nas.blocks.build_stage` builds for that option.

For blockwise distillation the stage reads the teacher's stage input (the teacher's width) and ends in a
1x1 ``adapter`` to the teacher's output width, so every option is scored against the same target.
"""
from __future__ import annotations

import contextlib

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import make_divisible
from timm.models._efficientnet_builder import round_channels

from .space import SearchSpace, StageSpec


def _act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return F.relu(x)
    if act == "hswish":
        return F.hardswish(x)
    if act == "relu6":
        return F.relu6(x)
    return F.silu(x)


class SlicedBN(nn.BatchNorm2d):
    """A BatchNorm at the largest width; narrower uses take the first channels (``sliced``), with
    nn.BatchNorm2d's running-statistics rules (momentum None: cumulative average, as BN recalibration uses)."""

    def sliced(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mom = 0.0 if self.momentum is None else self.momentum
        if self.training and self.momentum is None:  # cumulative average (BN recalibration)
            self.num_batches_tracked += 1
            mom = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, mom, self.eps)


class _SE(nn.Module):
    def __init__(self, mid_max: int):
        super().__init__()
        rd = round_channels(mid_max * 0.25)
        self.conv_reduce = nn.Conv2d(mid_max, rd, 1, bias=True)
        self.conv_expand = nn.Conv2d(rd, mid_max, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = x.shape[1]
        rd = round_channels(mid * 0.25)
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(F.conv2d(s, self.conv_reduce.weight[:rd, :mid], self.conv_reduce.bias[:rd]))
        s = F.conv2d(s, self.conv_expand.weight[:mid, :rd], self.conv_expand.bias[:mid])
        return x * F.hardsigmoid(s)


class ElasticIR(nn.Module):
    """The largest inverted-residual block of a stage position; any smaller one is a slice of it."""

    def __init__(self, cin_max: int, cout_max: int, kmax: int, emax: float):
        super().__init__()
        mid_max = make_divisible(cin_max * emax)
        self.kmax = kmax
        self.conv_pw = nn.Conv2d(cin_max, mid_max, 1, bias=False)
        self.bn1 = SlicedBN(mid_max)
        self.conv_dw = nn.Conv2d(mid_max, mid_max, kmax, groups=mid_max, bias=False)
        self.bn2 = SlicedBN(mid_max)
        self.se = _SE(mid_max)
        self.conv_pwl = nn.Conv2d(mid_max, cout_max, 1, bias=False)
        self.bn3 = SlicedBN(cout_max)

    def forward(self, x: torch.Tensor, kernel: int, expansion: float, cout: int, se: bool, act: str,
                stride: int) -> torch.Tensor:
        cin = x.shape[1]
        mid = make_divisible(cin * expansion)
        h = _act(self.bn1.sliced(F.conv2d(x, self.conv_pw.weight[:mid, :cin])), act)
        h = F.conv2d(h, self._dw_weight(mid, kernel), stride=stride, padding=kernel // 2, groups=mid)
        h = _act(self.bn2.sliced(h), act)
        if se:
            h = self.se(h)
        h = self.bn3.sliced(F.conv2d(h, self.conv_pwl.weight[:cout, :mid]))
        return h + x if (stride == 1 and cin == cout) else h

    def _dw_weight(self, mid: int, kernel: int) -> torch.Tensor:
        off = (self.kmax - kernel) // 2
        return self.conv_dw.weight[:mid, :, off:off + kernel, off:off + kernel]

    def export(self, cin: int, kernel: int, expansion: float, cout: int, se: bool,
               cin_map: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The timm ``InvertedResidual`` state dict of this option.

        ``cin_map`` (``(trained_cin, cin)``) folds a linear map of the input into ``conv_pw``: used when
        the block was distilled on the teacher's width but sits behind a narrower stage in a network.
        """
        mid = make_divisible(cin * expansion)
        pw = self.conv_pw.weight[:mid]
        if cin_map is not None:
            pw = torch.einsum("oi,ic->oc", pw[:, : cin_map.shape[0], 0, 0], cin_map)[:, :, None, None]
        else:
            pw = pw[:, :cin]
        out = {"conv_pw.weight": pw, "conv_dw.weight": self._dw_weight(mid, kernel),
               "conv_pwl.weight": self.conv_pwl.weight[:cout, :mid]}
        for name, c in (("bn1", mid), ("bn2", mid), ("bn3", cout)):
            bn = getattr(self, name)
            for t in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.{t}"] = getattr(bn, t)[:c]
            out[f"{name}.num_batches_tracked"] = bn.num_batches_tracked.clone()
        if se:
            rd = round_channels(mid * 0.25)
            out.update({"se.conv_reduce.weight": self.se.conv_reduce.weight[:rd, :mid],
                        "se.conv_reduce.bias": self.se.conv_reduce.bias[:rd],
                        "se.conv_expand.weight": self.se.conv_expand.weight[:mid, :rd],
                        "se.conv_expand.bias": self.se.conv_expand.bias[:mid]})
        return {k: v.detach().clone().contiguous() for k, v in out.items()}


def stage_choices(sc) -> dict[str, Any]:
    """The choices of one :class:`~nas.space.StageChoice` as :meth:`ElasticStage.forward` takes them."""
    return {"depth": sc.depth, "kernel": sc.kernel, "expansion": sc.expansion, "cout": sc.channels, "se": sc.se,
            "act": sc.act, "width": sc.width}


class ElasticStage(nn.Module):
    """All options of one stage, sharing weights; ``forward(x, choices)`` runs one option."""

    def __init__(self, spec: StageSpec, cin: int, teacher_cout: int | None, stride: int):
        super().__init__()
        self.spec, self.cin, self.stride = spec, cin, stride
        cmax, kmax, emax = max(spec.channels), max(spec.kernel), max(spec.expansion)
        self.blocks = nn.ModuleList([ElasticIR(cin, cmax, kmax, emax)] +
                                    [ElasticIR(cmax, cmax, kmax, emax) for _ in range(max(spec.depth) - 1)])
        self.adapter = None
        if teacher_cout is not None:  # distillation: map every width to the teacher's
            self.adapter = nn.Conv2d(cmax, teacher_cout, 1, bias=False)
            with torch.no_grad():  # start as a copy of the first channels: exact when widths agree
                self.adapter.weight.zero_()
                n = min(cmax, teacher_cout)
                self.adapter.weight[:n, :n, 0, 0] = torch.eye(n)

    def forward(self, x: torch.Tensor, c: dict[str, Any]) -> torch.Tensor:
        for j in range(int(c["depth"])):
            x = self.blocks[j](x, int(c["kernel"]), float(c["expansion"]), int(c["cout"]), bool(c["se"]),
                               str(c["act"]), int(c.get("stride", self.stride)) if j == 0 else 1)
        return x if self.adapter is None else F.conv2d(x, self.adapter.weight[:, : int(c["cout"])])

    def adapter_matrix(self, cout: int) -> torch.Tensor:
        """``(teacher_cout, cout)``: how this option's output maps to the teacher's channels."""
        return self.adapter.weight[:, :cout, 0, 0].detach().clone()

    def export_option(self, c: dict[str, Any], cin: int, cin_map: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """State dict of the timm stage (``nn.Sequential`` of blocks) for option ``c`` on ``cin`` inputs."""
        out = {}
        for j in range(int(c["depth"])):
            sd = self.blocks[j].export(cin if j == 0 else int(c["cout"]), int(c["kernel"]), float(c["expansion"]),
                                       int(c["cout"]), bool(c["se"]), cin_map if j == 0 else None)
            out.update({f"{j}.{k}": v for k, v in sd.items()})
        return out


class ElasticHead(nn.Module):
    """MobileNetV3 head (up to the classifier) whose first 1x1 conv takes up to ``cin_max`` input channels."""

    def __init__(self, cin_max: int, head_channels: int, features: int, act: str):
        super().__init__()
        self.act = act
        self.conv = nn.Conv2d(cin_max, head_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(head_channels)
        self.conv_head = nn.Conv2d(head_channels, features, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (the classifier is separate: one per domain in multi-path NAS)."""
        x = _act(self.bn1(F.conv2d(x, self.conv.weight[:, : x.shape[1]])), self.act)
        return _act(self.conv_head(x.mean((2, 3), keepdim=True)), self.act).flatten(1)

    def export(self, cin: int) -> dict[str, torch.Tensor]:
        """State dict of :func:`nas.blocks.build_head` on ``cin`` inputs, without the classifier."""
        out = {"0.0.conv.weight": self.conv.weight[:, :cin]}
        for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"0.0.bn1.{t}"] = getattr(self.bn1, t)
        out.update({"2.weight": self.conv_head.weight, "2.bias": self.conv_head.bias})
        return {k: v.detach().clone().contiguous() for k, v in out.items()}


def elastic_trunk(space: SearchSpace) -> tuple[nn.Module, nn.ModuleList, "ElasticHead"]:
    """Stem, every stage as an :class:`ElasticStage` (widest input) and an :class:`ElasticHead`: the shared
    body of the multi-path and stride-placement supernets."""
    from .blocks import build_stem

    f = space.frame
    stages = nn.ModuleList([ElasticStage(st, max(space.stage_cins[s]), None, st.strides[0])
                            for s, st in enumerate(space.stages)])
    return build_stem(f), stages, ElasticHead(max(space.head_cins), f.head_channels, f.head_features, f.head_act)


def largest_choices(space: SearchSpace, stage: int) -> dict[str, Any]:
    st = space.stages[stage]
    return {"depth": max(st.depth), "kernel": max(st.kernel), "expansion": max(st.expansion),
            "width": max(st.width), "cout": max(st.channels), "se": True if True in st.se else st.se[0],
            "act": st.act[-1]}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, forward: Callable[[torch.Tensor], Any], batches: Sequence[torch.Tensor]) -> None:
    """Re-estimate every BN's running statistics as the cumulative average over ``batches`` run through
    ``forward`` (one path of a weight-sharing model: every other path has shifted the shared statistics).
    Momentum is restored afterwards and the model left in eval mode."""
    if not batches:  # before anything is reset: no batches would leave every BN at zero mean, unit variance
        raise ValueError("BN recalibration needs at least one batch")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        forward(x)
    for m, mom in zip(norms, saved):
        m.momentum = mom
    model.eval()


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """Evaluate with each batch's own BN statistics, leaving running statistics untouched.

    A weight-sharing supernet must not judge a path (or a placement, or a domain) with running statistics
    that every other path, resolution and domain has been writing into. Other layers run in eval mode;
    the training flag is restored on exit.
    """
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    model.eval()
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        yield model
    finally:
        for m, (mom, tracked) in zip(norms, saved):
            m.momentum = mom
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
