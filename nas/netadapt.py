"""``nas adapt``: NetAdapt (Yang et al., ECCV 2018) on the search space's stages, guided by a latency table.

Each iteration lowers the latency target by a decaying step; for every stage and every shrinkable thing
(expansion, width, depth, kernel) it proposes the largest configuration that meets the target by shrinking
that one thing, reading latency from the table. A proposal keeps the strongest channels by L2 norm
(expanded channels per block; a stage's output channels together, because residual connections tie them),
copies the surviving weights, is fine-tuned briefly and scored on held-out data; proposals run in parallel
on Ray. The best proposal is kept and checkpointed; at the budget, a longer fine-tune finishes the network.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from timm.layers import make_divisible
from timm.models._efficientnet_builder import round_channels

from .blocks import build_model
from .data import dataset_name
from .errors import UserError, refuse_changed_settings
from .io import atomic_path, read_json, write_csv, write_json
from .latency import LatencyTable
from .space import STAGE_DECISIONS, Arch, SearchSpace, StageChoice
from .train import TrainConfig, evaluate, train_model

DIMENSIONS = ("expansion", "width", "depth", "kernel")


@dataclass
class AdaptConfig:
    budget_ms: Optional[float] = None
    budget_ratio: Optional[float] = None
    initial_step: float = 0.05  # first step: this share of the initial latency
    step_decay: float = 0.96
    short_steps: int = 100
    short_lr: float = 0.01
    long_epochs: float = 3.0
    long_lr: float = 0.02
    select: str = "accuracy"  # or "ratio": best d(accuracy)/d(latency)
    max_iterations: int = 50
    seed: int = 0


# ---------------------------------------------------------------------- proposals
def _position(stage: int, dim: str) -> int:
    """Where stage ``stage``'s decision ``dim`` sits in an integer-encoded architecture."""
    return len(STAGE_DECISIONS) * stage + STAGE_DECISIONS.index(dim)


def _smaller(values: tuple, current) -> list:
    """Choices below ``current``, largest first."""
    return sorted([v for v in values if v < current], reverse=True)


def propose(space: SearchSpace, arch: Arch, table: LatencyTable, target: float) -> list[dict[str, Any]]:
    """Per stage and dimension: the largest one-thing shrink meeting ``target`` (else the biggest shrink)."""
    proposals = []
    vec = space.encode(arch)
    for s, st in enumerate(space.stages):
        sc = arch.stages[s]
        for dim in DIMENSIONS:
            cur = sc.width if dim == "width" else getattr(sc, dim)
            options = _smaller(st.choices(dim), cur)
            if not options:
                continue
            cands = []
            for v in options:
                w = vec.copy()
                w[_position(s, dim)] = st.choices(dim).index(v)
                cands.append((v, w, float(table.predict(w[None])[0])))
            meeting = [c for c in cands if c[2] <= target]
            v, w, lat = meeting[0] if meeting else cands[-1]
            proposals.append({"stage": s, "dimension": dim, "value": v, "vec": w.tolist(), "table_ms": lat,
                              "meets_target": bool(meeting)})
    full = [p for p in proposals if p["meets_target"]]
    return full or proposals


