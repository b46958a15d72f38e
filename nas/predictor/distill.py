"""``nas distill``: blockwise knowledge distillation (DONNA) of every stage option, and its block-quality table.

For each stage, an :class:`~nas.supernet.ElasticStage` learns to map the teacher's stage input to the
teacher's stage output; each step trains the largest option and one random option (the sandwich rule)
on the noise-to-signal ratio ``||T - S||^2 / ||T||^2``. Stages are independent: with ``workers > 0`` they
run as Ray tasks in parallel. Each stage checkpoints while it trains and resumes after an interruption.
Afterwards every option is scored: NSR on held-out images, with batch statistics as in training.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from ..cost import stage_cost
from ..errors import UserError
from ..io import read_torch, write_csv, write_json, write_torch
from ..progress import progress_bar
from ..space import SearchSpace, StageChoice, StageOption
from ..supernet import ElasticStage, batch_statistics, largest_choices, recalibrate_bn


@dataclass
class DistillConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    sandwich: bool = True
    checkpoint_every: int = 100
    score_images: int = 1024
    seed: int = 0
    fixed_option: Optional[int] = None  # train only this option (no weight sharing), to compare with sharing


def nsr(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Noise-to-signal ratio per sample, averaged: ``||T - S||^2 / ||T||^2``."""
    err = (student - teacher).pow(2).flatten(1).sum(1)
    return (err / teacher.pow(2).flatten(1).sum(1).clamp_min(1e-12)).mean()


