"""MobileNetV3-like search spaces: YAML loading, validation, integer encoding and variation.

A space is a fixed stem and head around searchable stages. Every stage chooses its depth, kernel,
expansion, width multiplier, squeeze-excite and activation (DONNA style: one choice per stage, shared
by all its blocks), so that one stage option is a block that can be profiled and distilled on its own.
A space may also search *where* it downsamples: stages list several strides and the space fixes the
network's total stride; each valid placement is then one choice of the decision ``strides``.

Architectures travel as integer matrices of shape ``(n, D)``, one column per decision, so that
populations are scored with numpy. :class:`Arch` is the readable, frozen form of one row.
"""
from __future__ import annotations

import copy
import functools
import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .errors import UserError
from .io import read_yaml
from .resources import shipped_dir

ACTIVATIONS = {"relu": "re", "hswish": "hs", "swish": "sw", "relu6": "r6"}
ACT_ID = {"relu": "r", "hswish": "h", "swish": "w", "relu6": "6"}
STAGE_DECISIONS = ("depth", "kernel", "expansion", "width", "se", "act")


def round_width(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` (half up), at least ``divisor``."""
    return max(divisor, int(channels / divisor + 0.5) * divisor)


@dataclass(frozen=True)
class Frame:
    """The fixed parts of a network: input, stem, first block and head."""

    input_size: int
    in_chans: int
    num_classes: int
    stem_channels: int
    stem_act: str
    first_channels: int
    first_kernel: int
    first_stride: int
    first_act: str
    head_channels: int
    head_features: int
    head_act: str

    @property
    def stem_stride(self) -> int:
        return 2  # timm's MobileNetV3 stem always has stride 2


@dataclass(frozen=True)
class StageChoice:
    """One stage of an architecture: its choices plus the channels and stride they resolve to."""

    depth: int
    kernel: int
    expansion: float
    width: float
    se: bool
    act: str
    channels: int
    stride: int

    def token(self) -> str:
        se = "s" if self.se else ""
        return f"d{self.depth}k{self.kernel}e{self.expansion:g}w{round(self.width * 100)}{se}{ACT_ID[self.act]}"

    def block_string(self) -> str:
        """The stage as one timm arch_def block string, e.g. ``ir_r3_k5_s2_e4_c40_se0.25_nhs``."""
        se = "_se0.25" if self.se else ""
        return (f"ir_r{self.depth}_k{self.kernel}_s{self.stride}_e{self.expansion:g}"
                f"_c{self.channels}{se}_n{ACTIVATIONS[self.act]}")


@dataclass(frozen=True)
class Arch:
    """One architecture of a space; self-contained, so it renders as a timm arch_def on its own."""

    space: str
    frame: Frame
    stages: tuple[StageChoice, ...]
    searched_strides: bool = False

    @property
    def id(self) -> str:
        text = "-".join(s.token() for s in self.stages)
        if self.searched_strides:
            text += "@" + "".join(str(s.stride) for s in self.stages)
        return text

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(s.stride for s in self.stages)

    def to_arch_def(self) -> list[list[str]]:
        """timm arch_def: first block, one entry per searchable stage, then the head's 1x1 conv."""
        f = self.frame
        first = f"ds_r1_k{f.first_kernel}_s{f.first_stride}_e1_c{f.first_channels}_n{ACTIVATIONS[f.first_act]}"
        head = f"cn_r1_k1_s1_c{f.head_channels}"
        return [[first]] + [[s.block_string()] for s in self.stages] + [[head]]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "space": self.space, "frame": asdict(self.frame),
                "stages": [asdict(s) for s in self.stages], "searched_strides": self.searched_strides,
                "arch_def": self.to_arch_def()}

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str = "arch JSON") -> "Arch":
        """``where``: the file it came from, for the error message."""
        try:
            arch = cls(space=obj["space"], frame=Frame(**obj["frame"]),
                       stages=tuple(StageChoice(**s) for s in obj["stages"]),
                       searched_strides=bool(obj.get("searched_strides", False)))
        except (KeyError, TypeError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise UserError(where, f"malformed architecture: {what}", "use a file written by nas") from None
        if "id" in obj and obj["id"] != arch.id:
            raise UserError(where, f"id {obj['id']!r} does not match its stages ({arch.id})",
                            "do not edit arch JSON by hand")
        return arch


@dataclass(frozen=True)
class StageSpec:
    name: str
    base_width: int
    strides: tuple[int, ...]
    depth: tuple[int, ...]
    kernel: tuple[int, ...]
    expansion: tuple[float, ...]
    width: tuple[float, ...]
    se: tuple[bool, ...]
    act: tuple[str, ...]
    channels: tuple[int, ...]  # one per width choice

    def choices(self, decision: str) -> tuple:
        return getattr(self, decision)

    @property
    def n_options(self) -> int:
        return math.prod(len(self.choices(d)) for d in STAGE_DECISIONS)


@dataclass(frozen=True)
class Decision:
    name: str
    choices: tuple


@dataclass(frozen=True)
class StageOption:
    """A distinct block a network can contain: one stage's option at one input shape."""

    stage: int
    cin: int
    hin: int
    stride: int
    depth: int
    kernel: int
    expansion: float
    cout: int
    se: bool
    act: str

    @property
    def hout(self) -> int:
        return (self.hin - 1) // self.stride + 1

    def block_string(self) -> str:
        return StageChoice(self.depth, self.kernel, self.expansion, 1.0, self.se, self.act,
                           self.cout, self.stride).block_string()


_TOP_KEYS = {"name", "input_size", "in_chans", "num_classes", "width_divisor", "stem", "first_block",
             "head", "defaults", "stages", "downsampling", "description"}
_STEM_KEYS = {"channels", "kernel", "stride", "act"}
_FIRST_KEYS = {"channels", "kernel", "stride", "act"}
_HEAD_KEYS = {"channels", "features", "act"}
_STAGE_KEYS = {"name", "base_width", "stride"} | set(STAGE_DECISIONS)


class EncodedSpace:
    """What every space encoded as integer vectors shares: ``decisions`` and ``n_choices`` set by subclasses."""

    decisions: tuple["Decision", ...]
    n_choices: np.ndarray

    @property
    def D(self) -> int:
        return len(self.decisions)

    @property
    def decision_names(self) -> list[str]:
        return [d.name for d in self.decisions]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` architectures drawn uniformly, as an int64 matrix of shape ``(n, D)``."""
        return np.floor(rng.random((n, self.D)) * self.n_choices).astype(np.int64)


class SearchSpace(EncodedSpace):
    """A MobileNetV3-like search space loaded from YAML.

    Columns of the integer encoding: for each stage ``s<i>.depth``, ``.kernel``, ``.expansion``,
    ``.width``, ``.se``, ``.act`` (in that order), then ``strides`` when the space searches placement.
    """

    def __init__(self, name: str, frame: Frame, stages: Sequence[StageSpec],
                 placements: Sequence[tuple[int, ...]], source: str = "<dict>",
                 config: Optional[dict[str, Any]] = None):
        self.name, self.frame, self.stages, self.source = name, frame, tuple(stages), source
        self.config = copy.deepcopy(config)  # the YAML mapping it was parsed from: bundles carry it
        self.placements = tuple(tuple(p) for p in placements)
        self.searches_strides = len(self.placements) > 1
        decisions = [Decision(f"{st.name}.{d}", st.choices(d)) for st in self.stages for d in STAGE_DECISIONS]
        if self.searches_strides:
            decisions.append(Decision("strides", self.placements))
        self.decisions: tuple[Decision, ...] = tuple(decisions)
        self.n_choices = np.array([len(d.choices) for d in self.decisions], dtype=np.int64)
        self._build_index()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        """Load a space from a YAML path, or a shipped space by name (e.g. ``mobilenetv3_cifar``)."""
        path = resolve_space_path(path)
        return cls.from_dict(read_yaml(path, "search space"), source=str(path))

    @classmethod
    def from_dict(cls, cfg: Any, source: str = "<dict>") -> "SearchSpace":
        return _parse_space(cfg, source)

    @property
    def cli_name(self) -> str:
        """How a command line names this space: a shipped space by name, a space of your own by its YAML path."""
        src = Path(self.source)
        if src.suffix in (".yaml", ".yml") and src.exists() and src.resolve().parent != shipped_dir("search_spaces").resolve():
            return str(self.source)
        return self.name

    @property
    def cardinality(self) -> int:
        return math.prod(int(n) for n in self.n_choices)

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, stages={len(self.stages)}, D={self.D}, size={self.cardinality:.3e})"

    # ------------------------------------------------------------------ encoding
    def largest(self) -> np.ndarray:
        """The encoding of the largest network: every numeric choice at its maximum, SE on, last activation."""
        vec = []
        for d in self.decisions:
            kind = d.name.split(".")[-1]
            if kind == "act" or d.name == "strides":
                vec.append(len(d.choices) - 1)
            else:
                vec.append(int(np.argmax([float(c) for c in d.choices])))
        return np.array(vec, dtype=np.int64)

    def check_pop(self, pop: np.ndarray, where: str = "population") -> np.ndarray:
        pop = np.asarray(pop)
        if pop.ndim == 1:
            pop = pop[None, :]
        if pop.ndim != 2 or pop.shape[1] != self.D:
            raise UserError(where, f"expected shape (n, {self.D}) for space {self.name}, got {pop.shape}",
                            "encode architectures with this space")
        if pop.size and ((pop < 0).any() or (pop >= self.n_choices).any()):
            raise UserError(where, "choice index out of range", f"each column j must lie in [0, {self.n_choices.tolist()}[j])")
        return pop.astype(np.int64, copy=False)

    def decode(self, vec: Sequence[int]) -> Arch:
        vec = self.check_pop(np.asarray(vec))[0]
        placement = self.placements[vec[-1]] if self.searches_strides else self.placements[0]
        stages = []
        for i, st in enumerate(self.stages):
            idx = vec[6 * i: 6 * i + 6]
            stages.append(StageChoice(
                depth=int(st.depth[idx[0]]), kernel=int(st.kernel[idx[1]]),
                expansion=float(st.expansion[idx[2]]), width=float(st.width[idx[3]]),
                se=bool(st.se[idx[4]]), act=str(st.act[idx[5]]),
                channels=int(st.channels[idx[3]]), stride=int(placement[i])))
        return Arch(self.name, self.frame, tuple(stages), self.searches_strides)

    def decode_many(self, pop: np.ndarray) -> list[Arch]:
        return [self.decode(row) for row in self.check_pop(pop)]

    def encode(self, arch: Arch) -> np.ndarray:
        if arch.space != self.name or len(arch.stages) != len(self.stages):
            raise UserError("architecture", f"made for space {arch.space!r}, not {self.name!r}",
                            "decode it with the space it came from")
        vec = []
        try:
            for st, sc in zip(self.stages, arch.stages):
                vec += [st.depth.index(sc.depth), st.kernel.index(sc.kernel), st.expansion.index(sc.expansion),
                        st.width.index(sc.width), st.se.index(sc.se), st.act.index(sc.act)]
            if self.searches_strides:
                vec.append(self.placements.index(arch.strides))
            elif arch.strides != self.placements[0]:
                raise ValueError(f"strides {arch.strides}")
        except ValueError as e:
            raise UserError("architecture", f"{arch.id} is not in space {self.name}: {e}",
                            "check the space file") from None
        return np.array(vec, dtype=np.int64)

    def encode_many(self, archs: Iterable[Arch]) -> np.ndarray:
        rows = [self.encode(a) for a in archs]
        return np.stack(rows) if rows else np.zeros((0, self.D), dtype=np.int64)

    def parse_id(self, arch_id: str) -> Arch:
        """The architecture whose :attr:`Arch.id` is ``arch_id``."""
        body, _, strides = arch_id.partition("@")
        tokens = body.split("-")
        if len(tokens) != len(self.stages):
            raise UserError(arch_id, f"expected {len(self.stages)} stage tokens for space {self.name}",
                            "copy the arch_id from pareto.csv")
        vec = []
        for st, tok in zip(self.stages, tokens):
            lookup = self._token_lookup(st)
            if tok not in lookup:
                raise UserError(arch_id, f"stage token {tok!r} is not an option of {st.name}",
                                "copy the arch_id from pareto.csv")
            vec += lookup[tok]
        if self.searches_strides:
            placement = tuple(int(c) for c in strides)
            if placement not in self.placements:
                raise UserError(arch_id, f"stride placement {strides!r} is not valid in {self.name}",
                                "copy the arch_id from pareto.csv")
            vec.append(self.placements.index(placement))
        return self.decode(vec)

    @functools.lru_cache(maxsize=None)
    def _token_lookup(self, st: StageSpec) -> dict[str, list[int]]:
        out = {}
        for combo in itertools.product(*(range(len(st.choices(d))) for d in STAGE_DECISIONS)):
            d, k, e, w, se, act = (st.choices(n)[i] for n, i in zip(STAGE_DECISIONS, combo))
            out[StageChoice(d, k, e, w, se, act, 0, 1).token()] = list(combo)
        return out

    # ------------------------------------------------------------------ variation
    def mutate(self, rng: np.random.Generator, pop: np.ndarray, p: float, step_prob: float = 0.0) -> np.ndarray:
        """Each decision changes with probability ``p`` to a different choice (see :func:`uniform_mutation`)."""
        return uniform_mutation(rng, self.check_pop(pop), self.n_choices, p, step_prob)

    def crossover(self, rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Uniform crossover by stage: each child takes every stage (all six decisions) from ``a`` or ``b``."""
        return uniform_crossover(rng, self.check_pop(a), self.check_pop(b), self.gene_groups)

    @functools.cached_property
    def gene_groups(self) -> np.ndarray:
        """Group id per column: the six decisions of a stage form one group; ``strides`` its own."""
        groups = np.repeat(np.arange(len(self.stages)), 6)
        return np.concatenate([groups, [len(self.stages)]]) if self.searches_strides else groups

    # ------------------------------------------------------------------ stage grid
    def _build_index(self) -> None:
        """Precompute how a row maps to (context, option) per stage, for vectorised cost tables.

        A stage's *context* is its input: channels (set by the previous stage's width), resolution
        and stride (set by the placement). Its *option* is the mixed-radix index of its six choices.
        """
        f = self.frame
        res = []  # per placement: input resolution of each stage
        for p in self.placements:
            h = _conv_out(_conv_out(f.input_size, f.stem_stride), f.first_stride)
            row = []
            for s in p:
                row.append(h)
                h = _conv_out(h, s)
            res.append((row, h))
        finals = {r[1] for r in res}
        if len(finals) != 1:  # cannot happen when the total stride is fixed
            raise UserError(self.source, "stride placements end at different resolutions", "fix downsampling.total")
        self.final_resolution = finals.pop()
        self.stage_hs: list[list[tuple[int, int]]] = []      # per stage: distinct (hin, stride)
        self._hs_of_placement = np.zeros((len(self.placements), len(self.stages)), dtype=np.int64)
        for i in range(len(self.stages)):
            pairs = sorted({(res[j][0][i], p[i]) for j, p in enumerate(self.placements)}, reverse=True)
            self.stage_hs.append(pairs)
            for j, p in enumerate(self.placements):
                self._hs_of_placement[j, i] = pairs.index((res[j][0][i], p[i]))
        self.stage_cins: list[tuple[int, ...]] = [(f.first_channels,)] + [st.channels for st in self.stages[:-1]]
        radix = [[len(st.choices(d)) for d in STAGE_DECISIONS] for st in self.stages]
        self._opt_weights = np.array([[math.prod(r[k + 1:]) for k in range(6)] for r in radix], dtype=np.int64)

    def n_contexts(self, stage: int) -> int:
        return len(self.stage_cins[stage]) * len(self.stage_hs[stage])

    def context(self, stage: int, ctx: int) -> tuple[int, int, int]:
        """(cin, hin, stride) of context ``ctx`` of ``stage``."""
        n_hs = len(self.stage_hs[stage])
        hin, stride = self.stage_hs[stage][ctx % n_hs]
        return self.stage_cins[stage][ctx // n_hs], hin, stride

    def option_choices(self, stage: int, opt: int) -> dict[str, Any]:
        st, out = self.stages[stage], {}
        for k, d in enumerate(STAGE_DECISIONS):
            idx = opt // int(self._opt_weights[stage, k]) % len(st.choices(d))
            out[d] = st.choices(d)[idx]
            if d == "width":
                out["cout"] = st.channels[idx]
        return out

    def stage_option(self, stage: int, ctx: int, opt: int) -> StageOption:
        cin, hin, stride = self.context(stage, ctx)
        c = self.option_choices(stage, opt)
        return StageOption(stage, cin, hin, stride, int(c["depth"]), int(c["kernel"]), float(c["expansion"]),
                           int(c["cout"]), bool(c["se"]), str(c["act"]))

    def stage_options(self) -> list[StageOption]:
        """Every distinct stage option at every input shape it can receive (duplicates removed)."""
        seen, out = set(), []
        for s, st in enumerate(self.stages):
            for ctx in range(self.n_contexts(s)):
                for opt in range(st.n_options):
                    o = self.stage_option(s, ctx, opt)
                    if o not in seen:
                        seen.add(o)
                        out.append(o)
        return out

    def grid_index(self, pop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: context index ``(n, S)``, option index ``(n, S)`` and head context ``(n,)``."""
        pop = self.check_pop(pop)
        n, S = pop.shape[0], len(self.stages)
        stage_cols = pop[:, : 6 * S].reshape(n, S, 6)
        opt = (stage_cols * self._opt_weights[None]).sum(axis=2)
        width = stage_cols[:, :, 3]
        cin_idx = np.concatenate([np.zeros((n, 1), dtype=np.int64), width[:, :-1]], axis=1)
        placement = pop[:, -1] if self.searches_strides else np.zeros(n, dtype=np.int64)
        hs_idx = self._hs_of_placement[placement]
        n_hs = np.array([len(h) for h in self.stage_hs], dtype=np.int64)
        ctx = cin_idx * n_hs[None] + hs_idx
        return ctx, opt, width[:, -1]

    @property
    def head_cins(self) -> tuple[int, ...]:
        return self.stages[-1].channels

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary used for fingerprints and run metadata."""
        return {"name": self.name, "frame": asdict(self.frame), "placements": [list(p) for p in self.placements],
                "stages": [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(st).items()}
                           for st in self.stages]}

    def signature(self) -> str:
        """A short hash of the space's content: tables and predictors record it to refuse mismatches."""
        import hashlib
        import json

        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def placement_name(strides: Sequence[int]) -> str:
    """``strides@21221``: the per-stage strides of one placement (as in architecture ids after ``@``)."""
    return "strides@" + "".join(map(str, strides))


def uniform_mutation(rng: np.random.Generator, pop: np.ndarray, n_choices: np.ndarray, p: float,
                     step_prob: float = 0.0) -> np.ndarray:
    """Each gene moves with probability ``p`` to another of its choices: uniformly, or, with probability
    ``step_prob``, to a neighbouring choice (choices are listed in order, so a step is a small change)."""
    pop = pop.copy()
    flip = (rng.random(pop.shape) < p) & (n_choices > 1)
    shift = 1 + np.floor(rng.random(pop.shape) * (n_choices - 1)).astype(np.int64)
    new = (pop + shift) % n_choices
    if step_prob > 0:
        up = rng.random(pop.shape) < 0.5
        step = np.where((up & (pop < n_choices - 1)) | (pop == 0), pop + 1, pop - 1)
        new = np.where(rng.random(pop.shape) < step_prob, step, new)
    pop[flip] = new[flip]
    return pop


def uniform_crossover(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each group of genes (e.g. a stage's decisions) comes from ``a`` or ``b`` with equal probability."""
    take_a = rng.random((a.shape[0], int(groups.max()) + 1)) < 0.5
    return np.where(take_a[:, groups], a, b)


def _conv_out(h: int, stride: int) -> int:
    return (h - 1) // stride + 1


def carried_space(config: Optional[dict[str, Any]], name: str, where: str) -> SearchSpace:
    """The space a bundle manifest or run.json records: from the YAML mapping it carries, else (files written
    before they carried one) the shipped space by name."""
    if config is not None:
        return SearchSpace.from_dict(config, source=f"{where} (space_config)")
    return SearchSpace.load(name)


def resolve_space_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    cand = shipped_dir("search_spaces") / f"{p}.yaml"
    if cand.exists():
        return cand
    known = sorted(x.stem for x in shipped_dir("search_spaces").glob("*.yaml"))
    raise UserError(str(path), "no such search space", f"give a YAML path or one of: {', '.join(known)}")


# ---------------------------------------------------------------------- parsing
def _parse_space(cfg: Any, source: str) -> SearchSpace:
    if not isinstance(cfg, dict):
        raise UserError(source, "a search space must be a YAML mapping", "see search_spaces/*.yaml")
    _no_unknown(cfg, _TOP_KEYS, source, "")
    name = _req(cfg, "name", str, source)
    divisor = _req(cfg, "width_divisor", int, source, default=8)
    stem = _section(cfg, "stem", _STEM_KEYS, source)
    first = _section(cfg, "first_block", _FIRST_KEYS, source)
    head = _section(cfg, "head", _HEAD_KEYS, source)
    if _req(stem, "stride", int, source, "stem.", default=2) != 2:
        raise UserError(source, "stem.stride must be 2", "timm's MobileNetV3 stem downsamples by 2")
    frame = Frame(
        input_size=_positive(cfg, "input_size", source), in_chans=_positive(cfg, "in_chans", source, default=3),
        num_classes=_positive(cfg, "num_classes", source),
        stem_channels=_positive(stem, "channels", source, "stem."), stem_act=_act(stem.get("act", "hswish"), source, "stem.act"),
        first_channels=_positive(first, "channels", source, "first_block."),
        first_kernel=_positive(first, "kernel", source, "first_block.", default=3),
        first_stride=_stride(first.get("stride", 1), source, "first_block.stride"),
        first_act=_act(first.get("act", "relu"), source, "first_block.act"),
        head_channels=_positive(head, "channels", source, "head."), head_features=_positive(head, "features", source, "head."),
        head_act=_act(head.get("act", "hswish"), source, "head.act"))
    if frame.stem_act != frame.head_act:
        raise UserError(source, "stem.act and head.act must match", "timm's MobileNetV3 uses one model activation")
    defaults = cfg.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UserError(source, "defaults must be a mapping", "see search_spaces/*.yaml")
    _no_unknown(defaults, set(STAGE_DECISIONS) | {"stride"}, source, "defaults.")
    raw_stages = cfg.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise UserError(source, "stages must be a non-empty list", "add at least one stage")
    stages = [_parse_stage(i, raw, defaults, divisor, source) for i, raw in enumerate(raw_stages)]
    if len({st.name for st in stages}) != len(stages):
        raise UserError(source, "stage names must be unique", "rename the stages")
    placements = _placements(cfg, stages, frame, source)
    return SearchSpace(name, frame, stages, placements, source, cfg)


def _parse_stage(i: int, raw: Any, defaults: dict, divisor: int, source: str) -> StageSpec:
    where = f"stages[{i}]."
    if not isinstance(raw, dict):
        raise UserError(source, f"stages[{i}] must be a mapping", "see search_spaces/*.yaml")
    _no_unknown(raw, _STAGE_KEYS, source, where)
    merged = {**defaults, **raw}
    base = _positive(merged, "base_width", source, where)
    strides = merged.get("stride", 1)
    strides = tuple(_stride(s, source, where + "stride") for s in (strides if isinstance(strides, list) else [strides]))
    if not strides:
        raise UserError(source, f"{where}stride is an empty list", "give 1, 2 or a list of them")
    ch = {}
    for d in STAGE_DECISIONS:
        vals = merged.get(d)
        if vals is None:
            raise UserError(source, f"{where}{d} is missing", "give it in the stage or under defaults")
        vals = vals if isinstance(vals, list) else [vals]
        if not vals:
            raise UserError(source, f"{where}{d} has an empty choice list", "give at least one choice")
        if len(set(map(str, vals))) != len(vals):
            raise UserError(source, f"{where}{d} lists a choice twice", "remove the duplicate")
        ch[d] = tuple(_choice(d, v, source, where + d) for v in vals)
    channels = tuple(round_width(base * w, divisor) for w in ch["width"])
    return StageSpec(name=str(raw.get("name", f"s{i + 1}")), base_width=base, strides=strides,
                     channels=channels, **ch)


def _choice(decision: str, v: Any, source: str, where: str):
    if decision == "se":
        if not isinstance(v, bool):
            raise UserError(source, f"{where}: {v!r} is not true/false", "use true or false")
        return v
    if decision == "act":
        return _act(v, source, where)
    if decision in ("depth", "kernel"):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or (decision == "kernel" and v % 2 == 0):
            raise UserError(source, f"{where}: {v!r} is not a valid {decision}",
                            "use positive integers (odd for kernels)")
        return v
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
        raise UserError(source, f"{where}: {v!r} is not a positive number", "use e.g. 0.75, 1.0")
    return float(v)


def _placements(cfg: dict, stages: list[StageSpec], frame: Frame, source: str) -> list[tuple[int, ...]]:
    fixed = frame.stem_stride * frame.first_stride
    total = None
    ds = cfg.get("downsampling")
    if ds is not None:
        if not isinstance(ds, dict):
            raise UserError(source, "downsampling must be a mapping like {total: 32}", "see the README")
        _no_unknown(ds, {"total"}, source, "downsampling.")
        total = _positive(ds, "total", source, "downsampling.")
    combos = list(itertools.product(*(st.strides for st in stages)))
    if total is None:
        if len(combos) > 1:
            raise UserError(source, "stages list several strides but downsampling.total is missing",
                            "add downsampling: {total: N} to fix the network's total stride")
        valid = combos
    else:
        valid = [c for c in combos if fixed * math.prod(c) == total]
        if not valid:
            reachable = sorted({fixed * math.prod(c) for c in combos})
            raise UserError(source, f"downsampling.total={total} cannot be reached by the stage strides",
                            f"reachable totals: {reachable}")
    h = frame.input_size
    for _ in range(int(math.log2(fixed * math.prod(valid[0])))):
        if h < 2:
            raise UserError(source, f"input_size {frame.input_size} is too small for total stride "
                            f"{fixed * math.prod(valid[0])}", "downsample less or use larger inputs")
        h = _conv_out(h, 2)
    return sorted(valid)


def _no_unknown(d: dict, allowed: set[str], source: str, prefix: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise UserError(source, f"unknown key {prefix}{unknown[0]}", f"allowed: {', '.join(sorted(allowed))}")


def _section(cfg: dict, key: str, allowed: set[str], source: str) -> dict:
    sec = cfg.get(key)
    if not isinstance(sec, dict):
        raise UserError(source, f"{key} is missing or not a mapping", "see search_spaces/*.yaml")
    _no_unknown(sec, allowed, source, key + ".")
    return sec


def _req(d: dict, key: str, typ: type, source: str, prefix: str = "", default: Any = None) -> Any:
    if key not in d:
        if default is not None:
            return default
        raise UserError(source, f"{prefix}{key} is missing", "see search_spaces/*.yaml")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool):
        raise UserError(source, f"{prefix}{key} must be a {typ.__name__}, got {v!r}", "fix the value")
    return v


def _positive(d: dict, key: str, source: str, prefix: str = "", default: Any = None) -> int:
    v = _req(d, key, int, source, prefix, default)
    if v <= 0:
        raise UserError(source, f"{prefix}{key} must be positive, got {v}", "fix the value")
    return v


def _stride(v: Any, source: str, where: str) -> int:
    if v not in (1, 2) or isinstance(v, bool):
        raise UserError(source, f"{where}: stride {v!r} is not 1 or 2", "use 1 or 2 (timm blocks support no other)")
    return int(v)


def _act(v: Any, source: str, where: str) -> str:
    if v not in ACTIVATIONS:
        raise UserError(source, f"{where}: unknown activation {v!r}", f"use one of {', '.join(ACTIVATIONS)}")
    return str(v)
