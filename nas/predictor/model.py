"""The accuracy predictor: per-stage block-quality features (distillation NSR) -> accuracy.

Features of an architecture are looked up per stage from the block-quality table (one value per stage
option), optionally with a few global extras (log MACs, log params, and for spaces that search where they
downsample, the stride placement's score from a mixture-of-supernets ranking); a ridge model (DONNA) or a
small MLP maps them to top-1 accuracy. Everything is stored in one JSON file; ``predict`` is numpy over integer populations.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import UserError
from ..io import read_json, write_json
from ..space import SearchSpace

FORMAT = "hwnas-predictor"
VERSION = 1
EXTRA_FEATURES = ("log_macs", "log_params", "placement_score")


_SCORING_FIELDS = ("format", "version", "space", "space_signature", "features", "model", "stage_nsr",
                   "placement_scores")


class Predictor:
    def __init__(self, meta: dict[str, Any], path: Optional[Path] = None):
        self.meta, self.path = meta, path
        self._space: Optional[SearchSpace] = None

    # ------------------------------------------------------------------ io
    @classmethod
    def load(cls, path: str | os.PathLike, space: Optional[SearchSpace] = None) -> "Predictor":
        path = Path(path)
        meta = read_json(path, "predictor")
        where = str(path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(where, "not an hwnas predictor file", "use a JSON written by nas predictor fit")
        if meta.get("version") != VERSION:
            raise UserError(where, f"predictor format version {meta.get('version')} is not {VERSION}",
                            "refit the predictor with this toolkit")
        for key in ("space", "features", "stage_nsr", "model", "dataset"):
            if key not in meta:
                raise UserError(where, f"predictor lacks {key!r}", "refit the predictor with nas predictor fit")
        kind = meta["model"].get("kind")
        if kind not in ("ridge", "mlp"):
            raise UserError(where, f"unknown model kind {kind!r}", "refit the predictor")
        pred = cls(meta, path)
        if space is not None:
            pred.bind(space)
        return pred

    def save(self, path: str | os.PathLike) -> Path:
        write_json(path, self.meta)
        self.path = Path(path)
        return self.path

    @property
    def version(self) -> str:
        """Hash of what the predictions depend on (space, features, model, block NSRs, placement scores):
        identifies which predictor scored a run. Provenance (fit date, CV scores, recipes) is left out, so
        refitting the same samples to the same model gives the same version."""
        scoring = {k: self.meta.get(k) for k in _SCORING_FIELDS}
        blob = json.dumps(scoring, sort_keys=True).encode()
        return f"v{VERSION}-{hashlib.sha256(blob).hexdigest()[:12]}"

    @property
    def space_name(self) -> str:
        return self.meta["space"]

    @property
    def cv_kendall_tau(self) -> float:
        """Cross-validated Kendall tau of the chosen model on its fit samples (NaN if unknown or undefined)."""
        score = (self.meta.get("cv") or {}).get(self.meta.get("chosen"), {})
        return float(score.get("kendall_tau", float("nan")))

    def quality_warning(self, min_tau: float = 0.3) -> Optional[str]:
        """A sentence for the user when cross-validation says this predictor barely ranks, else None."""
        tau = self.cv_kendall_tau
        if tau >= min_tau:
            return None
        shown = "undefined (the predictions do not vary)" if tau != tau else f"{tau:.2f}"
        return (f"cross-validated Kendall tau {shown} on {self.meta.get('n_samples', '?')} fine-tuned samples: "
                f"this predictor barely ranks architectures{self._why_weak()}; fine-tune more samples (--samples) "
                f"or longer (--finetune-epochs, and more than --subset images)")

    def _why_weak(self) -> str:
        """What the fit's record shows about why: a teacher at chance level, or samples that all scored alike."""
        teacher, classes = self.meta.get("teacher") or {}, self.meta.get("num_classes")
        top1, acc = teacher.get("val_top1"), self.meta.get("sample_accuracy") or {}
        if top1 is not None and classes and top1 <= 1.5 / classes:
            return (f" (its teacher is at chance level: validation top-1 {top1:.3f} with {classes} classes; train "
                    f"it longer, --teacher-epochs, on more images)")
        if acc and acc["max"] - acc["min"] < 1e-9:
            return f" (every fine-tuned sample scored {acc['max']:.3f}: nothing to rank)"
        return ""

    # ------------------------------------------------------------------ binding
    def bind(self, space: SearchSpace) -> "Predictor":
        where = str(self.path or "predictor")
        if self.meta["space"] != space.name:
            raise UserError(where, f"predictor was made for space {self.meta['space']!r}, not {space.name!r}",
                            f"use predictors/{space.name}/ or fit one for this space")
        sig = self.meta.get("space_signature")
        if sig and sig != space.signature():
            raise UserError(where, f"space {space.name!r} changed since this predictor was fitted",
                            "refit the predictor")
        nsr = self.meta["stage_nsr"]
        if len(nsr) != len(space.stages) or any(len(v) != st.n_options for v, st in zip(nsr, space.stages)):
            raise UserError(where, "block-quality table does not match the space's stage options",
                            "refit the predictor for this space")
        self._nsr = [np.asarray(v, dtype=np.float64) for v in nsr]
        self._placement = None
        if "placement_score" in self.meta["features"]:
            scores = self.meta.get("placement_scores")
            if not space.searches_strides or scores is None or len(scores) != len(space.placements):
                raise UserError(where, "placement scores do not match the space's stride placements",
                                "refit the predictor with nas predictor fit --placement-ranking")
            self._placement = np.asarray(scores, dtype=np.float64)
        self._space = space
        return self

    @property
    def space(self) -> SearchSpace:
        if self._space is None:
            self.bind(SearchSpace.load(self.space_name))
        return self._space

    # ------------------------------------------------------------------ prediction
    def features(self, pop: np.ndarray) -> np.ndarray:
        return compute_features(self.space, self._nsr, self.meta["features"], pop, self._placement)

    def predict(self, pop: np.ndarray) -> np.ndarray:
        """Predicted top-1 accuracy (0..1) per architecture, shape ``(n,)``."""
        return predict_from_features(self.meta["model"], self.features(pop))


