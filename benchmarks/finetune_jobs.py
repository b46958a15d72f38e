"""The predictor benchmark's held-out fine-tunes as a job list, run side by side on one device without Ray.

``predictor_quality.py --workers N --train-device cuda`` does the same through Ray (each task 1/N of the GPU).
This script is for a GPU machine that has PyTorch but not Ray (a lent one, here): plan the jobs where the run
directory lives, run them there, and append the records to the run directory's JSONL files; the benchmark then
finds them and fine-tunes nothing again.

    python finetune_jobs.py plan --heldout-extra 100 --jobs jobs.json      # here
    python finetune_jobs.py run --jobs jobs.json --out RUN --data cifar10.npz --procs 14 --device cuda  # there

The plan: the second held-out draw with seeds 0 and 1 (-> heldout.jsonl), and every fifth pair followed by one
network of the first draw again with seed 0 (-> heldout_device_check.jsonl: does the device give the recipe's
results?). ``run`` starts no job after ``--deadline`` seconds (those running finish and are kept); a rerun
skips the jobs whose records exist.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
from predictor_quality import benchmark_sets

from nas.latency.engine import append_jsonl, load_jsonl
from nas.predictor.pipeline import training_recipe
from nas.predictor.sample import finetune_arch, recipe_id
from nas.space import SearchSpace
from nas.train import TrainConfig

SPACE = "mobilenetv3_cifar"


def plan(a: argparse.Namespace) -> None:
    space = SearchSpace.load(SPACE)
    if a.heldout_extra <= 0:
        raise SystemExit("plan: --heldout-extra must be positive (the jobs are the second held-out draw)")
    _, _, draws = benchmark_sets(space, a.samples, a.extra_samples, a.heldout, a.heldout_extra)
    first = [x.id for x in space.decode_many(draws[0])]
    jobs = []
    for k, arch in enumerate(x.id for x in space.decode_many(draws[1])):
        jobs += [{"file": "heldout.jsonl", "arch_id": arch, "seed": s} for s in (0, 1)]
        if k % 5 == 4 and k // 5 < len(first):
            jobs.append({"file": "heldout_device_check.jsonl", "arch_id": first[k // 5], "seed": 0})
    finetune = {k: v for k, v in asdict(training_recipe("finetune", a.finetune_epochs, a.finetune_lr)).items()
                if k != "seed"}
    Path(a.jobs).write_text(json.dumps({"finetune": finetune, "jobs": jobs}, indent=0))
    print(f"{len(jobs)} jobs -> {a.jobs}")


def _one(job: dict, finetune: dict, out: str, data: str, device: str) -> dict:
    cfg = TrainConfig(**finetune, seed=job["seed"])
    return finetune_arch(SPACE, job["arch_id"], f"{out}/teacher", f"{out}/blocks", data, cfg, threads=1,
                         score_test=True, device=device)


def run(a: argparse.Namespace) -> None:
    spec = json.loads(Path(a.jobs).read_text())
    recipe = recipe_id(TrainConfig(**spec["finetune"]))
    out = Path(a.out)
    done = {(j["file"], r["arch_id"], r["seed"]) for j in spec["jobs"]
            for r in load_jsonl(str(out / j["file"])) if r.get("recipe") == recipe}
    todo = [j for j in spec["jobs"] if (j["file"], j["arch_id"], j["seed"]) not in done]
    t0 = time.time()
    finished = 0
    queue, pending = iter(todo), {}
    with ProcessPoolExecutor(a.procs, mp_context=mp.get_context("spawn")) as ex:
        def fill() -> None:
            """Submit only as many jobs as there are processes (the pool would queue one more, which a
            deadline could no longer cancel), and none after the deadline."""
            while len(pending) < a.procs and time.time() - t0 < a.deadline:
                job = next(queue, None)
                if job is None:
                    return
                pending[ex.submit(_one, job, spec["finetune"], str(out), a.data, a.device)] = job

        fill()
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in ready:
                append_jsonl(str(out / pending.pop(f)["file"]), [f.result()])
                finished += 1
            fill()
    print(f"{finished} of {len(todo)} jobs in {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--extra-samples", type=int, default=40)
    p.add_argument("--heldout", type=int, default=20)
    p.add_argument("--heldout-extra", type=int, default=100)
    p.add_argument("--finetune-epochs", type=float, default=None, help="default: the pipeline's recipe")
    p.add_argument("--finetune-lr", type=float, default=None, help="default: the pipeline's recipe")
    p.add_argument("--jobs", required=True)
    r = sub.add_parser("run")
    r.add_argument("--jobs", required=True)
    r.add_argument("--out", required=True, help="the benchmark's run directory (teacher/, blocks/, *.jsonl)")
    r.add_argument("--data", required=True)
    r.add_argument("--procs", type=int, default=8)
    r.add_argument("--device", default="cuda")
    r.add_argument("--deadline", type=float, default=float("inf"), help="stop after this many seconds")
    a = ap.parse_args()
    {"plan": plan, "run": run}[a.cmd](a)


if __name__ == "__main__":
    main()
