"""``nas multipath``: multi-domain multi-path NAS (after Wang, Ke et al., WACV 2021).

One supernet serves several domains. Each domain takes its own path (one option per stage) chosen by its
own REINFORCE controller (the search's ``rl`` controller, reused); nodes that several domains choose are
shared, the others domain-specific. The stem is shared; the head's convolutions are a fixed node (shared by
domains whose last stage has the same width); each domain has its own classifier, and its own norm layers
in every module it shares (:class:`DomainBatchNorm`).

Search: every step picks a domain (see :class:`Prioritiser`), samples that domain's path (uniformly during a
warm-up, as TuNAS, then from its controller), and trains the supernet on one batch of that domain along
the path. Every few steps every domain's controller scores a few sampled paths on a held-out batch
(reward = accuracy, measured with the batch's own norm statistics; optionally times the MnasNet latency
term; and times a sharing term ``soft_sharing_ratio ** -share_weight``: the joint model's unique parameters
over those of separate networks, with this domain on the candidate path and the others on their current
most likely paths, each stage counted as shared in proportion to how many of its attributes agree, so that
a controller gains by moving toward nodes the others use) and takes a policy-gradient step.

Result: each domain's most likely path, the shared/specific node map, and a joint model (one module per
distinct node, each counted once) trained with all domains and exportable to ONNX per domain. Optionally
(``select_epochs``), where the most likely paths differ, short proxy retrains of the joint models between
them and full sharing decide what to share (:func:`select_sharing`): the reward sees one batch on shared
weights, not that a shared node trains on every domain's data.

Domain prioritisation (our rule; the paper's was not available): a domain is drawn with probability
``(1 - floor) * softmax(gap / temperature) + floor / K`` where ``gap = 1 - running validation accuracy``,
so lagging domains get more steps but no domain ever drops below ``floor / K``.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .blocks import build_head, build_stage, build_stem
from .cost import head_cost, stage_choice_option, stage_cost, stem_cost
from .errors import UserError, refuse_changed_settings
from .io import atomic_path, read_torch, write_csv, write_json, write_torch
from .objectives import Objective
from .search.rl import Reinforce
from .space import Arch, SearchSpace
from .supernet import batch_statistics, elastic_trunk, stage_choices
from .train import count_correct

KNOWN_DOMAINS = {"cifar10": ("../shared/data/cifar10.npz", 10), "fashion-mnist": ("/usr/share/datasets/fashion-mnist", 10)}


@dataclass(frozen=True)
class DomainSpec:
    name: str
    data: str
    num_classes: Optional[int] = None


def parse_domains(items: list[str]) -> list[DomainSpec]:
    """``name`` (a known domain) or ``name=path`` or ``name=path:classes``; a YAML file with ``domains:`` too."""
    if len(items) == 1 and items[0].endswith((".yaml", ".yml")):
        from .io import read_yaml

        cfg = read_yaml(items[0], "multipath run file")
        raw = cfg.get("domains") if isinstance(cfg, dict) else None
        if not isinstance(raw, list) or not raw:
            raise UserError(items[0], "needs a non-empty list under 'domains'", "e.g. domains: [{name: cifar10}]")
        items = [f"{d['name']}={d['data']}" + (f":{d['classes']}" if d.get("classes") else "") if "data" in d
                 else d["name"] for d in raw]
    out = []
    for item in items:
        name, _, rest = item.partition("=")
        if not rest:
            if name not in KNOWN_DOMAINS:
                raise UserError("--domains", f"unknown domain {name!r}",
                                f"use name=path, or one of: {', '.join(KNOWN_DOMAINS)}")
            rest = KNOWN_DOMAINS[name][0]
        path, _, classes = rest.rpartition(":") if rest.rpartition(":")[2].isdigit() else (rest, "", "")
        out.append(DomainSpec(name, path, int(classes) if classes else None))
    if len({d.name for d in out}) != len(out):
        raise UserError("--domains", "a domain is named twice", "give each domain once")
    if len(out) < 2:
        raise UserError("--domains", "multi-path NAS needs at least two domains", "add another domain")
    return out


def load_domains(specs: list[DomainSpec], space: SearchSpace, batch_size: int, seed: int,
                 subset: Optional[int] = None, device: str = "cpu") -> dict[str, Any]:
    """Each domain's splits, batches arriving on ``device`` (the torch device the networks train on)."""
    from .data import load_data

    out = {}
    for d in specs:
        splits = load_data(d.data, batch_size=batch_size, seed=seed, subset=subset, input_size=space.frame.input_size,
                           device=device)
        if d.num_classes is not None and d.num_classes != splits.num_classes:
            raise UserError(d.data, f"domain {d.name} declares {d.num_classes} classes, the data has "
                            f"{splits.num_classes}", "fix the class count or the data path")
        out[d.name] = splits
    return out


