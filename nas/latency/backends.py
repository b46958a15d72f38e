"""Inference backends a table can be measured on: ONNX Runtime (default) and PyTorch eager."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from . import engine


@dataclass(frozen=True)
class Backend:
    name: str
    short: str
    threads: int

    @property
    def version(self) -> str:
        if self.name == "onnxruntime":
            import onnxruntime

            return onnxruntime.__version__
        return torch.__version__

    @property
    def provider(self) -> str:
        return "CPUExecutionProvider" if self.name == "onnxruntime" else "torch-cpu-eager"

    def runner(self, module: nn.Module, input_shape: tuple[int, ...]) -> engine.Runner:
        if self.name == "onnxruntime":
            from ..export import onnx_bytes

            return engine.ort_runner(onnx_bytes(module, input_shape), input_shape, self.threads)
        return torch_runner(module, input_shape, self.threads)


def torch_runner(module: nn.Module, input_shape: tuple[int, ...], threads: int) -> engine.Runner:
    torch.set_num_threads(threads)
    module = module.eval()
    x = torch.randn(*input_shape)

    def runner(n: int) -> float:
        import time

        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(n):
                module(x)
            return (time.perf_counter() - t0) / n

    return runner


BACKENDS = {"onnxruntime": "ort", "torch": "torch"}


def make_backend(name: str, threads: int) -> Backend:
    aliases = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch", "pytorch": "torch"}
    if name not in aliases:
        raise UserError("--backend", f"unknown backend {name!r}", "use onnxruntime or torch")
    if threads < 1:
        raise UserError("--threads", f"must be at least 1, got {threads}", "give a positive thread count")
    full = aliases[name]
    return Backend(full, BACKENDS[full], threads)


def parse_device(device: str) -> tuple[str, str, int] | None:
    """``cpu-ort-1t`` -> ("cpu", "onnxruntime", 1); None if the name does not follow the convention."""
    parts = device.split("-")
    if len(parts) < 3 or not parts[-1].endswith("t") or not parts[-1][:-1].isdigit():
        return None
    backend = {"ort": "onnxruntime", "torch": "torch"}.get(parts[-2])
    if backend is None:
        return None
    return "-".join(parts[:-2]), backend, int(parts[-1][:-1])


def resolve_device(device: str, backend: str | None, threads: int | None) -> Backend:
    """Check ``--device`` against ``--backend``/``--threads``; fill what the name implies."""
    parsed = parse_device(device)
    if parsed is None:
        if backend is None or threads is None:
            raise UserError("--device", f"{device!r} does not follow <hardware>-<ort|torch>-<threads>t",
                            "name it like cpu-ort-1t, or pass --backend and --threads")
        return make_backend(backend, threads)
    _, dev_backend, dev_threads = parsed
    if backend is not None and make_backend(backend, 1).name != dev_backend:
        raise UserError("--backend", f"{backend!r} contradicts device name {device!r}", "drop --backend or rename")
    if threads is not None and threads != dev_threads:
        raise UserError("--threads", f"{threads} contradicts device name {device!r}", "drop --threads or rename")
    return make_backend(dev_backend, dev_threads)


ModuleFactory = Callable[[], nn.Module]
