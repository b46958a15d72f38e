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
from _common import ROOT, write_result

from nas.latency.profile import Protocol, agreement, describe, profile
from nas.latency.table import LatencyTable
from nas.space import SearchSpace


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
    own = agreement(frame["table_corrected_ms"].to_numpy()[held], meas[held])
    return {"from_device": other.device, "from_cpu": other.fingerprint.get("cpu_model"),
            "networks": int(held.sum()), **agreement(pred[held], meas[held]),
            "scale_fitted_on_fit_networks": scale, "rescaled": agreement(scale * pred[held], meas[held]),
            "own_table": own}


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
    t0 = time.time()
    table = profile(space, a.device, granularity=a.granularity, out_root=a.out_root,
                    protocol=Protocol(rounds=a.rounds, target_s=a.target_ms / 1e3, spread_tol=a.spread_tol), validate=a.validate, force=a.force)
    print(describe(table))
    v = table.meta["validation"] or {}
    figures = {"space": a.space, "device": a.device, "granularity": table.granularity,
               "entries": int(table.meta["entries"]), "wall_time_s": table.meta["wall_time_s"],
               "validation_wall_time_s": round(time.time() - t0 - table.meta["wall_time_s"], 1),
               "validation": v, "correction": table.meta.get("correction"), "fingerprint": table.fingerprint}
    if a.transfer_from:
        figures["transfer"] = transfer(table, LatencyTable.load(ROOT / "latency_tables" / a.space /
                                                                f"{a.transfer_from}.csv"))
        print("transfer:", figures["transfer"])
    write_result(f"profile_{a.space}_{a.device}", figures)


if __name__ == "__main__":
    main()
