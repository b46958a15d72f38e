"""Ray's GPU sharing, end to end: `nas pipeline --train-device cuda --workers N` against `--workers 0`.

Runs the same small pipeline twice from the command line, once with N Ray tasks sharing the GPU (each asks
for 1/N of it) and once in-process, and reports: each phase's wall time, how many processes held the GPU at
once (nvidia-smi, polled), the device every fine-tune record names, and whether the two runs agree (the same
samples, fine-tuned with the same seeds, should reach the same accuracy up to GPU nondeterminism).
With ``--multipath`` it also runs `nas multipath --select-epochs 1 --workers N` (proxy retrains as Ray tasks).

    python benchmarks/ray_gpu_sharing.py --data cifar_small.npz --workers 4 --train-device cuda

Writes ``benchmarks/results/ray_gpu_sharing.json`` (``--result-name``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common
import numpy as np
from scipy.stats import kendalltau


def nas_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas.cli", *args]


class GpuProcessCounter:
    """Polls nvidia-smi for the processes holding the GPU; ``peak`` is the most seen at once."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout
            self.peak = max(self.peak, len([line for line in out.splitlines() if line.strip()]))
            self._stop.wait(self.every_s)

    def __enter__(self) -> "GpuProcessCounter":
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def timed(cmd: list[str], gpu: bool) -> dict:
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with GpuProcessCounter() as counter:
        subprocess.run(cmd, check=True)
    return {"wall_time_s": round(time.time() - t0, 1), "peak_gpu_processes": counter.peak if gpu else None}


def pipeline_run(a: argparse.Namespace, workers: int) -> dict:
    out = Path(a.out) / f"pipeline_w{workers}"
    if a.from_runs:
        return {"wall_time_s": None, "peak_gpu_processes": None, **pipeline_figures(out)}
    run = timed(nas_command("pipeline", "--data", a.data, "--out", str(out), "--workers", str(workers),
                            "--train-device", a.train_device, "--samples", str(a.samples),
                            "--steps", str(a.steps), "--teacher-epochs", str(a.teacher_epochs),
                            "--finetune-epochs", str(a.finetune_epochs), "--seed", str(a.seed), "--quiet"),
                a.train_device.startswith("cuda"))
    return {**run, **pipeline_figures(out)}


def pipeline_figures(out: Path) -> dict:
    """What a pipeline folder records: phase wall times (summed over resumed invocations) and every sample."""
    log = json.loads((out / "pipeline.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]
    return {"phases_wall_time_s": {k: v["wall_time_s"] for k, v in log["phases"].items()},
            "sample_seconds": [round(s["seconds"], 1) for s in samples],
            "sample_devices": sorted({s["device"] for s in samples}),
            "sample_compute_s": round(sum(s["seconds"] for s in samples), 1),
            "teacher_val_top1": log["teacher"]["val_top1"],
            "val_top1": {f'{s["arch_id"]}/{s["seed"]}': s["val_top1"] for s in samples}}


def agreement(x: dict, y: dict) -> dict:
    keys = sorted(set(x) & set(y))
    a, b = np.array([x[k] for k in keys]), np.array([y[k] for k in keys])
    return {"samples": len(keys), "mean_abs_diff_top1": float(np.abs(a - b).mean()),
            "max_abs_diff_top1": float(np.abs(a - b).max()), "kendall_tau": float(kendalltau(a, b).statistic)}


def multipath_run(a: argparse.Namespace) -> dict:
    out = Path(a.out) / "multipath"
    run = timed(nas_command("multipath", "--domains", f"a={a.data}", f"b={a.data}", "--steps", "60",
                            "--warmup", "20", "--retrain-epochs", "1", "--select-epochs", "1", "--workers",
                            str(a.workers), "--train-device", a.train_device, "--out", str(out),
                            "--seed", str(a.seed), "--quiet"), a.train_device.startswith("cuda"))
    return {**run, "files": sorted(p.name for p in out.iterdir())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/ray_gpu_sharing")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--train-device", default="cuda")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--teacher-epochs", type=float, default=3)
    p.add_argument("--finetune-epochs", type=float, default=1)
    p.add_argument("--multipath", action="store_true")
    p.add_argument("--from-runs", action="store_true",
                   help="run nothing: report the pipeline folders already in --out (e.g. after a resumed run)")
    p.add_argument("--note", default=None, help="recorded with the figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result-name", default="ray_gpu_sharing")
    a = p.parse_args()
    shared = pipeline_run(a, a.workers)
    alone = pipeline_run(a, 0)
    figures = {"train_device": a.train_device, "workers": a.workers, "data": a.data,
               "data_sha256": _common.data_sha256(a.data),
               "recipe": {"samples": a.samples, "distill_steps": a.steps, "teacher_epochs": a.teacher_epochs,
                          "finetune_epochs": a.finetune_epochs, "seed": a.seed},
               f"pipeline_workers_{a.workers}": shared, "pipeline_workers_0": alone,
               "agreement": agreement(shared["val_top1"], alone["val_top1"]),
               # in-process fine-tunes run one after another, so their summed seconds are that phase's time
               # (also when a resumed run split it over two invocations)
               "speedup": {"distill": round(alone["phases_wall_time_s"]["distill"]
                                            / shared["phases_wall_time_s"]["distill"], 2),
                           "samples": round(alone["sample_compute_s"] / shared["phases_wall_time_s"]["samples"], 2)}}
    if a.from_runs:
        figures["machine_note"] = "'machine' is where these figures were read from the run folders, not where they ran"
    else:
        figures["speedup_wall"] = round(alone["wall_time_s"] / shared["wall_time_s"], 2)
    if a.note:
        figures["note"] = a.note
    if a.multipath:
        figures["multipath"] = multipath_run(a)
    print(json.dumps({k: v for k, v in figures.items() if not k.startswith("pipeline")}, indent=1))
    _common.write_result(a.result_name, figures)


if __name__ == "__main__":
    main()
