"""Placement scores: a ranking of a space's stride placements (``nas supernet-mixture --space``), read back
as one score per placement for the search (objective ``placement_score``) and the predictor (feature
``placement_score``)."""
from __future__ import annotations

import os

import numpy as np

from .errors import UserError
from .io import read_csv
from .space import SearchSpace, placement_name


def load_placement_scores(space: SearchSpace, path: str | os.PathLike) -> np.ndarray:
    """Score per stride placement of ``space`` (in the order of ``space.placements``) from a ranking CSV
    written by ``nas supernet-mixture --space`` (columns ``placement`` and ``supernet_accuracy``)."""
    where = str(path)
    if not space.searches_strides:
        raise UserError(where, f"space {space.name} does not search stride placements",
                        "use a space with downsampling.total (e.g. mobilenetv3_cifar_placement)")
    frame = read_csv(path, "placement ranking")
    for col in ("placement", "supernet_accuracy"):
        if col not in frame.columns:
            raise UserError(where, f"placement ranking lacks column {col!r}", "write it with nas supernet-mixture --space")
    score = dict(zip(frame["placement"].astype(str), frame["supernet_accuracy"].astype(float)))
    names = [placement_name(p) for p in space.placements]
    missing = [n for n in names if n not in score]
    if missing:
        raise UserError(where, f"no score for placement(s) {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}",
                        f"rank every placement of {space.name} with nas supernet-mixture --space {space.cli_name}")
    return np.array([score[n] for n in names])