# ---------------------------------------------------------------------- weight surgery
def _l2_top(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of the ``k`` output filters with the largest L2 norm."""
    norms = weight.flatten(1).norm(dim=1)
    return torch.sort(torch.topk(norms, k).indices).values


def shrink_weights(src: torch.nn.Module, a: Arch, b: Arch) -> torch.nn.Module:
    """A network of ``b`` (a one-thing shrink of ``a``) holding ``src``'s surviving weights, copied exactly."""
    dst = build_model(b)
    ssd, dsd = src.state_dict(), dst.state_dict()
    for k in dsd:  # stem, first block, head top: unchanged shapes
        if not k.startswith("blocks.") or k.split(".")[1] in ("0",):
            dsd[k] = ssd[k].clone()
    prev_keep = torch.arange(a.frame.first_channels)
    for s, (sa, sb) in enumerate(zip(a.stages, b.stages)):
        blk = f"blocks.{s + 1}"
        # a stage's output channels are tied through its residuals: choose them once for all its blocks
        if sb.channels == sa.channels:
            out_keep = torch.arange(sa.channels)
        else:
            score = sum(ssd[f"{blk}.{j}.conv_pwl.weight"].flatten(1).norm(dim=1) for j in range(sa.depth))
            out_keep = torch.sort(torch.topk(score, sb.channels).indices).values
        for j in range(sb.depth):
            in_keep = prev_keep if j == 0 else out_keep
            _copy_block(ssd, dsd, f"{blk}.{j}", in_keep, out_keep, sb)
        prev_keep = out_keep
    head = f"blocks.{len(a.stages) + 1}.0"
    dsd[f"{head}.conv.weight"] = ssd[f"{head}.conv.weight"][:, prev_keep].clone()
    for k in dsd:
        if k.startswith(f"{head}.bn1."):
            dsd[k] = ssd[k].clone()
    dst.load_state_dict(dsd)
    return dst


def _copy_block(ssd, dsd, p: str, in_keep: torch.Tensor, out_keep: torch.Tensor, sc: StageChoice) -> None:
    pw = ssd[f"{p}.conv_pw.weight"][:, in_keep]
    mid = make_divisible(len(in_keep) * sc.expansion)
    mid_keep = _l2_top(pw, mid) if mid < pw.shape[0] else torch.arange(pw.shape[0])
    dsd[f"{p}.conv_pw.weight"] = pw[mid_keep].clone()
    for bn in ("bn1", "bn2"):
        for t in ("weight", "bias", "running_mean", "running_var"):
            dsd[f"{p}.{bn}.{t}"] = ssd[f"{p}.{bn}.{t}"][mid_keep].clone()
    dw = ssd[f"{p}.conv_dw.weight"][mid_keep]
    off = (dw.shape[-1] - sc.kernel) // 2
    dsd[f"{p}.conv_dw.weight"] = dw[:, :, off:off + sc.kernel, off:off + sc.kernel].clone()
    if sc.se:
        red = ssd[f"{p}.se.conv_reduce.weight"][:, mid_keep]
        rd = round_channels(mid * 0.25)
        rd_keep = _l2_top(red, rd) if rd < red.shape[0] else torch.arange(red.shape[0])
        dsd[f"{p}.se.conv_reduce.weight"] = red[rd_keep].clone()
        dsd[f"{p}.se.conv_reduce.bias"] = ssd[f"{p}.se.conv_reduce.bias"][rd_keep].clone()
        dsd[f"{p}.se.conv_expand.weight"] = ssd[f"{p}.se.conv_expand.weight"][mid_keep][:, rd_keep].clone()
        dsd[f"{p}.se.conv_expand.bias"] = ssd[f"{p}.se.conv_expand.bias"][mid_keep].clone()
    dsd[f"{p}.conv_pwl.weight"] = ssd[f"{p}.conv_pwl.weight"][out_keep][:, mid_keep].clone()
    for t in ("weight", "bias", "running_mean", "running_var"):
        dsd[f"{p}.bn3.{t}"] = ssd[f"{p}.bn3.{t}"][out_keep].clone()


# ---------------------------------------------------------------------- one proposal (a Ray task)
def evaluate_proposal(space_path: str, parent_dir: str, vec: list[int], data_path: str, steps: int, lr: float,
                      seed: int, subset: Optional[int], threads: Optional[int] = None,
                      device: str = "cpu") -> dict[str, Any]:
    from .data import load_data
    from .export import load_network

    if threads:
        torch.set_num_threads(threads)
    space = SearchSpace.load(space_path)
    a, model = load_network(parent_dir)
    b = space.decode(np.asarray(vec))
    net = shrink_weights(model, a, b)
    data = load_data(data_path, seed=0, subset=subset, device=device, input_size=space.frame.input_size)
    data.train.reseed(seed)
    t0 = time.time()
    train_model(net, data.train, TrainConfig(max_steps=steps, lr=lr, warmup_epochs=0.0, seed=seed), device=device)
    return {"arch_id": b.id, "val_top1": evaluate(net, data.val), "seconds": time.time() - t0}


# ---------------------------------------------------------------------- the loop
def budget_from(cfg: AdaptConfig, initial_ms: float) -> float:
    if cfg.budget_ms is not None:
        return cfg.budget_ms
    if cfg.budget_ratio is not None:
        return cfg.budget_ratio * initial_ms
    raise UserError("nas adapt", "no budget given", "pass --budget-ms or --budget-ratio")


def adapt(space: SearchSpace, model: torch.nn.Module, arch: Arch, table: LatencyTable, data_path: str | Path,
          out_dir: str | Path, cfg: AdaptConfig = AdaptConfig(), workers: int = 0, ray_address: Optional[str] = None,
          subset: Optional[int] = None, measure: bool = True, quiet: bool = False,
          device: str = "cpu") -> dict[str, Any]:
    """Shrink ``model`` (of ``arch``) until the table says it meets the budget; resumable from ``out_dir``.
    Fine-tunes run on ``device``; channels are selected and networks saved on the CPU."""
    from .export import load_network, save_network

    table.bind(space)
    if measure:
        from .latency.profile import check_measured_here

        check_measured_here(table, "--table", "pass --no-measure, or profile this machine (nas profile --device "
                                              "<name>) and adapt with that table")
    out = Path(out_dir)
    state_path = out / "state.json"
    lat0 = float(table.predict(space.encode(arch)[None])[0])
    budget = budget_from(cfg, lat0)
    smallest = float(table.predict(_smallest_reachable(space, arch)[None])[0])
    if budget < min(smallest, lat0):  # a budget the network already meets needs no shrink at all
        raise UserError("--budget-ms", f"{budget:.4f} ms is below the smallest shrink of this network "
                        f"({smallest:.4f} ms by the table)", "raise the budget")
    data_now = {"dataset": dataset_name(data_path), "subset": subset}
    if state_path.exists():
        state = read_json(state_path, "adapt state")
        # another budget, recipe, network, table or data would continue (or, finished, extend) this adaptation
        data_was = {k: state[k] for k in ("dataset", "subset") if k in state}  # states from before: not recorded
        refuse_changed_settings(state_path, "this adaptation was started with",
                                {**state["config"], "initial_ms": round(state["initial_ms"], 6), **data_was},
                                {**asdict(cfg), "initial_ms": round(lat0, 6),
                                 **{k: v for k, v in data_now.items() if k in data_was}},
                                "give the same --net, --table, --data and settings to continue it, "
                                "or use another --out")
        current = out / state.get("current", "current")  # states from before name no folder: "current"
        arch, model = load_network(current)
        for stale in (out / "networks").glob("iteration*"):  # written by a run killed before its state was
            if stale != current:
                shutil.rmtree(stale, ignore_errors=True)
    else:
        model = model.cpu()
        out.mkdir(parents=True, exist_ok=True)
        current = _network_dir(out, 0)
        save_network(arch, model, current, onnx=False)
        state = {"iteration": 0, "initial_ms": lat0, "budget_ms": budget, "config": asdict(cfg), **data_now,
                 "current": str(current.relative_to(out)), "trajectory": []}
        state["trajectory"].append(_trajectory_row(space, table, 0, arch, None, model, data_path, subset, measure,
                                                   device))
        write_json(state_path, state)
    current_ms = float(table.predict(space.encode(arch)[None])[0])
    if state["iteration"] == 0 and current_ms <= budget and not state.get("finished"):
        save_network(arch, model, out / "adapted")  # nothing to do: the network is returned unchanged
        state.update(finished=True, unchanged=True)
        write_json(state_path, state)
    while current_ms > budget and state["iteration"] < cfg.max_iterations:
        i = state["iteration"]
        step = lat0 * cfg.initial_step * cfg.step_decay ** i
        target = max(budget, current_ms - step)
        props = propose(space, arch, table, target)
        results = _run_proposals(space, current, props, data_path, cfg, workers, ray_address, subset, i, device)
        for p, r in zip(props, results):
            p.update(r)
        best = _choose(props, current_ms, state["trajectory"][-1]["accuracy"], cfg.select)
        new_arch = space.decode(np.asarray(best["vec"]))
        model = shrink_weights(model, arch, new_arch)
        data = _data(space, data_path, subset, device)
        data.train.reseed(cfg.seed * 1000 + i)
        train_model(model, data.train, TrainConfig(max_steps=cfg.short_steps, lr=cfg.short_lr, warmup_epochs=0.0,
                                                   seed=cfg.seed * 1000 + i), device=device)
        model = model.cpu()
        arch, previous = new_arch, current
        # the new network goes to a folder of its own; only the state file, written last, makes it current, so
        # a kill at any moment leaves the state and its network consistent
        current = _network_dir(out, i + 1)
        save_network(arch, model, current, onnx=False)
        current_ms = float(table.predict(space.encode(arch)[None])[0])
        row = _trajectory_row(space, table, i + 1, arch, best, model, data_path, subset, measure, device)
        row["proposals"] = len(props)
        state["trajectory"].append(row)
        state.update(iteration=i + 1, current=str(current.relative_to(out)))
        write_json(state_path, state)
        shutil.rmtree(previous, ignore_errors=True)
        if not quiet:
            print(f"iteration {i + 1}: {best['stage'] + 1}.{best['dimension']} -> {best['value']}, "
                  f"table {current_ms:.4f} ms (target {target:.4f}), val top-1 {row['accuracy']:.4f}")
    if not state.get("finished"):
        data = _data(space, data_path, subset, device)
        train_model(model, data.train, TrainConfig(epochs=cfg.long_epochs, lr=cfg.long_lr, seed=cfg.seed),
                    checkpoint=out / "long_finetune.ckpt", device=device)
        model = model.cpu()
        save_network(arch, model, out / "adapted")
        final = _trajectory_row(space, table, state["iteration"], arch, None, model, data_path, subset, measure,
                                device)
        final["phase"] = "after long fine-tune"
        state["trajectory"].append(final)
        state["finished"] = True
        write_json(state_path, state)
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "proposal"} for r in state["trajectory"]])
    write_csv(out / "trajectory.csv", frame)
    plot_trajectory(frame, out / "trajectory.png")
    return state