@torch.no_grad()
def teacher_features(teacher: torch.nn.Module, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's input to and output of searchable stage ``stage`` (timm ``blocks[stage + 1]``)."""
    h = teacher.blocks[0](teacher.bn1(teacher.conv_stem(x)))
    for i in range(stage):
        h = teacher.blocks[i + 1](h)
    return h, teacher.blocks[stage + 1](h)


def teacher_stage_shapes(teacher_arch, stage: int) -> tuple[int, int, int]:
    """(teacher's stage input channels, teacher's stage output channels, stride)."""
    cin = teacher_arch.frame.first_channels if stage == 0 else teacher_arch.stages[stage - 1].channels
    sc = teacher_arch.stages[stage]
    return cin, sc.channels, sc.stride


def make_stage_supernet(space: SearchSpace, teacher_arch, stage: int) -> ElasticStage:
    cin, cout, stride = teacher_stage_shapes(teacher_arch, stage)
    return ElasticStage(space.stages[stage], cin, cout, stride)


def distill_stage(space_path: str, teacher_dir: str, data_path: str, stage: int, cfg: DistillConfig,
                  out_dir: str, subset: Optional[int] = None, threads: Optional[int] = None,
                  quiet: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Train one stage's supernet (resumable) on ``device`` and score all its options; returns the stage's result."""
    from ..data import load_data
    from .teacher import load_teacher

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    result_path = out / f"stage{stage}_nsr.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    space = SearchSpace.load(space_path)
    t_arch, teacher = load_teacher(teacher_dir, device)
    data = load_data(data_path, batch_size=cfg.batch_size, seed=cfg.seed, subset=subset, device=device,
                     input_size=space.frame.input_size)
    torch.manual_seed(cfg.seed * 131 + stage)
    net = make_stage_supernet(space, t_arch, stage).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed * 131 + stage)
    step, t0, seconds = 0, time.time(), 0.0
    ckpt = out / f"stage{stage}.ckpt"
    if ckpt.exists():
        st = read_torch(ckpt, "distillation checkpoint", device)
        if "config" in st:  # an interrupted stage continues only under its own recipe
            from .teacher import refuse_other_recipe

            refuse_other_recipe(ckpt, "this interrupted distillation ran with", _recipe(json.loads(st["config"])),
                                _recipe(asdict(cfg)))
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        step, seconds = int(st["step"]), float(st["seconds"])
        rng.bit_generator.state = json.loads(st["rng"])
        data.train.load_state_dict(st["loader"])
    big = largest_choices(space, stage)
    n_opt = space.stages[stage].n_options
    cins = sorted(set(space.stage_cins[stage]))
    with progress_bar(quiet) as bar:
        task = bar.add_task(f"distill stage {stage + 1}", total=cfg.steps, completed=step)
        while step < cfg.steps:
            for x, _ in data.train:
                if step >= cfg.steps:
                    break
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
                x_in, x_out = teacher_features(teacher, x, stage)
                net.train()
                if cfg.fixed_option is not None:
                    picks = [(space.option_choices(stage, cfg.fixed_option), x_in.shape[1])]
                else:
                    # each option also learns every input width the previous stage can give it (the first
                    # channels of the teacher's input), so that assembled networks use trained slices only
                    picks = [(space.option_choices(stage, int(rng.integers(n_opt))), int(rng.choice(cins)))]
                    if cfg.sandwich:
                        picks.insert(0, (big, x_in.shape[1]))
                loss = sum(nsr(net(x_in[:, :cin], c), x_out) for c, cin in picks)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.advance(task)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    _save(ckpt, net, opt, step, seconds + time.time() - t0, rng, data.train, cfg)
    train_seconds = seconds + time.time() - t0
    t1 = time.time()
    options = None if cfg.fixed_option is None else [cfg.fixed_option]
    scores = score_options(space, net, teacher, data, stage, cfg, options)
    save_stage_weights(net, out / f"stage{stage}.safetensors")
    result = {"stage": stage, "nsr": scores, "train_seconds": train_seconds, "score_seconds": time.time() - t1,
              "steps": cfg.steps, "config": asdict(cfg)}
    write_json(result_path, result)
    ckpt.unlink(missing_ok=True)
    return result


def _save(path: Path, net, opt, step, seconds, rng, loader, cfg: DistillConfig) -> None:
    write_torch(path, {"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": seconds,
                       "rng": json.dumps(rng.bit_generator.state), "loader": loader.state_dict(),
                       "config": json.dumps(asdict(cfg))})


def save_stage_weights(net: ElasticStage, path: Path) -> None:
    from safetensors.torch import save_file

    from ..io import atomic_path

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))


def load_stage_weights(space: SearchSpace, teacher_arch, stage: int, path: Path) -> ElasticStage:
    from safetensors.torch import load_file

    net = make_stage_supernet(space, teacher_arch, stage)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def recalibrate(net: ElasticStage, choices: dict[str, Any], inputs: list[torch.Tensor]) -> None:
    """Re-estimate the BN statistics of one option on a few batches (weight sharing shifts them)."""
    recalibrate_bn(net, lambda x: net(x, choices), inputs)


@torch.no_grad()
def score_options(space: SearchSpace, net: ElasticStage, teacher, data, stage: int,
                  cfg: DistillConfig, options: Optional[list[int]] = None) -> list[float]:
    """Held-out NSR of every option of ``stage`` (index = option index of the space's encoding).

    Each option is judged as it was trained: BN with the statistics of each held-out batch (of the training
    batch size), not with running statistics re-estimated on a few training batches. Those were fragile: a
    few images in a thousand drive the teacher's deep activations to ~100x their usual size, and whether the
    two recalibration batches held one of them changed the last stage's NSR twofold (two draws ranked its
    options at r = 0.48); batch statistics give the same NSR on any two halves of the images (r > 0.999).
    """
    x_in, t_out = [], []
    for x, _ in data.val:
        a, b = teacher_features(teacher, x, stage)
        x_in.append(a)
        t_out.append(b)
        if sum(len(v) for v in x_in) >= cfg.score_images:
            break
    x_in, t_out = torch.cat(x_in)[: cfg.score_images], torch.cat(t_out)[: cfg.score_images]
    chunks = max(1, len(x_in) // cfg.batch_size)
    pairs = list(zip(x_in.tensor_split(chunks), t_out.tensor_split(chunks)))
    scores = []
    with batch_statistics(net):
        for opt in (range(space.stages[stage].n_options) if options is None else options):
            c = space.option_choices(stage, opt)
            scores.append(sum(float(nsr(net(a, c), b)) * len(a) for a, b in pairs) / len(x_in))
    return scores


# ---------------------------------------------------------------------- all stages
def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """A distillation config as compared between runs: the checkpoint interval may change."""
    return dict(config, checkpoint_every=None)


def check_distill_recipe(out: Path, n_stages: int, cfg: DistillConfig) -> None:
    """Stages already distilled in ``out`` with another recipe (the checkpoint interval aside) would be
    reused as they are: refuse instead."""
    from .teacher import refuse_other_recipe

    ours = _recipe(asdict(cfg))
    for stage in range(n_stages):
        path = out / f"stage{stage}_nsr.json"
        if not path.exists():
            continue
        made = json.loads(path.read_text())
        if "config" not in made:  # cannot tell
            continue
        refuse_other_recipe(path, "this block library was distilled with", _recipe(made["config"]), ours)


def run_distillation(space: SearchSpace, teacher_dir: str | Path, data_path: str | Path, out_dir: str | Path,
                     cfg: DistillConfig = DistillConfig(), workers: int = 0, ray_address: Optional[str] = None,
                     subset: Optional[int] = None, quiet: bool = False, device: str = "cpu") -> pd.DataFrame:
    """Distill every stage on ``device`` (Ray tasks when ``workers > 0``) and write ``block_quality.csv``."""
    from .teacher import check_teacher_data

    check_teacher_data(teacher_dir, data_path, subset)
    out = Path(out_dir)
    check_distill_recipe(out, len(space.stages), cfg)
    out.mkdir(parents=True, exist_ok=True)
    args = (str(space.source), str(teacher_dir), str(data_path))
    stages = list(range(len(space.stages)))
    if workers > 0 or ray_address:
        import ray

        from ..parallel import device_in_task, ray_session, training_task_options

        with ray_session(workers, ray_address):
            task = ray.remote(max_retries=2, **training_task_options(device, workers))(distill_stage)
            refs = [task.remote(*args, s, cfg, str(out), subset, 1, True, device_in_task(device)) for s in stages]
            with progress_bar(quiet) as bar:
                t = bar.add_task("distill stages (Ray)", total=len(stages))
                results, pending = {}, list(refs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    r = ray.get(done[0])
                    results[r["stage"]] = r
                    bar.advance(t)
            results = [results[s] for s in stages]
    else:
        results = [distill_stage(*args, s, cfg, str(out), subset, None, quiet, device) for s in stages]
    frame = block_quality_frame(space, [r["nsr"] for r in results], teacher_dir)
    write_csv(out / "block_quality.csv", frame)
    write_json(out / "distill.json", {"config": asdict(cfg), "stages": [
        {k: r[k] for k in ("stage", "train_seconds", "score_seconds", "steps")} for r in results]})
    return frame


def block_quality_frame(space: SearchSpace, nsr_lists: list[list[float]], teacher_dir) -> pd.DataFrame:
    from ..export import load_network

    t_arch, _ = load_network(teacher_dir)
    rows = []
    for s, scores in enumerate(nsr_lists):
        cin, _, stride = teacher_stage_shapes(t_arch, s)
        hin = _stage_input_resolution(space, s)
        for opt, value in enumerate(scores):
            c = space.option_choices(s, opt)
            o = StageOption(s, cin, hin, stride, int(c["depth"]), int(c["kernel"]), float(c["expansion"]),
                            int(c["cout"]), bool(c["se"]), str(c["act"]))
            macs, params = stage_cost(o)
            token = StageChoice(o.depth, o.kernel, o.expansion, float(c["width"]), o.se, o.act, o.cout, stride).token()
            rows.append({"stage": space.stages[s].name, "option": opt, "token": token, "depth": o.depth,
                         "kernel": o.kernel, "expansion": o.expansion, "width": float(c["width"]), "cout": o.cout,
                         "se": o.se, "act": o.act, "nsr": value, "macs": macs, "params": params})
    return pd.DataFrame(rows)


def _stage_input_resolution(space: SearchSpace, stage: int) -> int:
    return space.context(stage, 0)[1]


def load_block_quality(path: str | Path, space: SearchSpace) -> list[np.ndarray]:
    """Per-stage NSR arrays (index = option index) from a block-quality CSV, validated against ``space``."""
    from ..io import read_csv

    frame = read_csv(path, "block-quality table", required=("stage", "option", "nsr"))
    out = []
    for s, st in enumerate(space.stages):
        rows = frame[frame["stage"] == st.name].sort_values("option")
        if len(rows) != st.n_options or (rows["option"].to_numpy() != np.arange(st.n_options)).any():
            raise UserError(path, f"stage {st.name} has {len(rows)} options, the space {st.n_options}",
                            "re-run nas distill for this space")
        out.append(rows["nsr"].to_numpy(np.float64))
    return out
