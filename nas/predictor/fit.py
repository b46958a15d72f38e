"""``nas predictor fit``: features -> accuracy, ridge (DONNA) or a small MLP, chosen by cross-validated rank quality."""
from __future__ import annotations

import datetime as _dt
import warnings
from typing import Any, Optional

import numpy as np
from scipy.stats import kendalltau

from ..errors import UserError
from ..space import SearchSpace
from .model import FORMAT, VERSION, Predictor, compute_features, predict_from_features

FEATURE_SETS = {"nsr": (), "nsr+log_macs": ("log_macs",), "nsr+log_macs+log_params": ("log_macs", "log_params")}
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = X.mean(axis=0), X.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def fit_ridge(X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from sklearn.linear_model import RidgeCV

    mean, std = _standardise(X)
    m = RidgeCV(alphas=RIDGE_ALPHAS).fit((X - mean) / std, y)
    return {"kind": "ridge", "coef": m.coef_.tolist(), "intercept": float(m.intercept_), "alpha": float(m.alpha_),
            "x_mean": mean.tolist(), "x_std": std.tolist()}


def fit_mlp(X: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    from sklearn.neural_network import MLPRegressor

    mean, std = _standardise(X)
    y_mean, y_std = float(y.mean()), float(y.std() or 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MLPRegressor(hidden_layer_sizes=(16,), alpha=1.0, max_iter=4000, learning_rate_init=3e-3,
                         random_state=seed).fit((X - mean) / std, (y - y_mean) / y_std)
    layers = [{"w": w.tolist(), "b": b.tolist()} for w, b in zip(m.coefs_, m.intercepts_)]
    return {"kind": "mlp", "layers": layers, "x_mean": mean.tolist(), "x_std": std.tolist(),
            "y_mean": y_mean, "y_std": y_std}


FITTERS = {"ridge": lambda X, y, seed: fit_ridge(X, y), "mlp": fit_mlp}


FOLDS = 5


def cross_validate(X: np.ndarray, y: np.ndarray, kind: str, folds: int = FOLDS, repeats: int = 4,
                   seed: int = 0) -> dict[str, float]:
    """Repeated K-fold: Kendall tau and MAE of out-of-fold predictions, averaged over repeats."""
    rng = np.random.default_rng(seed)
    taus, maes = [], []
    for r in range(repeats):
        perm = rng.permutation(len(y))
        pred = np.empty(len(y))
        for f in range(folds):
            test = perm[f::folds]
            train = np.setdiff1d(perm, test)
            model = FITTERS[kind](X[train], y[train], seed + r)
            pred[test] = predict_from_features(model, X[test])
        taus.append(kendalltau(pred, y).statistic)
        maes.append(float(np.mean(np.abs(pred - y))))
    return {"kendall_tau": float(np.mean(taus)), "kendall_tau_std": float(np.std(taus)), "mae": float(np.mean(maes))}


def check_sample_count(samples: int, where: str = "--samples", folds: int = FOLDS) -> None:
    """Cross-validation needs ``folds + 2`` samples: say so before anything is fine-tuned."""
    if samples < folds + 2:
        raise UserError(where, f"only {samples} fine-tuned samples", f"need at least {folds + 2}; run more")


def fit_predictor(space: SearchSpace, nsr: list[np.ndarray], pop: np.ndarray, acc: np.ndarray,
                  info: dict[str, Any], seed: int = 0, folds: int = FOLDS, repeats: int = 4,
                  kinds: tuple[str, ...] = ("ridge", "mlp"),
                  feature_sets: Optional[dict[str, tuple[str, ...]]] = None,
                  placement_scores: Optional[np.ndarray] = None) -> Predictor:
    """Fit every (model, feature set), keep the best by cross-validated Kendall tau; ties go to the simpler.

    With ``placement_scores`` (one per stride placement of ``space``) every feature set is also tried with
    the ``placement_score`` feature added."""
    check_sample_count(len(acc), "samples", folds)
    stage_names = [f"nsr_{st.name}" for st in space.stages]
    feature_sets = dict(feature_sets or FEATURE_SETS)
    if placement_scores is not None:
        feature_sets.update({f"{k}+placement_score": (*v, "placement_score") for k, v in list(feature_sets.items())})
    cv, best = {}, None
    for fs_name, extras in feature_sets.items():
        names = stage_names + list(extras)
        X = compute_features(space, nsr, names, pop, placement_scores)
        for kind in kinds:
            score = cross_validate(X, acc, kind, folds, repeats, seed)
            cv[f"{kind}:{fs_name}"] = score
            rank = (round(score["kendall_tau"], 3), -len(names), kind == "ridge")
            if best is None or rank > best[0]:
                best = (rank, kind, names, X)
    _, kind, names, X = best
    model = FITTERS[kind](X, acc, seed)
    meta = {"format": FORMAT, "version": VERSION, "space": space.name, "space_signature": space.signature(),
            **info, "features": names, "model": model, "cv": cv, "chosen": f"{kind}:{_fs_name(names, stage_names)}",
            "n_samples": int(len(acc)), "num_classes": int(space.frame.num_classes),
            "sample_accuracy": {"min": float(np.min(acc)), "max": float(np.max(acc)), "mean": float(np.mean(acc))},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "stage_nsr": [v.tolist() for v in nsr]}
    if "placement_score" in names:
        meta["placement_scores"] = np.asarray(placement_scores, dtype=float).tolist()
    return Predictor(meta).bind(space)


def _fs_name(names: list[str], stage_names: list[str]) -> str:
    extras = [n for n in names if n not in stage_names]
    return "+".join(["nsr", *extras])


def onehot_features(space, pop: np.ndarray) -> np.ndarray:
    """One column per (decision, choice): the baseline linear model's features."""
    cols = [(pop[:, j:j + 1] == np.arange(n)[None, :]).astype(np.float64) for j, n in enumerate(space.n_choices)]
    return np.concatenate(cols, axis=1)
