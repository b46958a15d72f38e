"""Multi-domain multi-path NAS on CIFAR-10 + Fashion-MNIST against one network per domain and one fully shared
network, plus the domain prioritisation rule against round-robin.

    python benchmarks/multipath.py --workers 2

``--init supernet`` (the default, as ``nas multipath`` itself works): the multi-path, round-robin and fully
shared joint models start from their search's supernet and are retrained for ``--retrain-epochs``; the
single-domain networks train alone from scratch for the same number of steps per domain as the multi-path
model had in all (its domain's search steps plus the retraining), so each method gets the same training budget
and the single-domain networks see no other domain. ``--init scratch``: every model trains from scratch with
the same retraining recipe (the same steps per domain), so the comparison is structural: what sharing nodes
costs or gains.

``single_domain`` is one network per domain on the multi-path model's own paths (chosen, so the latency is the
same). ``single_domain_searched`` is one network per domain found by multi-path's own recipe run on that domain
alone: a search of as many steps as the prioritiser gave the domain in the multi-path search, then the same
retraining from that search's supernet (from scratch under ``--init scratch``). ``single_domain_matched`` is
the same but searched at a similar latency: each domain's search adds TuNAS's absolute reward term,
``- w * |lat / target - 1|`` with the multi-path path's table latency as the target. Writes
benchmarks/results/multipath.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from _common import ROOT, data_sha256, write_result

from nas.blocks import build_model, count_params
from nas.io import read_torch
from nas.latency.engine import append_jsonl, load_jsonl
from nas.latency.table import LatencyTable
from nas.multipath import (MultipathConfig, build_joint, config_record, evaluate_joint, load_domains, parse_domains,
                           search_paths, select_sharing, train_joint, unique_costs)
from nas.space import SearchSpace
from nas.train import resolve_device


def paired_difference(a: list[float], b: list[float]) -> dict:
    """``a`` minus ``b`` over the same seeds: the mean and its standard error (None with one seed)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
    return {"mean": float(d.mean()), "standard_error": se, "seeds": len(d)}


def table_latency(space: SearchSpace, table: LatencyTable, paths: dict[str, str]) -> dict[str, float]:
    """Each domain path's latency by the table, in ms (its correction applied where validation kept it)."""
    pop = space.encode_many(space.parse_id(i) for i in paths.values())
    return dict(zip(paths, table.predict(pop).round(4).tolist()))


def search_alone(space: SearchSpace, specs, cfg: MultipathConfig, counts: dict[str, int], a, device: str,
                 name: str, table: LatencyTable | None = None, targets: dict[str, float] | None = None) -> dict:
    """Search each domain alone with multi-path's recipe for the steps the prioritiser gave it (warm-up scaled
    alike), into ``<out>/<name>_<domain>``. With ``targets``: TuNAS's absolute latency reward (weight
    ``--matched-weight``) aims each domain's search at its target, by ``table``."""
    found = {}
    for s in specs:
        n = max(1, counts.get(s.name, 0))
        c = replace(cfg, steps=n, warmup=round(cfg.warmup * n / cfg.steps))
        if targets:
            c = replace(c, latency_weight=a.matched_weight, latency_target=targets[s.name], latency_reward="absolute")
        one = load_domains([s], space, cfg.batch_size, cfg.seed, a.subset, device)
        r = search_paths(space, one, c, f"{a.out}/{name}_{s.name}", table.predict if targets else None,
                         device=device)
        found[s.name] = {"path": r["paths"][s.name].id, "steps": n, "seconds": r["seconds"],
                         **({"target_ms": targets[s.name]} if targets else {})}
        print(name, s.name, found[s.name])
    return found


def goals_against(mp: dict, base: dict, name: str) -> dict[str, bool]:
    """The issue's two goals against one single-domain baseline: mean accuracy within 1 point of it, and at
    least 40% fewer unique parameters."""
    return {f"within_1pt_of_{name}": mp["mean_accuracy"] >= base["mean_accuracy"] - 0.01,
            f"40pct_fewer_params_than_{name}": 1 - mp["unique_params"] / base["unique_params"] >= 0.4}


def beyond_seed_noise(diff: dict) -> bool:
    """Ahead by more than two standard errors of the paired difference (never with one seed)."""
    return diff["standard_error"] is not None and diff["mean"] > 2 * diff["standard_error"]