def compute_features(space: SearchSpace, nsr: list[np.ndarray], names: list[str], pop: np.ndarray,
                     placement_scores: Optional[np.ndarray] = None) -> np.ndarray:
    """Feature matrix: one NSR column per stage (``nsr_<stage>``), then the requested extras
    (``placement_score``: the score of each row's stride placement, from ``placement_scores``)."""
    from .. import cost

    _, opt, _ = space.grid_index(pop)
    cols = {f"nsr_{st.name}": nsr[s][opt[:, s]] for s, st in enumerate(space.stages)}
    if "log_macs" in names:
        cols["log_macs"] = np.log(cost.macs(space, pop))
    if "log_params" in names:
        cols["log_params"] = np.log(cost.params(space, pop))
    if "placement_score" in names and placement_scores is not None:
        cols["placement_score"] = np.asarray(placement_scores)[np.asarray(pop)[:, -1]]
    missing = [n for n in names if n not in cols]
    if missing:
        raise UserError("predictor", f"unknown feature(s) {missing}", "refit the predictor")
    return np.stack([cols[n] for n in names], axis=1)


def predict_from_features(model: dict[str, Any], X: np.ndarray) -> np.ndarray:
    Z = (X - np.asarray(model["x_mean"])) / np.asarray(model["x_std"])
    if model["kind"] == "ridge":
        return Z @ np.asarray(model["coef"]) + model["intercept"]
    h = Z
    layers = model["layers"]
    for i, layer in enumerate(layers):
        h = h @ np.asarray(layer["w"]) + np.asarray(layer["b"])
        if i + 1 < len(layers):
            h = np.maximum(h, 0.0)
    return h[:, 0] * model.get("y_std", 1.0) + model.get("y_mean", 0.0)