# ---------------------------------------------------------------------- supernet
class MultiPathSupernet(nn.Module):
    def __init__(self, space: SearchSpace, num_classes: dict[str, int]):
        super().__init__()
        self.space = space
        self.stem, self.stages, self.head = elastic_trunk(space)
        self.classifiers = nn.ModuleDict({d: nn.Linear(space.frame.head_features, n) for d, n in num_classes.items()})

    def forward(self, x: torch.Tensor, arch: Arch, domain: str) -> torch.Tensor:
        h = self.stem(x)
        for stage, sc in zip(self.stages, arch.stages):
            h = stage(h, stage_choices(sc))
        return self.classifiers[domain](self.head(h))


class Prioritiser:
    """Which domain trains next: ``lagging`` (documented in the module) or ``round_robin``."""

    def __init__(self, domains: list[str], rule: str = "lagging", temperature: float = 0.05, floor: float = 0.2,
                 decay: float = 0.9, seed: int = 0):
        if rule not in ("lagging", "round_robin"):
            raise UserError("--prioritise", f"unknown rule {rule!r}", "use lagging or round_robin")
        self.domains, self.rule, self.temperature, self.floor, self.decay = domains, rule, temperature, floor, decay
        self.acc = {d: 0.0 for d in domains}
        self.counts = {d: 0 for d in domains}
        self.rng = np.random.default_rng(seed)
        self.t = 0

    def probabilities(self) -> np.ndarray:
        gap = np.array([1.0 - self.acc[d] for d in self.domains])
        z = np.exp((gap - gap.max()) / self.temperature)
        return (1 - self.floor) * z / z.sum() + self.floor / len(self.domains)

    def pick(self) -> str:
        if self.rule == "round_robin":
            d = self.domains[self.t % len(self.domains)]
        else:
            d = self.domains[int(self.rng.choice(len(self.domains), p=self.probabilities()))]
        self.t += 1
        self.counts[d] += 1
        return d

    def update(self, domain: str, accuracy: float) -> None:
        self.acc[domain] = self.decay * self.acc[domain] + (1 - self.decay) * accuracy

    def state_dict(self) -> dict[str, Any]:
        return {"acc": self.acc, "counts": self.counts, "t": self.t, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.acc, self.counts, self.t = dict(s["acc"]), dict(s["counts"]), int(s["t"])
        self.rng.bit_generator.state = s["rng"]


@dataclass
class MultipathConfig:
    steps: int = 3000
    warmup: int = 600
    batch_size: int = 64
    lr: float = 0.05
    controller_every: int = 5
    paths_per_update: int = 4
    controller_lr: float = 0.1
    latency_weight: float = 0.0  # |w| of the latency term; 0 = accuracy only
    latency_target: Optional[float] = None
    latency_reward: str = "mnasnet"  # or "absolute" (TuNAS): acc - w * |lat / target - 1|, aims at the target
    share_weight: float = 0.75  # reward x soft_sharing_ratio**-share_weight; 0 = no incentive to share nodes
    prioritise: str = "lagging"
    temperature: float = 0.05
    floor: float = 0.2
    checkpoint_every: int = 200
    retrain_epochs: float = 2.0
    retrain_lr: float = 0.05
    select_epochs: float = 0.0  # > 0: choose what to share by short proxy retrains (see select_sharing)
    select_max: int = 16
    seed: int = 0


def make_controllers(space: SearchSpace, domains: list[str], cfg: MultipathConfig) -> dict[str, Reinforce]:
    objectives = [Objective("accuracy", "max")]
    if cfg.latency_weight:
        objectives.append(Objective("latency", "min"))
    return {d: Reinforce(space, objectives, cfg.seed * 101 + i, target=cfg.latency_target,
                         w=-abs(cfg.latency_weight), lr=cfg.controller_lr, reward=cfg.latency_reward)
            for i, d in enumerate(domains)}


RewardFn = Callable[[str, np.ndarray], np.ndarray]


def controller_step(space: SearchSpace, controller: Reinforce, domain: str, reward: RewardFn, n: int,
                    latency: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                    bonus: Optional[RewardFn] = None) -> float:
    """Sample ``n`` paths, score them (accuracy, times ``bonus`` if given, optional latency), take one REINFORCE
    step; return the mean plain accuracy."""
    pop = controller.ask(n)
    acc = reward(domain, pop)
    scored = acc * bonus(domain, pop) if bonus is not None else acc
    cols = [-scored] + ([latency(pop)] if latency is not None and len(controller.objectives) > 1 else [])
    controller.tell(pop, np.stack(cols, axis=1), np.zeros(n))
    return float(acc.mean())


def most_likely(controller: Reinforce) -> np.ndarray:
    return controller.policy.most_likely()


# settings that only matter after the search: a rerun may change them and reuse the search
AFTER_SEARCH = ("checkpoint_every", "retrain_epochs", "retrain_lr", "select_epochs", "select_max")
# fields added after runs were checkpointed, with their defaults: recorded only where a run differs from them,
# so that those runs' checkpoints and logged results still match
LATER_FIELDS = {"latency_reward": "mnasnet"}


def config_record(cfg: MultipathConfig) -> dict[str, Any]:
    """``cfg`` as the settings records of checkpoints and logs hold it (see ``LATER_FIELDS``)."""
    return {k: v for k, v in asdict(cfg).items() if LATER_FIELDS.get(k, object()) != v}


def search_settings(space: SearchSpace, data: dict[str, Any], cfg: MultipathConfig) -> dict[str, Any]:
    """What a multi-path search depends on: the space, the domains (name and classes) and the search's own
    settings. A checkpoint made with others is not continued."""
    return {"space": space.signature(), "domains": {d: s.num_classes for d, s in data.items()},
            **{k: v for k, v in config_record(cfg).items() if k not in AFTER_SEARCH}}


class _SearchState:
    """What a multi-path search checkpoint holds beside the supernet and optimiser: controllers, prioritiser,
    path sampler, loader positions, the held-out batch each domain's next reward uses, and the reward history
    (the search updates ``val_index`` and ``history`` in place; ``save`` writes them as they are)."""

    def __init__(self, net: nn.Module, opt: torch.optim.Optimizer, controllers: dict[str, Reinforce],
                 prio: "Prioritiser", rng: np.random.Generator, data: dict[str, Any]):
        self.net, self.opt, self.controllers, self.prio, self.rng, self.data = net, opt, controllers, prio, rng, data
        self.step, self.seconds = 0, 0.0
        self.val_index = {d: 0 for d in data}
        self.history: list[dict[str, Any]] = []

    def load(self, ckpt: Path, device: str, settings: dict[str, Any]) -> None:
        st = read_torch(ckpt, "search checkpoint", device)
        extra = json.loads(st["extra"])
        if "settings" in extra:  # checkpoints from before it was recorded load as they are
            refuse_changed_settings(ckpt, "this search was made with", extra["settings"], settings,
                                    "give the same settings to continue it, or use another --out")
        self.net.load_state_dict(st["net"])
        self.opt.load_state_dict(st["opt"])
        self.step, self.seconds = extra["step"], extra["seconds"]
        for d, c in self.controllers.items():
            c.load_state_dict(extra["controllers"][d])
            self.data[d].train.load_state_dict(extra["loaders"][d])
        self.val_index.update(extra["val_index"])
        self.history.extend(extra.get("history", []))
        self.prio.load_state_dict(extra["prio"])
        self.rng.bit_generator.state = extra["rng"]

    def save(self, ckpt: Path, step: int, seconds: float, settings: dict[str, Any]) -> None:
        extra = {"settings": settings, "step": step, "seconds": seconds, "prio": self.prio.state_dict(),
                 "rng": self.rng.bit_generator.state,
                 "controllers": {d: c.state_dict() for d, c in self.controllers.items()},
                 "loaders": {d: s.train.state_dict() for d, s in self.data.items()}, "val_index": self.val_index,
                 "history": self.history}
        write_torch(ckpt, {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "extra": json.dumps(extra)})


def search_paths(space: SearchSpace, data: dict[str, Any], cfg: MultipathConfig, out_dir: str | Path,
                 latency: Optional[Callable[[np.ndarray], np.ndarray]] = None, quiet: bool = True,
                 device: str = "cpu") -> dict[str, Any]:
    """Train the supernet on ``device`` (where ``data`` yields its batches) and the controllers (resumable);
    return each domain's most likely path."""
    from .progress import progress_bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    domains = list(data)
    net = MultiPathSupernet(space, {d: data[d].num_classes for d in domains}).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    controllers = make_controllers(space, domains, cfg)
    prio = Prioritiser(domains, cfg.prioritise, cfg.temperature, cfg.floor, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    ckpt = out / "search.ckpt"
    state = _SearchState(net, opt, controllers, prio, rng, data)
    settings = search_settings(space, data, cfg)
    if ckpt.exists():
        state.load(ckpt, device, settings)
    step, seconds = state.step, state.seconds
    val_index, history = state.val_index, state.history
    iters = {d: _cycle(data[d].train) for d in domains}

    @torch.no_grad()
    def reward(domain: str, pop: np.ndarray) -> np.ndarray:
        val = data[domain].val
        x, y = val.batch(val_index[domain] % len(val))
        val_index[domain] += 1
        with batch_statistics(net):
            accs = [(net(x, a, domain).argmax(1) == y).float().mean().item() for a in space.decode_many(pop)]
        return np.array(accs)

    def sharing_bonus(domain: str, pop: np.ndarray) -> np.ndarray:
        """``soft_sharing_ratio ** -share_weight`` of each candidate path of this domain against every other
        domain's current most likely path."""
        others = [space.decode(most_likely(c)) for d, c in controllers.items() if d != domain]
        return soft_sharing_ratio(space, space.decode_many(pop), others) ** -cfg.share_weight

    bonus = sharing_bonus if cfg.share_weight and len(domains) > 1 else None

    t0 = time.time()
    with progress_bar(quiet) as bar:
        task = bar.add_task("multipath search", total=cfg.steps, completed=step)
        while step < cfg.steps:
            d = prio.pick()
            vec = space.sample(rng, 1)[0] if step < cfg.warmup else controllers[d].ask(1)[0]
            x, y = next(iters[d])
            for g in opt.param_groups:
                g["lr"] = float(cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
            net.train()
            loss = F.cross_entropy(net(x, space.decode(vec), d), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % cfg.controller_every == 0:
                # every domain's controller learns at every controller step, whichever domain just trained:
                # a domain the prioritiser rarely picks still gets a converged path
                for dd in domains:
                    if step >= cfg.warmup:
                        acc = controller_step(space, controllers[dd], dd, reward, cfg.paths_per_update, latency,
                                              bonus)
                    else:
                        acc = float(reward(dd, space.sample(rng, 1)).mean())
                    prio.update(dd, acc)
                    history.append({"step": step, "domain": dd, "val_acc": acc, "trained": d,
                                    "loss": float(loss.detach())})
            bar.advance(task)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                state.save(ckpt, step, seconds + time.time() - t0, settings)
                iters = {d_: _cycle(data[d_].train) for d_ in domains}  # restart from the saved positions
    paths = {d: space.decode(most_likely(c)) for d, c in controllers.items()}
    write_torch(out / "supernet.pt", {k: v.cpu() for k, v in net.state_dict().items()})
    write_csv(out / "search_history.csv", pd.DataFrame(history, columns=["step", "domain", "val_acc", "trained", "loss"]))
    return {"paths": paths, "net": net, "history": history, "counts": dict(prio.counts),
            "seconds": seconds + time.time() - t0, "controllers": controllers}


def _cycle(loader):
    while True:
        yield from loader


# ---------------------------------------------------------------------- sharing selection
def sharing_candidates(space: SearchSpace, paths: dict[str, Arch], limit: int = 16,
                       seed: int = 0) -> list[dict[str, Arch]]:
    """Joint models between the controllers' paths and full sharing: at every stage where the domains' options
    differ, either each domain keeps its own option or all take one domain's option. First the controllers' own
    paths, then every domain's path shared by all; beyond ``limit``, a seeded random subset of the rest."""
    from dataclasses import replace

    domains = list(paths)
    differ = [s for s in range(len(space.stages)) if len({paths[d].stages[s] for d in domains}) > 1]
    per_stage = [[None] + list(dict.fromkeys(paths[d].stages[s] for d in domains)) for s in differ]
    out, seen = [], set()
    for combo in itertools.product(*per_stage):
        cand = {}
        for d in domains:
            stages = list(paths[d].stages)
            for s, choice in zip(differ, combo):
                stages[s] = choice if choice is not None else stages[s]
            cand[d] = replace(paths[d], stages=tuple(stages))
        key = tuple(a.id for a in cand.values())
        if key not in seen:
            seen.add(key)
            out.append(cand)
    whole = [k for k, c in enumerate(out) if k and len(set(c.values())) == 1 and c[domains[0]] in paths.values()]
    first = [0] + whole
    rest = [k for k in range(len(out)) if k not in first]
    if len(first) + len(rest) > limit:
        rng = np.random.default_rng(seed)
        rest = sorted(rng.choice(rest, max(0, limit - len(first)), replace=False).tolist())
    return [out[k] for k in first + rest]


def proxy_accuracy(space: SearchSpace, data: dict[str, Any], paths: dict[str, Arch], cfg: MultipathConfig,
                   supernet: Optional[str | Path] = None, device: str = "cpu") -> dict:
    """Train the joint model of ``paths`` for ``cfg.select_epochs`` (from scratch, or from the weights of the
    ``supernet`` file, as the final retraining starts); validation accuracy per domain."""
    torch.manual_seed(cfg.seed)
    model = build_joint(space, paths, {d: data[d].num_classes for d in paths}, supernet)
    train_joint(model.to(device), data, cfg.select_epochs, cfg.retrain_lr, cfg.seed)
    return evaluate_joint(model, data, split="val")


def _proxy_task(space_source: str, specs: list[DomainSpec], ids: dict[str, str], cfg: MultipathConfig,
                subset: Optional[int], supernet: Optional[str], threads: int = 1, device: str = "cpu") -> dict:
    torch.set_num_threads(threads)
    space = SearchSpace.load(space_source)
    data = load_domains(specs, space, cfg.batch_size, cfg.seed, subset, device)
    return proxy_accuracy(space, data, {d: space.parse_id(i) for d, i in ids.items()}, cfg, supernet, device)


def select_sharing(space: SearchSpace, specs: list[DomainSpec], paths: dict[str, Arch], cfg: MultipathConfig,
                   out_dir: str | Path, subset: Optional[int] = None, workers: int = 0,
                   init: str = "scratch", device: str = "cpu") -> dict[str, Any]:
    """Choose what the domains share by what it does to retraining, which the search reward cannot see (a
    shared node trains on every domain's batches). Each of :func:`sharing_candidates` is retrained briefly
    (Ray tasks with ``workers``; results saved as they arrive, so a rerun resumes) and the best
    mean validation accuracy wins, fewer unique parameters breaking ties. Proxies start from scratch, or with
    ``init="supernet"`` from the search's ``supernet.pt`` in ``out_dir``."""
    from .latency.engine import append_jsonl, load_jsonl

    log = Path(out_dir) / "selection.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    tag = {"select_epochs": cfg.select_epochs, "retrain_lr": cfg.retrain_lr, "batch_size": cfg.batch_size,
           "seed": cfg.seed, "subset": subset, "init": init}
    supernet = str(Path(out_dir) / "supernet.pt") if init == "supernet" else None
    cands = sharing_candidates(space, paths, cfg.select_max, cfg.seed)
    ids = [{d: a.id for d, a in c.items()} for c in cands]
    done = {json.dumps(r["paths"], sort_keys=True): r["val_accuracy"] for r in load_jsonl(str(log))
            if r.get("tag") == tag}
    todo = [i for i in ids if json.dumps(i, sort_keys=True) not in done]

    def record(i: dict, acc: dict) -> None:
        done[json.dumps(i, sort_keys=True)] = acc
        append_jsonl(str(log), [{"tag": tag, "paths": i, "val_accuracy": acc}])

    if todo and workers > 0:
        import ray

        from .parallel import device_in_task, ray_session, training_task_options

        with ray_session(workers):
            task = ray.remote(max_retries=1, **training_task_options(device, workers))(_proxy_task)
            refs = {task.remote(str(space.source), specs, i, cfg, subset, supernet, 1, device_in_task(device)): i
                    for i in todo}
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                record(refs.pop(ready[0]), ray.get(ready[0]))
    elif todo:
        data = load_domains(specs, space, cfg.batch_size, cfg.seed, subset, device)
        for i in todo:
            record(i, proxy_accuracy(space, data, {d: space.parse_id(a) for d, a in i.items()}, cfg, supernet,
                                     device))
    classes = {s.name: 0 for s in specs}
    rows = []
    for c, i in zip(cands, ids):
        acc = done[json.dumps(i, sort_keys=True)]
        rows.append({"paths": i, "val_accuracy": acc, "mean_val_accuracy": float(np.mean(list(acc.values()))),
                     "unique_params": unique_costs(space, c, classes, domain_norms=False)["unique_params"]})
    best = min(range(len(rows)), key=lambda k: (-round(rows[k]["mean_val_accuracy"], 6), rows[k]["unique_params"]))
    return {"paths": cands[best], "candidates": rows, "chosen": best}


# ---------------------------------------------------------------------- joint model and accounting
def node_key(space: SearchSpace, arch: Arch, stage: int) -> str:
    o = stage_choice_option(arch, stage)
    return f"{space.stages[stage].name}:{o.cin}>{arch.stages[stage].token()}"


def node_map(space: SearchSpace, paths: dict[str, Arch]) -> dict[str, list[str]]:
    """Distinct nodes (a stage option at its input width) -> the domains whose path uses it."""
    out: dict[str, list[str]] = {}
    for d, arch in paths.items():
        for s in range(len(space.stages)):
            out.setdefault(node_key(space, arch, s), []).append(d)
    return out


def unique_costs(space: SearchSpace, paths: dict[str, Arch], num_classes: dict[str, int],
                 domain_norms: bool = True) -> dict[str, int]:
    """Parameters and MACs of the joint model, each shared node counted once: the stem, every distinct stage
    node, every distinct head (by input width), and one classifier per domain; plus, with ``domain_norms``,
    the per-domain norm copies of every module several domains share (see :class:`DomainBatchNorm`)."""
    m, p = stem_cost(space.frame)
    users: dict[str, int] = {}
    for arch in paths.values():
        for s in range(len(space.stages)):
            k = node_key(space, arch, s)
            users[k] = users.get(k, 0) + 1
            if users[k] == 1:
                mm, pp = stage_cost(stage_choice_option(arch, s))
                m, p = m + mm, p + pp
    trunk = _frame_for(space, 0)
    head_users: dict[int, int] = {}
    for arch in paths.values():
        cin = arch.stages[-1].channels
        head_users[cin] = head_users.get(cin, 0) + 1
        if head_users[cin] == 1:
            mm, pp = head_cost(trunk, cin, space.final_resolution)
            m, p = m + mm, p + pp
    nf = space.frame.head_features
    for d in paths:
        m, p = m + nf * num_classes[d], p + nf * num_classes[d] + num_classes[d]
    if domain_norms and len(paths) > 1:
        p += (len(paths) - 1) * norm_params(build_stem(space.frame))
        options = {node_key(space, a, s): stage_choice_option(a, s) for a in paths.values() for s in range(len(space.stages))}
        p += sum((n - 1) * norm_params(build_stage(options[k])) for k, n in users.items() if n > 1)
        p += sum((n - 1) * norm_params(build_head(_frame_for(space, 1), cin)) for cin, n in head_users.items() if n > 1)
    return {"unique_params": int(p), "unique_macs": int(m), "nodes": len(users)}


def sharing_ratio(space: SearchSpace, paths: dict[str, Arch]) -> float:
    """Unique parameters of the joint model over the sum of the domains' separate networks (1 = no sharing).
    Closed form, convolutions only (norm copies are a fraction of a percent): cheap enough for every reward."""
    classes = {d: 0 for d in paths}
    joint = unique_costs(space, paths, classes, domain_norms=False)["unique_params"]
    alone = sum(unique_costs(space, {d: a}, {d: 0}, domain_norms=False)["unique_params"] for d, a in paths.items())
    return joint / alone


def soft_sharing_ratio(space: SearchSpace, candidates: list[Arch], others: list[Arch]) -> np.ndarray:
    """A smooth stand-in for :func:`sharing_ratio`, one value per candidate path against ``others``.

    Two independent controllers almost never sample exactly the same node (six decisions and the input
    width must all agree: 1 in ~1,000 per stage here), so an exact-sharing reward gives REINFORCE no signal.
    Here each stage saves its parameters in proportion to how many of its seven attributes (six decisions,
    input width) agree with the closest other path; full agreement is a real shared node.
    """
    def stage_params(a: Arch) -> np.ndarray:
        return np.array([stage_cost(stage_choice_option(a, s))[1] for s in range(len(space.stages))], float)

    def attrs(a: Arch) -> np.ndarray:
        cin = [space.frame.first_channels] + [sc.channels for sc in a.stages[:-1]]
        return np.array([[sc.depth, sc.kernel, sc.expansion, sc.width, sc.se, sc.act == "relu", c]
                         for sc, c in zip(a.stages, cin)], float)

    trunk = _frame_for(space, 0)

    def fixed(a: Arch) -> float:  # stem and head: shared (approximately) by all paths
        return stem_cost(space.frame)[1] + head_cost(trunk, a.stages[-1].channels, space.final_resolution)[1]

    other_attrs = [attrs(o) for o in others]
    other_fixed = [fixed(o) for o in others]
    separate_others = sum(f + stage_params(o).sum() for f, o in zip(other_fixed, others))
    out = []
    for c in candidates:
        p, a, f = stage_params(c), attrs(c), fixed(c)
        agree = np.max([(a == oa).mean(axis=1) for oa in other_attrs], axis=0)
        separate = f + p.sum() + separate_others
        saved = (agree * p).sum() + sum(min(f, g) for g in other_fixed)
        out.append((separate - saved) / separate)
    return np.asarray(out)


def _frame_for(space: SearchSpace, num_classes: int):
    from dataclasses import replace

    return replace(space.frame, num_classes=num_classes)


class DomainBatchNorm(nn.Module):
    """One copy of a norm layer per domain, for modules several domains share (stem, shared nodes, heads).

    Convolutions are shared; normalisation statistics and affine parameters are not: CIFAR-10 and
    Fashion-MNIST activations have very different statistics, and one shared set of running statistics
    serves neither at evaluation (the usual remedy of multi-domain networks, e.g. Rebuffi et al. 2017).
    The owning :class:`JointModel` sets ``active`` before each forward.
    """

    def __init__(self, norm: nn.Module, domains: list[str]):
        super().__init__()
        self.norms = nn.ModuleDict({d: copy.deepcopy(norm) for d in domains})
        self.active = domains[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.active](x)


def norm_params(module: nn.Module) -> int:
    """Parameters held by the BatchNorm layers of ``module`` (what a per-domain copy costs)."""
    return sum(p.numel() for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for p in m.parameters(recurse=False))


def _split_norms(module: nn.Module, domains: list[str]) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, DomainBatchNorm(child, domains))
        else:
            _split_norms(child, domains)


class JointModel(nn.Module):
    """One module per distinct node; a domain's forward follows its path through them. Modules shared by
    several domains get per-domain norm layers (:class:`DomainBatchNorm`)."""

    def __init__(self, space: SearchSpace, paths: dict[str, Arch], num_classes: dict[str, int]):
        super().__init__()
        self.space, self.paths = space, paths
        self.stem = build_stem(space.frame)
        self.nodes = nn.ModuleDict()
        self.route: dict[str, list[str]] = {}
        for d, arch in paths.items():
            keys = []
            for s in range(len(space.stages)):
                k = node_key(space, arch, s)
                safe = _safe(k)
                if safe not in self.nodes:
                    self.nodes[safe] = build_stage(stage_choice_option(arch, s), space.frame.stem_act)
                keys.append(safe)
            self.route[d] = keys
        self.heads = nn.ModuleDict()  # head convolutions, one per distinct input width
        for arch in paths.values():
            key = f"head_{arch.stages[-1].channels}"
            if key not in self.heads:
                self.heads[key] = build_head(space.frame, arch.stages[-1].channels)[:-1]
        self.classifiers = nn.ModuleDict({d: nn.Linear(space.frame.head_features, num_classes[d]) for d in paths})
        for module, users in self._shared_modules():
            _split_norms(module, users)
        self._domain_norms = [m for m in self.modules() if isinstance(m, DomainBatchNorm)]

    def _shared_modules(self) -> list[tuple[nn.Module, list[str]]]:
        users: dict[str, list[str]] = {}
        for d in self.paths:
            for k in ["stem", *self.route[d], self.head_key(d)]:
                users.setdefault(k, []).append(d)
        modules = {"stem": self.stem, **dict(self.nodes.items()), **dict(self.heads.items())}
        return [(modules[k], ds) for k, ds in users.items() if len(ds) > 1]

    def set_domain(self, domain: str) -> None:
        for m in self._domain_norms:
            m.active = domain

    def head_key(self, domain: str) -> str:
        return f"head_{self.paths[domain].stages[-1].channels}"

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        self.set_domain(domain)
        h = self.stem(x)
        for k in self.route[domain]:
            h = self.nodes[k](h)
        return self.classifiers[domain](self.heads[self.head_key(domain)](h))

    def domain_module(self, domain: str) -> nn.Module:
        """The standalone network of one domain (shares modules with the joint model): for ONNX export."""
        return _DomainView(self, domain)

    def load_from_supernet(self, net: MultiPathSupernet) -> None:
        """Copy the supernet's weights (every domain's norm copy starts from the supernet's norm)."""
        with torch.no_grad():
            _load_unsplit(self.stem, net.stem.state_dict())
            for d, arch in self.paths.items():
                for s, k in enumerate(self.route[d]):
                    o = stage_choice_option(arch, s)
                    _load_unsplit(self.nodes[k], net.stages[s].export_option(stage_choices(arch.stages[s]), o.cin))
                _load_unsplit(self.heads[self.head_key(d)], net.head.export(arch.stages[-1].channels))
                self.classifiers[d].load_state_dict(net.classifiers[d].state_dict())


def build_joint(space: SearchSpace, paths: dict[str, Arch], num_classes: dict[str, int],
                supernet: Optional[str | Path] = None) -> JointModel:
    """The joint model of ``paths``: freshly initialised (from torch's global RNG), or with the weights of a
    search's ``supernet.pt`` (whose domains must be those of ``num_classes``)."""
    model = JointModel(space, paths, num_classes)
    if supernet is not None:
        net = MultiPathSupernet(space, num_classes)
        net.load_state_dict(read_torch(supernet, "search supernet", fix="run nas multipath again to write it"))
        model.load_from_supernet(net)
    return model


class _DomainView(nn.Module):
    def __init__(self, joint: JointModel, domain: str):
        super().__init__()
        self.joint, self.domain = joint, domain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.joint(x, self.domain)


def _load_unsplit(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a plain state dict into a module whose norms may be split per domain (``x.norms.<d>.y``)."""
    own = module.state_dict()
    mapped = {}
    for key in own:
        parts = key.split(".")
        plain = ".".join(p for i, p in enumerate(parts) if not (p == "norms" or (i > 0 and parts[i - 1] == "norms")))
        mapped[key] = state[plain]
    module.load_state_dict(mapped)


def _safe(key: str) -> str:
    return key.replace(".", "_").replace(":", "__").replace(">", "_to_")


def train_joint(model: nn.Module, data: dict[str, Any], epochs: float, lr: float, seed: int,
                domain_arg: bool = True, checkpoint: Optional[str | Path] = None,
                settings: Optional[dict[str, Any]] = None, checkpoint_every: int = 200) -> dict[str, Any]:
    """Alternate one batch per domain; the same number of steps per domain for every compared model.

    With ``checkpoint`` the state (model, optimizer, step, data positions, RNG) is saved there every
    ``checkpoint_every`` steps and at the end: a later call continues where it stopped and ends as an
    uninterrupted one, or, finished, returns at once. It continues only with the same ``settings``."""
    torch.manual_seed(seed)
    from .train import lr_at, param_groups

    domains = list(data)
    steps = int(epochs * min(len(data[d].train) for d in domains))
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    settings = {**(settings or {}), "epochs": epochs, "lr": lr, "seed": seed, "steps": steps}
    start, seconds = 0, 0.0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        st = read_torch(ckpt, "retraining checkpoint")
        refuse_changed_settings(ckpt, "this retraining ran with", st["settings"], settings,
                                "give the same settings to continue it, or use another --out")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        for d in domains:
            data[d].train.load_state_dict(st["loaders"][d])
        torch.set_rng_state(st["torch_rng"])
        start, seconds = int(st["step"]), float(st["seconds"])
    iters = {d: _cycle(data[d].train) for d in domains}
    model.train()
    t0 = time.time()
    for step in range(start, steps):
        for d in domains:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, steps // 20, lr)
            x, y = next(iters[d])
            out = model(x, d) if domain_arg else model(x)
            loss = F.cross_entropy(out, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            write_torch(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                               "seconds": seconds + time.time() - t0, "settings": settings,
                               "loaders": {d: data[d].train.state_dict() for d in domains},
                               "torch_rng": torch.get_rng_state()})
    return {"steps_per_domain": steps, "seconds": seconds + time.time() - t0}


@torch.no_grad()
def evaluate_joint(model: nn.Module, data: dict[str, Any], split: str = "test") -> dict[str, float]:
    model.eval()
    out = {}
    for d, splits in data.items():
        correct, total = count_correct(lambda x, d=d: model(x, d), getattr(splits, split))
        out[d] = correct / max(1, total)
    return out


def run_multipath(space: SearchSpace, specs: list[DomainSpec], out_dir: str | Path,
                  cfg: MultipathConfig = MultipathConfig(), table=None, subset: Optional[int] = None,
                  init: str = "supernet", quiet: bool = False, workers: int = 0,
                  device: str = "cpu") -> dict[str, Any]:
    """Search paths, build and retrain the joint model on ``device``, save it (safetensors + JSON + ONNX per
    domain)."""
    from safetensors.torch import save_file

    from .export import export_onnx

    out = Path(out_dir)
    data = load_domains(specs, space, cfg.batch_size, cfg.seed, subset, device)
    latency = table.bind(space).predict if (table is not None and cfg.latency_weight) else None
    found = search_paths(space, data, cfg, out, latency, quiet, device)
    paths = found["paths"]
    selection = None
    if cfg.select_epochs > 0:
        selection = select_sharing(space, specs, paths, cfg, out, subset, workers, init, device)
        paths = selection["paths"]
    classes = {d: data[d].num_classes for d in data}
    torch.manual_seed(cfg.seed)  # initial weights of nodes the supernet does not provide (init="scratch")
    joint = JointModel(space, paths, classes)
    if init == "supernet":
        joint.load_from_supernet(found["net"])
    # one checkpoint per retraining recipe: another --retrain-epochs in the same folder starts its own
    recipe = {"paths": {d: a.id for d, a in paths.items()}, "init": init, "epochs": cfg.retrain_epochs,
              "lr": cfg.retrain_lr, "seed": cfg.seed}
    tag = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    retrain = train_joint(joint.to(device), data, cfg.retrain_epochs, cfg.retrain_lr, cfg.seed,
                          checkpoint=out / f"retrain-{tag}.ckpt", settings=recipe)
    acc = evaluate_joint(joint, data)
    joint.cpu()
    with atomic_path(out / "joint.safetensors", suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in joint.state_dict().items()}, str(tmp))
    f = space.frame
    shape = (1, f.in_chans, f.input_size, f.input_size)
    for d in paths:
        export_onnx(joint.domain_module(d).eval(), shape, out / f"{d}.onnx")
    result = {"domains": [asdict(s) for s in specs], "paths": {d: a.id for d, a in paths.items()},
              "node_map": node_map(space, paths), **unique_costs(space, paths, classes), "accuracy": acc,
              "mean_accuracy": float(np.mean(list(acc.values()))), "domain_steps": found["counts"],
              "search_seconds": found["seconds"], "retrain": retrain, "config": asdict(cfg), "init": init,
              "device": device}
    if selection is not None:
        result["controller_paths"] = {d: a.id for d, a in found["paths"].items()}
        result["selection"] = selection["candidates"]
    if table is not None:
        from .latency.profile import measure_networks, measured_elsewhere

        vecs = np.stack([space.encode(a) for a in paths.values()])
        result["table_latency_ms"] = dict(zip(paths, table.bind(space).predict(vecs).tolist()))
        if not measured_elsewhere(table):
            result["measured_latency_ms"] = dict(zip(paths, measure_networks(table, list(paths.values())).tolist()))
    write_json(out / "multipath.json", result)
    return result


__all__ = ["DomainSpec", "parse_domains", "MultipathConfig", "Prioritiser", "MultiPathSupernet", "JointModel",
           "build_joint",           "search_paths", "controller_step", "sharing_candidates", "select_sharing", "make_controllers", "node_map",
           "unique_costs", "sharing_ratio", "soft_sharing_ratio", "DomainBatchNorm", "batch_statistics",
           "run_multipath"]