class RetrainLog:
    """Every finished retrain, one JSONL line each as it arrives, so that an interrupted benchmark resumes
    with the retrains it still lacks."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._done = {json.dumps(r["tag"], sort_keys=True): r["result"] for r in load_jsonl(str(path))}

    def get(self, tag: dict) -> dict | None:
        return self._done.get(json.dumps(tag, sort_keys=True))

    def add(self, tag: dict, result: dict) -> None:
        self._done[json.dumps(tag, sort_keys=True)] = result
        append_jsonl(str(self.path), [{"tag": tag, "result": result}])


def state_sha256(path: str) -> str:
    """sha256 of a saved state dict's tensors (not of the file, whose zip records the temporary name it was
    written under)."""
    h = hashlib.sha256()
    for k, v in sorted(read_torch(path, "search supernet").items()):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def retrain_tag(name: str, job: tuple, seed: int, task_args: tuple, start: str | dict[str, str] | None) -> dict:
    """What a retrain's result depends on; a rerun reuses a logged result only when all of it is the same,
    the starting supernet's weights (``start``, their :func:`state_sha256`) included."""
    kind, paths, _, epochs = job
    _, space_path, specs, _, cfg, subset = task_args
    return {"name": name, "kind": kind, "seed": seed, "paths": paths, "supernet_sha256": start, "epochs": epochs,
            "space": space_path, "domains": [asdict(s) for s in specs], "config": config_record(cfg), "subset": subset}