def _network_dir(out: Path, iteration: int) -> Path:
    """Where the network accepted at ``iteration`` (0: the one given) is kept while it is the current one."""
    return out / "networks" / f"iteration{iteration:03d}"


def _smallest_reachable(space: SearchSpace, arch: Arch) -> np.ndarray:
    vec = space.encode(arch)
    for s, st in enumerate(space.stages):
        sc = arch.stages[s]
        for dim in DIMENSIONS:
            cur = sc.width if dim == "width" else getattr(sc, dim)
            vals = [v for v in st.choices(dim) if v <= cur]
            vec[_position(s, dim)] = st.choices(dim).index(min(vals))
    return vec


def _data(space: SearchSpace, data_path, subset, device: str = "cpu"):
    from .data import load_data

    return load_data(data_path, seed=0, subset=subset, device=device, input_size=space.frame.input_size)


def _run_proposals(space, parent_dir, props, data_path, cfg, workers, ray_address, subset, iteration, device):
    args = [(str(space.source), str(parent_dir), p["vec"], str(data_path), cfg.short_steps, cfg.short_lr,
             cfg.seed * 1000 + iteration, subset) for p in props]
    if workers > 0 or ray_address:
        import ray

        from .parallel import device_in_task, ray_session, training_task_options

        with ray_session(workers, ray_address):
            task = ray.remote(max_retries=2, **training_task_options(device, workers))(evaluate_proposal)
            return ray.get([task.remote(*a, 1, device_in_task(device)) for a in args])
    return [evaluate_proposal(*a, device=device) for a in args]


