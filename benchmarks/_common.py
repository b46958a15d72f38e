"""Shared helpers for benchmark scripts: machine fingerprint and results files."""
from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.io import write_json  # noqa: E402
from nas.latency.engine import cpu_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    import torch

    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "hostname_hint": platform.node()[:8]}


def write_result(name: str, figures: dict) -> Path:
    path = RESULTS / f"{name}.json"
    write_json(path, {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **figures})
    print(f"wrote {path}")
    return path


def data_sha256(path) -> str | None:
    """sha256 of an archive's raw ``x_train, y_train, x_test, y_test`` bytes (as ``../shared/data/README.md``
    gives it: stable across re-saving, unlike the zip file), so that a result names exactly which images it
    used; None for anything but such an archive."""
    import hashlib

    import numpy as np

    p = Path(path)
    if p.suffix != ".npz" or not p.is_file():
        return None
    h = hashlib.sha256()
    with np.load(p) as d:
        for k in ("x_train", "y_train", "x_test", "y_test"):
            h.update(np.ascontiguousarray(d[k]).tobytes())
    return h.hexdigest()


def _perfect_ranking_tau(true_sd: float, noise_sd: float, n: int, draws: int, seed: int) -> dict:
    """Kendall tau between ``n`` true values (spread ``true_sd``) and the same plus measurement noise, over
    ``draws`` draws: what a perfect ranking reaches against a ground truth that noisy."""
    import numpy as np
    from scipy.stats import kendalltau

    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(draws):
        truth = rng.normal(0.0, true_sd, n)
        taus.append(kendalltau(truth, truth + rng.normal(0.0, noise_sd, n)).statistic)
    return {"mean": float(np.mean(taus)), "p5": float(np.percentile(taus, 5)), "p95": float(np.percentile(taus, 95))}


def binomial_ceiling_tau(accuracies, n_images: int, draws: int = 4000, seed: int = 0) -> dict:
    """The Kendall tau a perfect ranking would reach against accuracies each measured on ``n_images`` images.

    The true spread is the observed one less the binomial noise of counting hits on ``n_images``; the
    ranking is then compared with true + binomial noise, ``draws`` times. A rough guide, not a bound: networks
    of one family err on the same hard images, so sampling the images moves their differences less than
    independent counts would, and training noise (another seed) is not counted at all; with repeated seeds,
    ``repeat_ceiling_tau`` measures the noise instead."""
    import numpy as np

    acc = np.asarray(accuracies, dtype=float)
    noise = float(np.sqrt(np.mean(acc * (1 - acc) / n_images)))
    true_sd = float(np.sqrt(max(acc.var(ddof=1) - noise ** 2, 0.0)))
    return {**_perfect_ranking_tau(true_sd, noise, len(acc), draws, seed),
            "n_images": int(n_images), "observed_sd": float(acc.std(ddof=1)), "binomial_sd": noise}


def repeat_ceiling_tau(per_seed: list[list[float]], draws: int = 4000, seed: int = 0) -> dict:
    """The Kendall tau a perfect ranking would reach against the mean of k repeated measurements (e.g. k
    training seeds of every candidate), with the noise taken from the repeats themselves: the variance across
    repeats of one candidate (training and image noise together) against the spread of the candidates' means.
    ``per_seed``: k lists, one accuracy per candidate each, in the same order."""
    import numpy as np

    acc = np.asarray(per_seed, dtype=float)  # k x candidates
    k = acc.shape[0]
    noise_var = float(acc.var(axis=0, ddof=1).mean())
    true_sd = float(np.sqrt(max(acc.mean(axis=0).var(ddof=1) - noise_var / k, 0.0)))
    return {**_perfect_ranking_tau(true_sd, float(np.sqrt(noise_var / k)), acc.shape[1], draws, seed),
            "repeats": int(k), "repeat_sd": float(np.sqrt(noise_var)), "true_sd": true_sd}
