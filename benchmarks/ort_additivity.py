"""Are a network's stage timings additive on this CPU? Whole networks against the sum of their stages timed
one by one (as a latency table's entries are), with ONNX Runtime's full graph optimisation (what the tables
and deployments use) and without its layout transformations (``ORT_ENABLE_EXTENDED``); and, with full
optimisation, the stages timed in context instead: each behind a 1x1 convolution and followed by a global
average pool, less the time of that convolution and pool alone (so a stage's input arrives in the layout the
previous stage leaves it in, and no large output is converted back).

    python benchmarks/ort_additivity.py --networks 20

Writes benchmarks/results/ort_additivity_<cpu>.json: per level, the whole networks' mean time, the mean and
spread of sum/whole, and the Kendall tau between sums and whole networks. Plain back-to-back timing (no
drift compensation): run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import re
import time

import numpy as np
from _common import write_result

from nas.latency.engine import cpu_model
from nas.latency.profile import validation_sample

LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED")


def session(model: bytes, level: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def time_ms(sess, shape: tuple[int, ...], repeats: int = 5, runs: int = 200) -> float:
    """Median over ``repeats`` of the mean time of ``runs`` back-to-back runs, after a warm-up."""
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(20):
        sess.run(None, feed)
    means = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(runs):
            sess.run(None, feed)
        means.append((time.perf_counter() - t0) / runs)
    return float(np.median(means)) * 1e3


def stages_of(model, input_size: int) -> list[tuple[object, tuple[int, ...]]]:
    """The network's stem (conv + norm), stages and head as separate modules, each with its input shape."""
    import torch
    from torch import nn

    x = torch.zeros(1, 3, input_size, input_size)
    stem = nn.Sequential(model.conv_stem, model.bn1)
    parts = [(stem, tuple(x.shape))]
    with torch.no_grad():
        h = stem(x)
        for block in model.blocks:
            parts.append((block, tuple(h.shape)))
            h = block(h)
    head = nn.Sequential(model.global_pool, model.conv_head, model.norm_head, model.act2, model.flatten,
                         model.classifier)
    parts.append((head, tuple(h.shape)))
    return parts


def _in_context(part, channels: int):
    from torch import nn

    class Carried(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Conv2d(channels, channels, 1, bias=False)
            self.part = part if part is not None else nn.Identity()

        def forward(self, x):
            h = self.part(self.pre(x))
            return h.mean((2, 3), keepdim=True) if h.dim() == 4 else h

    return Carried().eval()


def agreement(summed: np.ndarray, whole: np.ndarray) -> dict:
    """sum/whole, and how well ``a * sum + c`` (fitted on these networks: a correction's best case) fits."""
    from scipy.stats import kendalltau

    ratio = summed / whole
    X = np.stack([summed, np.ones_like(summed)], axis=1)
    coef, *_ = np.linalg.lstsq(X, whole, rcond=None)
    rel = X @ coef / whole - 1
    return {"sum_over_whole_mean": float(ratio.mean()), "sum_over_whole_sd": float(ratio.std(ddof=1)),
            "share_within_10pct": float(np.mean(np.abs(ratio - 1) <= 0.10)),
            "kendall_tau": float(kendalltau(summed, whole).statistic),
            "linear_fit": {"share_within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
                           "mape": float(np.mean(np.abs(rel))), "coef": [float(c) for c in coef]}}


def main() -> None:
    import torch

    from nas.blocks import build_model
    from nas.export import onnx_bytes
    from nas.space import SearchSpace

    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="mobilenetv3_cifar")
    ap.add_argument("--networks", type=int, default=20)
    ap.add_argument("--seed", type=int, default=12345, help="the validation sample's seed (as nas profile's)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    space = SearchSpace.load(a.space)
    size = space.frame.input_size
    archs = space.decode_many(validation_sample(space, a.networks, a.seed))
    figures = {"space": a.space, "networks": len(archs), "threads": 1}
    carriers: dict[tuple[int, ...], float] = {}

    def carrier_ms(shape: tuple[int, ...]) -> float:
        if shape not in carriers:
            carriers[shape] = time_ms(session(onnx_bytes(_in_context(None, shape[1]), shape), LEVELS[0]), shape)
        return carriers[shape]

    for level in LEVELS:
        whole, summed, in_context = [], [], []
        for arch in archs:
            model = build_model(arch).eval()
            parts = stages_of(model, size)
            timed = [time_ms(session(onnx_bytes(m.eval(), shape), level), shape) for m, shape in parts]
            whole.append(time_ms(session(onnx_bytes(model, (1, 3, size, size)), level), (1, 3, size, size)))
            summed.append(sum(timed))
            if level == LEVELS[0]:  # the stem comes first in the network too: timed as it is
                in_context.append(timed[0] + sum(
                    time_ms(session(onnx_bytes(_in_context(m, shape[1]), shape), level), shape) - carrier_ms(shape)
                    for m, shape in parts[1:]))
        whole, summed = np.array(whole), np.array(summed)
        figures[level] = {"whole_mean_ms": float(whole.mean()), **agreement(summed, whole)}
        print(level, figures[level])
        if in_context:
            figures[f"{level}_in_context"] = agreement(np.array(in_context), whole)
            print(level, "in context", figures[f"{level}_in_context"])
    figures["speedup_of_full_optimisation"] = (figures["ORT_ENABLE_EXTENDED"]["whole_mean_ms"]
                                               / figures["ORT_ENABLE_ALL"]["whole_mean_ms"])
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    write_result(f"ort_additivity_{cpu}", figures)


if __name__ == "__main__":
    main()
