"""Profile a space on this machine into latency_tables/, validate it, and record the figures.

    python benchmarks/latency_profile.py --space mobilenetv3_cifar --device cpu-ort-1t --validate 80

Writes benchmarks/results/profile_<space>_<device>.json with wall_time_s, entries and validation.
``--transfer-from D`` adds ``transfer``: how well table D, measured on another machine, predicts this machine's
end-to-end timings of the same validation networks (ranking, and absolute error before and after one scale
factor fitted on the validation's fit networks): whether a table can be carried to a similar device.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau
from _common import ROOT, write_result

from nas.latency.profile import Protocol, agreement, describe, profile
from nas.latency.table import LatencyTable
from nas.space import SearchSpace


def correction_alternatives(table: LatencyTable) -> dict:
    """Other forms of the correction, fitted on the validation's fit networks and scored on its held-out
    ones as the shipped one is: per-stage coefficients, a quadratic term, parameters, MACs."""
    from nas import cost

    sp = table.space
    frame = pd.read_csv(Path(table.path).with_name(f"{table.device}.validation.csv"))
    pop = sp.encode_many(sp.parse_id(i) for i in frame["arch_id"])
    grids = table.stage_grids()
    ctx, opt, head_ctx = sp.grid_index(pop)
    stages = [g[ctx[:, s], opt[:, s]] for s, g in enumerate(grids)]
    total, y = frame["table_sum_ms"].to_numpy(), frame["measured_ms"].to_numpy()
    rest, one = total - np.sum(stages, axis=0), np.ones(len(y))
    params, macs = cost.params(sp, pop) / 1e6, cost.macs(sp, pop) / 1e6
    forms = {"a*sum+c": [total, one], "per_stage": [*stages, rest, one], "a*sum+d*sum^2+c": [total, total ** 2, one],
             "a*sum+e*params+c": [total, params, one], "a*sum+e*macs+c": [total, macs, one],
             "a*sum+e*params+m*macs+c": [total, params, macs, one]}
    fit, held = (frame["split"] == "fit").to_numpy(), (frame["split"] == "heldout").to_numpy()
    out = {}
    for name, cols in forms.items():
        X = np.stack(cols, axis=1)
        coef, *_ = np.linalg.lstsq(X[fit], y[fit], rcond=None)
        out[name] = agreement((X @ coef)[held], y[held])
    return out


def transfer(table: LatencyTable, other: LatencyTable) -> dict:
    """``other``'s predictions against ``table``'s own end-to-end measurements (its validation networks)."""
    if other.space.signature() != table.space.signature():
        raise SystemExit(f"error: {other.path}: a table of another space ({other.space.name}) (compare tables of "
                         f"{table.space.name})")
    frame = pd.read_csv(Path(table.path).with_name(f"{table.device}.validation.csv"))
    pop = table.space.encode_many(table.space.parse_id(i) for i in frame["arch_id"])
    pred, meas = other.predict(pop), frame["measured_ms"].to_numpy()
    fit, held = (frame["split"] == "fit").to_numpy(), (frame["split"] == "heldout").to_numpy()
    scale = float(np.median(meas[fit] / pred[fit]))
    own_col = "table_corrected_ms" if table.meta["validation"]["uses_correction"] else "table_sum_ms"
    figures = {"from_device": other.device, "from_cpu": other.fingerprint.get("cpu_model"),
               "networks": int(held.sum()), **agreement(pred[held], meas[held]),
               "scale_fitted_on_fit_networks": scale, "rescaled": agreement(scale * pred[held], meas[held]),
               "own_table": agreement(frame[own_col].to_numpy()[held], meas[held])}
    theirs = Path(other.path).with_name(f"{other.device}.validation.csv")
    if theirs.exists():  # the same seeded validation networks timed on the other machine too
        t = pd.read_csv(theirs).set_index("arch_id")
        if set(frame["arch_id"]) <= set(t.index):
            there = t.loc[frame["arch_id"], "measured_ms"].to_numpy()
            figures["measured_here_vs_there_tau"] = float(kendalltau(meas[held], there[held]).statistic)
            figures["here_over_there_time_ratio"] = float(np.median(meas[held] / there[held]))
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="mobilenetv3_cifar")
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--granularity", default="stage")
    ap.add_argument("--validate", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--target-ms", type=float, default=2.0)
    ap.add_argument("--spread-tol", type=float, default=0.10)
    ap.add_argument("--out-root", default=str(ROOT / "latency_tables"))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--transfer-from", help="a table of this space measured elsewhere (its device name, in "
                                            "latency_tables/): how well it predicts this machine")
    a = ap.parse_args()
    space = SearchSpace.load(a.space)
    protocol = Protocol(rounds=a.rounds, target_s=a.target_ms / 1e3, spread_tol=a.spread_tol)
    table = profile(space, a.device, granularity=a.granularity, out_root=a.out_root, protocol=protocol, force=a.force)
    t0 = time.time()
    if a.validate:  # the table exists now: this call only validates it
        table = profile(space, a.device, out_root=a.out_root, protocol=protocol, validate=a.validate)
    print(describe(table))
    v = table.meta.get("validation") or {}
    figures = {"space": a.space, "device": a.device, "granularity": table.granularity,
               "entries": int(table.meta["entries"]), "wall_time_s": table.meta["wall_time_s"],
               "validation_wall_time_s": round(time.time() - t0, 1) if a.validate else None,
               "validation": v, "correction": table.meta.get("correction"), "fingerprint": table.fingerprint}
    if v:
        figures["correction_alternatives"] = correction_alternatives(table)
    if a.transfer_from:
        if not v:
            raise SystemExit(f"error: {table.path}: not validated yet (give --validate N with --transfer-from)")
        figures["transfer"] = transfer(table, LatencyTable.load(ROOT / "latency_tables" / a.space /
                                                                f"{a.transfer_from}.csv"))
        print("transfer:", figures["transfer"])
    write_result(f"profile_{a.space}_{a.device}", figures)


if __name__ == "__main__":
    main()
