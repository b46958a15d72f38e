"""PyTorch modules for architectures and their parts, built with timm's MobileNetV3 and block builder.

A whole network is ``timm.models.mobilenetv3.MobileNetV3`` applied to ``arch.to_arch_def()``; a stage,
a single layer, the stem and the head are built from the same timm pieces, so that the parts a latency
table times, or that distillation trains, are exactly the layers of the whole network.

MACs and parameter counts come in closed form in :mod:`nas.cost` (torch-free; checked against these
modules in the tests).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from timm.layers import SelectAdaptivePool2d, create_conv2d, get_act_layer, get_norm_act_layer
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import EfficientNetBuilder, decode_arch_def, round_channels
from timm.models.mobilenetv3 import MobileNetV3

from .space import ACTIVATIONS, Arch, Frame, StageChoice, StageOption

TIMM_ACT = {"relu": "relu", "hswish": "hard_swish", "swish": "swish", "relu6": "relu6"}


def se_layer() -> Any:
    """MobileNetV3's squeeze-excite: hard-sigmoid gate, ReLU inside, reduction from expanded channels."""
    return partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels)


def _keep_channels(c: float) -> int:
    return int(c)  # the space already rounded widths; timm must not round them again


def timm_kwargs(frame: Frame) -> dict[str, Any]:
    """Keyword arguments for timm's ``MobileNetV3`` besides ``block_args`` (see :func:`timm_recipe`)."""
    return dict(num_classes=frame.num_classes, in_chans=frame.in_chans, stem_size=frame.stem_channels,
                fix_stem=True, num_features=frame.head_features, act_layer=get_act_layer(TIMM_ACT[frame.stem_act]),
                se_layer=se_layer(), se_from_exp=True, round_chs_fn=_keep_channels)


def timm_recipe(arch: Arch) -> dict[str, Any]:
    """A JSON description from which timm alone rebuilds the network (see README, 'Using a found net')."""
    f = arch.frame
    return {"model": "timm.models.mobilenetv3.MobileNetV3", "arch_def": arch.to_arch_def(),
            "num_classes": f.num_classes, "in_chans": f.in_chans, "stem_size": f.stem_channels,
            "fix_stem": True, "num_features": f.head_features, "act_layer": TIMM_ACT[f.stem_act],
            "se_layer": "SqueezeExcite(gate_layer='hard_sigmoid', force_act_layer=nn.ReLU, rd_round_fn=round_channels)",
            "se_from_exp": True, "round_chs_fn": "int", "input_size": [f.in_chans, f.input_size, f.input_size]}


def build_model(arch: Arch, **overrides: Any) -> MobileNetV3:
    """The whole network of ``arch`` as a timm MobileNetV3."""
    kwargs = {**timm_kwargs(arch.frame), **overrides}
    return MobileNetV3(decode_arch_def(arch.to_arch_def()), **kwargs)


def _builder(act: str) -> EfficientNetBuilder:
    return EfficientNetBuilder(round_chs_fn=_keep_channels, se_from_exp=True,
                               act_layer=get_act_layer(TIMM_ACT[act]), norm_layer=nn.BatchNorm2d,
                               se_layer=se_layer())


def build_blocks(cin: int, block_string: str, model_act: str = "hswish") -> nn.Sequential:
    """The blocks of one arch_def string (e.g. a stage) on ``cin`` input channels, as timm builds them."""
    (stage,) = _builder(model_act)(cin, decode_arch_def([[block_string]]))
    return stage


def build_stage(option: StageOption, model_act: str = "hswish") -> nn.Sequential:
    """A standalone module for one stage option: input ``(B, cin, hin, hin)``."""
    return build_blocks(option.cin, option.block_string(), model_act)


def build_stem(frame: Frame) -> nn.Sequential:
    """Stem conv + norm/act and the fixed first block, as in ``MobileNetV3.forward_features``."""
    norm_act = get_norm_act_layer(nn.BatchNorm2d, get_act_layer(TIMM_ACT[frame.stem_act]))
    first = (f"ds_r1_k{frame.first_kernel}_s{frame.first_stride}_e1_c{frame.first_channels}"
             f"_n{ACTIVATIONS[frame.first_act]}")
    return nn.Sequential(
        create_conv2d(frame.in_chans, frame.stem_channels, 3, stride=frame.stem_stride, padding=""),
        norm_act(frame.stem_channels, inplace=True),
        build_blocks(frame.stem_channels, first, frame.stem_act))


def build_head(frame: Frame, cin: int) -> nn.Sequential:
    """Last 1x1 conv block, pooling, conv_head + act, classifier, as in ``MobileNetV3``."""
    act = get_act_layer(TIMM_ACT[frame.head_act])
    return nn.Sequential(
        build_blocks(cin, f"cn_r1_k1_s1_c{frame.head_channels}", frame.stem_act),
        SelectAdaptivePool2d(pool_type="avg"),
        create_conv2d(frame.head_channels, frame.head_features, 1, padding="", bias=True),
        act(inplace=True), nn.Flatten(1), nn.Linear(frame.head_features, frame.num_classes))


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of convolutions and linear layers, counted by running ``module`` once (a check, not the hot path)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return total


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


from .cost import head_cost, ir_layer_cost, stage_choice_option, stage_cost, stem_cost  # noqa: E402  (re-exported)

__all__ = ["build_model", "build_stage", "build_stem", "build_head", "build_blocks", "timm_recipe",
           "timm_kwargs", "stage_cost", "stem_cost", "head_cost", "ir_layer_cost", "count_macs",
           "count_params", "stage_choice_option", "StageChoice"]