def _choose(props, current_ms, current_acc, select: str) -> dict[str, Any]:
    if select == "ratio":
        def key(p):
            return (current_acc - p["val_top1"]) / max(current_ms - p["table_ms"], 1e-9)
        return min(props, key=key)
    return max(props, key=lambda p: (p["val_top1"], -p["table_ms"]))


def _trajectory_row(space, table, iteration, arch, proposal, model, data_path, subset, measure,
                    device: str = "cpu") -> dict[str, Any]:
    data = _data(space, data_path, subset, device)
    row = {"iteration": iteration, "arch_id": arch.id, "table_ms": float(table.predict(space.encode(arch)[None])[0]),
           "accuracy": evaluate(model.to(device), data.val)}
    model.cpu()
    if proposal is not None:
        row.update({"stage": proposal["stage"] + 1, "dimension": proposal["dimension"], "value": proposal["value"],
                    "proposal_short_finetune_top1": proposal["val_top1"]})
    if measure:
        from .latency.profile import measure_networks

        row["measured_ms"] = float(measure_networks(table, [arch])[0])
    return row


def plot_trajectory(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(frame["table_ms"], frame["accuracy"], "o-", label="table latency")
    if "measured_ms" in frame:
        ax.plot(frame["measured_ms"], frame["accuracy"], "s--", alpha=0.7, label="measured latency")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("val top-1")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("NetAdapt trajectory")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

