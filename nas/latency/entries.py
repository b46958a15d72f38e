"""What a latency table holds: its entries, how to build each one, and how entries add up per stage.

Two granularities:

* ``stage``: one entry per stage option at each input it can receive (``space.stage_options()``);
  a stage's latency is one lookup.
* ``layer``: the stage's first (strided) block at each input, plus one repeated block; a stage's
  latency is ``first + (depth - 1) * repeat``. About half the entries of ``stage`` for these spaces.

Both add the stem (with the fixed first block) and the head (for each width of the last stage).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..cost import AdditiveCost
from ..space import SearchSpace, StageOption

if TYPE_CHECKING:  # building modules needs torch; looking latencies up does not
    from torch import nn

GRANULARITIES = ("layer", "stage")
KEY_COLUMNS = ("kind", "stage", "cin", "hin", "stride", "depth", "kernel", "expansion", "cout", "se", "act")


@dataclass(frozen=True)
class Entry:
    kind: str  # stem | head | stage | first | repeat
    stage: int = -1
    cin: int = 0
    hin: int = 0
    stride: int = 1
    depth: int = 1
    kernel: int = 0
    expansion: float = 0.0
    cout: int = 0
    se: bool = False
    act: str = ""

    @property
    def key(self) -> str:
        return "|".join(str(getattr(self, c)) for c in KEY_COLUMNS)

    @classmethod
    def from_row(cls, row: dict) -> "Entry":
        types = {f.name: f.type for f in fields(cls)}
        conv = {"int": int, "float": float, "str": str, "bool": _to_bool}
        return cls(**{c: conv[types[c]](row[c]) if c != "act" else ("" if _isnan(row[c]) else str(row[c]))
                      for c in KEY_COLUMNS})

    @classmethod
    def from_key(cls, key: str) -> "Entry":
        return cls.from_row(dict(zip(KEY_COLUMNS, key.split("|"))))

    def as_row(self) -> dict:
        return asdict(self)

    def input_shape(self, in_batch: int, space: SearchSpace) -> tuple[int, int, int, int]:
        if self.kind == "stem":
            return (in_batch, space.frame.in_chans, self.hin, self.hin)
        return (in_batch, self.cin, self.hin, self.hin)

    def stage_option(self) -> StageOption:
        return StageOption(self.stage, self.cin, self.hin, self.stride, self.depth, self.kernel, self.expansion,
                           self.cout, self.se, self.act)

    def build(self, space: SearchSpace) -> "nn.Module":
        from ..blocks import build_head, build_stage, build_stem

        if self.kind == "stem":
            return build_stem(space.frame)
        if self.kind == "head":
            return build_head(space.frame, self.cin)
        return build_stage(self.stage_option(), space.frame.stem_act)


def _to_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1")
    return bool(v)


def _isnan(v) -> bool:
    return isinstance(v, float) and v != v


def stem_entry(space: SearchSpace) -> Entry:
    f = space.frame
    return Entry("stem", cin=f.in_chans, hin=f.input_size, stride=2, kernel=3, cout=f.first_channels)


def head_entries(space: SearchSpace) -> list[Entry]:
    f = space.frame
    return [Entry("head", cin=c, hin=space.final_resolution, kernel=1, cout=f.num_classes)
            for c in sorted(set(space.head_cins))]


def _first_and_repeat(o: StageOption) -> tuple[Entry, Entry]:
    first = Entry("first", o.stage, o.cin, o.hin, o.stride, 1, o.kernel, o.expansion, o.cout, o.se, o.act)
    repeat = Entry("repeat", o.stage, o.cout, o.hout, 1, 1, o.kernel, o.expansion, o.cout, o.se, o.act)
    return first, repeat


def stage_entries(o: StageOption, granularity: str) -> list[tuple[Entry, int]]:
    """The entries (with multiplicity) whose latencies add up to stage option ``o``."""
    if granularity == "stage":
        return [(Entry("stage", o.stage, o.cin, o.hin, o.stride, o.depth, o.kernel, o.expansion, o.cout,
                       o.se, o.act), 1)]
    first, repeat = _first_and_repeat(o)
    return [(first, 1)] + ([(repeat, o.depth - 1)] if o.depth > 1 else [])


def enumerate_entries(space: SearchSpace, granularity: str) -> list[Entry]:
    """Every entry the space needs, each once, in a stable order."""
    if granularity not in GRANULARITIES:
        raise ValueError(granularity)
    seen: dict[str, Entry] = {}
    for e in [stem_entry(space), *head_entries(space)]:
        seen[e.key] = e
    for o in space.stage_options():
        for e, _ in stage_entries(o, granularity):
            seen.setdefault(e.key, e)
    return list(seen.values())


def assemble(space: SearchSpace, granularity: str, lookup: Callable[[Entry], float]) -> AdditiveCost:
    """An :class:`AdditiveCost` whose stage cells add the looked-up values of their entries."""
    def stage_fn(o: StageOption) -> float:
        return float(sum(k * lookup(e) for e, k in stage_entries(o, granularity)))

    head = {e.cin: lookup(e) for e in head_entries(space)}
    return AdditiveCost.tabulate(space, stage_fn, lookup(stem_entry(space)), lambda c: head[c])


def entry_counts(space: SearchSpace, pop: np.ndarray, granularity: str) -> np.ndarray:
    """How many entries each architecture's sum adds (the number of separately timed pieces)."""
    if granularity == "stage":
        return np.full(len(pop), 2 + len(space.stages), dtype=np.float64)
    pop = space.check_pop(pop)
    depth_cols = [6 * i for i in range(len(space.stages))]
    depths = np.stack([np.asarray(space.stages[i].depth)[pop[:, c]] for i, c in enumerate(depth_cols)], axis=1)
    return (2 + np.minimum(depths, 2).sum(axis=1)).astype(np.float64)
