"""How much of the predictor's gap to the 0.8 goal is which images its ground truth counts (issue 4).

Reads ``ground_truth_images`` of ``benchmarks/results/predictor_quality.json`` (the same held-out fine-tunes
scored on the 5k validation and the 10k test images) and models each split's accuracy as the network's
population accuracy plus independent image-sampling noise whose variance falls with the number of images.
The validation-vs-test Kendall tau then fixes the noise, and with it what a perfect predictor of population
accuracy would reach against each split (bivariate normal: tau = 2/pi * arcsin(rho); also simulated at the
held-out count). Training-seed noise is common to both splits, so it counts as signal here: the figures are
upper bounds. The script trains nothing; it writes ``benchmarks/results/predictor_image_noise.json``.
"""
from __future__ import annotations

import argparse
import json
import math

from _common import RESULTS, _perfect_ranking_tau, write_result


def tau_of_rho(rho: float) -> float:
    return 2.0 / math.pi * math.asin(rho)


def rho_of_tau(tau: float) -> float:
    return math.sin(math.pi * tau / 2.0)


def noise_ratio(val_vs_test_tau: float, n_val: int, n_test: int) -> float:
    """Image-noise variance of the validation split over the true variance, ``r``, from
    rho(val, test) = 1 / sqrt((1 + r) (1 + r n_val / n_test))."""
    c, k = 1.0 / rho_of_tau(val_vs_test_tau) ** 2, n_val / n_test
    # (1 + r)(1 + k r) = c, i.e. k r^2 + (1 + k) r + 1 - c = 0
    return (-(1 + k) + math.sqrt((1 + k) ** 2 - 4 * k * (1 - c))) / (2 * k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=str(RESULTS / "predictor_quality.json"))
    ap.add_argument("--draws", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    src = json.load(open(args.source))
    g, n = src["ground_truth_images"], int(src["n_heldout"])
    n_val, n_test = int(g["n_val_images"]), int(g["n_test_images"])
    r = noise_ratio(g["val_vs_test_tau"], n_val, n_test)
    splits = {"validation": n_val, "test": n_test, "validation_plus_test": n_val + n_test}
    observed = {"validation": src["kendall_tau"], "test": g["test"]["kendall_tau"],
                "validation_plus_test": g["val_plus_test"]["kendall_tau"]}
    noise_var = {s: r * n_val / images for s, images in splits.items()}
    # The predictor's own error (variance over the true variance), taken from the split nothing was fitted on.
    q = 1.0 / (rho_of_tau(observed["test"]) ** 2 * (1 + noise_var["test"])) - 1.0
    figures = {}
    for s, images in splits.items():
        sim = _perfect_ranking_tau(1.0, math.sqrt(noise_var[s]), n, args.draws, args.seed)
        figures[s] = {"images": images, "perfect_predictor_tau": tau_of_rho(1 / math.sqrt(1 + noise_var[s])),
                      "perfect_predictor_tau_simulated": sim, "predictor_tau": observed[s],
                      "predictor_tau_implied_by_test": tau_of_rho(1 / math.sqrt((1 + q) * (1 + noise_var[s])))}
    for s, f in figures.items():
        print(f"{s:>22}: {f['images']:>6} images, perfect predictor τ {f['perfect_predictor_tau']:.3f} "
              f"(simulated {f['perfect_predictor_tau_simulated']['mean']:.3f}), predictor {f['predictor_tau']:.3f}, "
              f"implied by its test τ {f['predictor_tau_implied_by_test']:.3f}")
    write_result("predictor_image_noise", {
        "source": args.source, "n_heldout": n, "val_vs_test_tau": g["val_vs_test_tau"],
        "image_noise_ratio_validation": r, "predictor_error_ratio": q, "splits": figures,
        "model": "split accuracy = population accuracy + independent image noise, variance r * n_val / images "
                 "(r from the val-vs-test tau); the predictor's own error q from its test tau; "
                 "seed noise counts as signal, so the perfect-predictor figures are upper bounds"})


if __name__ == "__main__":
    main()