def train_variant(kind: str, space_path: str, specs, paths_ids: dict, cfg: MultipathConfig, subset, threads=None,
                  device: str = "cpu", supernet: str | dict[str, str] | None = None,
                  epochs: dict[str, float] | None = None):
    """Train one compared model and score it on the test splits. ``supernet``: the joint model starts from that
    search supernet's weights (as ``nas multipath`` does); for ``single``, a dict of one search supernet per
    domain, each network starting from its own domain's; ``epochs``: a single-domain network's own training
    length per domain (default ``cfg.retrain_epochs``)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    space = SearchSpace.load(space_path)
    data = load_domains(specs, space, cfg.batch_size, cfg.seed, subset, device)
    classes = {d: data[d].num_classes for d in data}
    paths = {d: space.parse_id(i) for d, i in paths_ids.items()}
    torch.manual_seed(cfg.seed)  # initial weights: a Ray worker's global RNG state depends on its earlier tasks
    t0 = time.time()
    if kind == "single":
        out = {}
        for d in data:
            init = supernet.get(d) if isinstance(supernet, dict) else None
            model = build_joint(space, {d: paths[d]}, {d: classes[d]}, init).to(device)
            train_joint(model, {d: data[d]}, (epochs or {}).get(d, cfg.retrain_epochs), cfg.retrain_lr, cfg.seed)
            out[d] = evaluate_joint(model, {d: data[d]})[d]
        costs = [unique_costs(space, {d: paths[d]}, {d: classes[d]}) for d in data]
        return {"accuracy": out, "unique_params": sum(c["unique_params"] for c in costs),
                "unique_macs": sum(c["unique_macs"] for c in costs), "seconds": time.time() - t0}
    # multipath; "shared" passes the same arch for every domain
    model = build_joint(space, paths, classes, supernet).to(device)
    train_joint(model, data, cfg.retrain_epochs, cfg.retrain_lr, cfg.seed)
    acc = evaluate_joint(model, data)
    c = unique_costs(space, paths, classes)
    assert c["unique_params"] == count_params(model)
    return {"accuracy": acc, "unique_params": c["unique_params"], "unique_macs": c["unique_macs"],
            "nodes": c["nodes"], "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", nargs="+", default=[f"cifar10={ROOT.parent / 'shared' / 'data' / 'cifar10.npz'}",
                                                     "fashion-mnist"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--retrain-epochs", type=float, default=3.0)
    ap.add_argument("--share-weight", type=float, default=MultipathConfig.share_weight)
    ap.add_argument("--select-epochs", type=float, default=0.0,
                    help="> 0: choose what to share by proxy retrains this long (multipath), and also retrain the "
                         "controllers' own paths (multipath_controllers)")
    ap.add_argument("--retrain-seeds", type=int, default=1,
                    help="train every compared model with this many seeds; accuracies are the mean over seeds")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--train-device", default="cpu", help="torch device of every training (cpu, cuda, ...)")
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--init", choices=("supernet", "scratch"), default="supernet",
                    help="joint models start from the search supernet (as nas multipath does) or from scratch")
    ap.add_argument("--out", default=str(ROOT / "runs" / "multipath_bench"))
    ap.add_argument("--result-name", default="multipath")
    ap.add_argument("--latency-device", default="cpu-ort-1t",
                    help="latency table whose sums are reported per domain path (table_latency_ms) and that the "
                         "latency-matched searches aim with")
    ap.add_argument("--matched-weight", type=float, default=0.5,
                    help="|w| of the absolute latency reward of the latency-matched single-domain searches")
    a = ap.parse_args()
    device = resolve_device(a.train_device)
    space = SearchSpace.load("mobilenetv3_cifar")
    table = LatencyTable.find(space, a.latency_device).bind(space)
    specs = parse_domains(a.domains)
    cfg = MultipathConfig(steps=a.steps, warmup=a.warmup, retrain_epochs=a.retrain_epochs, share_weight=a.share_weight,
                          select_epochs=a.select_epochs)
    found = {}
    for rule in ("lagging", "round_robin"):
        data = load_domains(specs, space, cfg.batch_size, cfg.seed, a.subset, device)  # fresh loader positions
        r = search_paths(space, data, replace(cfg, prioritise=rule), f"{a.out}/{rule}", device=device)
        found[rule] = {"paths": {d: p.id for d, p in r["paths"].items()}, "counts": r["counts"],
                       "seconds": r["seconds"]}
        print(rule, found[rule]["paths"], r["counts"])
    paths = found["lagging"]["paths"]
    # the searched single-domain baselines: each domain searched alone with multi-path's recipe and its step
    # share, then retrained from its own supernet; once on accuracy alone, once aimed at multi-path's latency
    counts = found["lagging"]["counts"]
    alone = search_alone(space, specs, cfg, counts, a, device, "single")
    mp_latency = table_latency(space, table, paths)
    matched = search_alone(space, specs, cfg, counts, a, device, "matched", table, mp_latency)
    biggest = max(paths.values(), key=lambda i: count_params(build_model(space.parse_id(i))))
    supernet = {rule: f"{a.out}/{rule}/supernet.pt" if a.init == "supernet" else None for rule in found}
    single_epochs = None
    retrain_steps = int(cfg.retrain_epochs * min(len(data[d].train) for d in data))
    if a.init == "supernet":  # the multi-path model's steps per domain: its search's and its retraining's
        single_epochs = {d: (retrain_steps + found["lagging"]["counts"].get(d, 0) + 0.5) / len(data[d].train)
                         for d in data}
    # the searched networks retrain as long as the multi-path model does, after searches as long as its domain's
    searched_epochs = {d: (retrain_steps + 0.5) / len(data[d].train) for d in data}
    def searched_job(name: str, searches: dict) -> tuple:  # retrained from its own search's supernet per domain
        starts = {d: f"{a.out}/{name}_{d}/supernet.pt" for d in searches} if a.init == "supernet" else None
        return "single", {d: v["path"] for d, v in searches.items()}, starts, searched_epochs

    # name -> (kind, paths, supernet file(s) the model starts from, single-domain epochs)
    jobs = {"multipath": ("joint", paths, supernet["lagging"], None),
            "round_robin": ("joint", found["round_robin"]["paths"], supernet["round_robin"], None),
            "single_domain": ("single", paths, None, single_epochs),
            "shared": ("joint", {d: biggest for d in paths}, supernet["lagging"], None),
            "single_domain_searched": searched_job("single", alone),
            "single_domain_matched": searched_job("matched", matched)}
    selection = None
    if a.select_epochs > 0:
        t0 = time.time()
        sel = select_sharing(space, specs, {d: space.parse_id(i) for d, i in paths.items()}, cfg,
                             f"{a.out}/lagging", a.subset, a.workers, init=a.init, device=device)
        selected = {d: p.id for d, p in sel["paths"].items()}
        selection = {"candidates": sel["candidates"], "chosen": selected, "seconds": time.time() - t0}
        print("selected", selected)
        jobs["multipath_controllers"] = jobs["multipath"]
        jobs["multipath"] = ("joint", selected, supernet["lagging"], None)
    seeds = list(range(a.retrain_seeds))

    def args(job: tuple, seed: int) -> tuple:
        kind, p, _, _ = job
        return kind, str(space.source), specs, p, replace(cfg, seed=seed), a.subset
    log = RetrainLog(Path(a.out) / "retrains.jsonl")
    files = {f for job in jobs.values() for f in (job[2].values() if isinstance(job[2], dict) else [job[2]]) if f}
    start = {f: state_sha256(f) for f in files}  # each supernet read once

    def start_of(job: tuple):
        return {d: start[f] for d, f in job[2].items()} if isinstance(job[2], dict) else start.get(job[2])
    tags = {(k, s): retrain_tag(k, job, s, args(job, s), start_of(job)) for s in seeds for k, job in jobs.items()}
    todo = [key for key, tag in tags.items() if log.get(tag) is None]
    print(f"{len(tags) - len(todo)} of {len(tags)} retrains already in {log.path}")
    if todo and a.workers > 0:
        import ray

        from nas.parallel import device_in_task, ray_session, training_task_options

        with ray_session(a.workers):
            task = ray.remote(max_retries=1, **training_task_options(device, a.workers))(train_variant)
            refs = {task.remote(*args(jobs[k], s), 1, device_in_task(device), jobs[k][2], jobs[k][3]): (k, s)
                    for k, s in todo}
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                log.add(tags[refs.pop(ready[0])], ray.get(ready[0]))
    else:
        for k, s in todo:
            job = jobs[k]
            log.add(tags[(k, s)], train_variant(*args(job, s), device=device, supernet=job[2], epochs=job[3]))
    runs = {key: log.get(tag) for key, tag in tags.items()}
    results = {}
    for k in jobs:
        per_seed = [runs[(k, s)] for s in seeds]
        r = dict(per_seed[0])
        r["accuracy"] = {d: float(np.mean([x["accuracy"][d] for x in per_seed])) for d in r["accuracy"]}
        r["mean_accuracy"] = float(np.mean(list(r["accuracy"].values())))
        r["per_seed_mean_accuracy"] = [float(np.mean(list(x["accuracy"].values()))) for x in per_seed]
        r["seconds"] = float(np.mean([x["seconds"] for x in per_seed]))
        r["table_latency_ms"] = table_latency(space, table, jobs[k][1])
        results[k] = r
    mp, single, shared = results["multipath"], results["single_domain"], results["shared"]
    searched, matched_r = results["single_domain_searched"], results["single_domain_matched"]
    baselines = {"single": single, "single_searched": searched, "single_matched": matched_r}
    vs_shared = paired_difference(mp["per_seed_mean_accuracy"], shared["per_seed_mean_accuracy"])
    figures = {
        "domains": [{**asdict(s), "data_sha256": data_sha256(s.data)} for s in specs],
        "paths": dict(jobs["multipath"][1]), "controller_paths": paths,
        "shared_network_arch": biggest,
        "multipath": mp, "single_domain": single, "shared": shared,
        "single_domain_searched": {**searched, "searches": alone},
        "single_domain_matched": {**matched_r, "searches": matched, "latency_weight": a.matched_weight,
                                  "latency_reward": "absolute"},
        "prioritisation": {"rule": "lagging (softmax of 1 - running val acc, temperature 0.05, floor 0.2)",
                           "mean_accuracy": mp["mean_accuracy"], "domain_steps": found["lagging"]["counts"]},
        "round_robin": {"mean_accuracy": results["round_robin"]["mean_accuracy"],
                        "accuracy": results["round_robin"]["accuracy"], "paths": found["round_robin"]["paths"],
                        "domain_steps": found["round_robin"]["counts"]},
        "param_reduction_vs_single": 1 - mp["unique_params"] / single["unique_params"],
        "mac_reduction_vs_single": 1 - mp["unique_macs"] / single["unique_macs"],
        "goals": {**goals_against(mp, single, "single"),
                  "more_accurate_than_shared": mp["mean_accuracy"] > shared["mean_accuracy"],
                  "more_accurate_than_shared_beyond_seed_noise": beyond_seed_noise(vs_shared),
                  **goals_against(mp, searched, "single_searched"), **goals_against(mp, matched_r, "single_matched")},
        "multipath_minus_shared": vs_shared,
        **{f"multipath_minus_{name}": paired_difference(mp["per_seed_mean_accuracy"], base["per_seed_mean_accuracy"])
           for name, base in baselines.items()},
        "retrain_seeds": seeds, "init": a.init,
        "single_domain_epochs": single_epochs or {d: cfg.retrain_epochs for d in paths},
        **({"selection": selection, "multipath_controllers": results["multipath_controllers"]} if selection else {}),
        "config": asdict(cfg), "train_device": device, "latency_table": table.device,
        "search_seconds": {**{k: v["seconds"] for k, v in found.items()},
                           **{f"single_{d}": v["seconds"] for d, v in alone.items()},
                           **{f"matched_{d}": v["seconds"] for d, v in matched.items()}}}
    print({k: (v["mean_accuracy"], v["unique_params"]) for k, v in results.items()})
    write_result(a.result_name, figures)


if __name__ == "__main__":
    main()
