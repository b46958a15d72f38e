"""Does it matter which device's table the search uses? On this machine, for a few latency budgets, the most
accurate network of the front searched with this machine's table against that of the front searched with
another machine's table (its budget scaled by the two tables' median ratio, as one would without a table for
this machine); both measured end to end here.

    python benchmarks/device_transfer.py --here xeon-ort-1t --there cpu-ort-1t --budgets 0.15,0.2,0.25,0.3,0.4

Writes benchmarks/results/device_transfer_<here>_from_<there>.json: per budget both picks (id, predicted
accuracy, measured ms, whether they meet the budget), and the totals.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import write_result

from nas import api
from nas.latency.engine import cpu_model
from nas.latency.profile import measure_networks
from nas.latency.table import LatencyTable


def best_under(front, column: str, bound: float) -> dict | None:
    ok = front[front[column] <= bound]
    if ok.empty:
        return None
    row = ok.sort_values("accuracy").iloc[-1]
    return {"arch_id": row["arch_id"], "accuracy": float(row["accuracy"]), "table_ms": float(row[column])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="mobilenetv3_cifar")
    ap.add_argument("--here", required=True, help="this machine's table (device name)")
    ap.add_argument("--there", required=True, help="another machine's table (device name)")
    ap.add_argument("--budgets", default="0.15,0.2,0.25,0.3,0.4", help="ms on this machine")
    ap.add_argument("--evaluations", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    budgets = [float(b) for b in a.budgets.split(",")]
    space = api.load_space(a.space)
    here = LatencyTable.find(space, a.here)
    there = LatencyTable.find(space, a.there)
    if here.fingerprint.get("cpu_model") != cpu_model():
        raise SystemExit(f"error: {here.path}: measured on {here.fingerprint.get('cpu_model')}, not this CPU "
                         f"({cpu_model()}) (run on the machine --here describes)")
    sample = space.sample(np.random.default_rng(a.seed), 2000)
    ratio = float(np.median(here.predict(sample) / there.predict(sample)))
    with tempfile.TemporaryDirectory() as tmp:
        fronts = {name: api.search(objectives=f"accuracy,latency@{dev}", evaluations=a.evaluations, seed=a.seed,
                                   out=Path(tmp) / name, quiet=True).pareto
                  for name, dev in (("here", a.here), ("there", a.there))}
        rows = []
        for b in budgets:
            rows.append({"budget_ms": b, "here_table": best_under(fronts["here"], f"latency@{a.here}", b),
                         "there_table": best_under(fronts["there"], f"latency@{a.there}", b / ratio)})
        ids = sorted({r[k]["arch_id"] for r in rows for k in ("here_table", "there_table") if r[k]})
        measured = dict(zip(ids, measure_networks(here, [space.parse_id(i) for i in ids], Path(tmp) / "m.jsonl",
                                                  "measure picks here", quiet=False)))
    for r in rows:
        for k in ("here_table", "there_table"):
            if r[k]:
                r[k]["measured_ms"] = float(measured[r[k]["arch_id"]])
                r[k]["meets_budget"] = bool(r[k]["measured_ms"] <= r["budget_ms"])
        print(r)
    picks = [r for r in rows if r["here_table"] and r["there_table"]]
    summary = {k: {"budgets_met": int(sum(r[k]["meets_budget"] for r in picks)),
                   "mean_accuracy": float(np.mean([r[k]["accuracy"] for r in picks])),
                   "mean_measured_over_budget": float(np.mean([r[k]["measured_ms"] / r["budget_ms"] for r in picks]))}
               for k in ("here_table", "there_table")}
    write_result(f"device_transfer_{a.here}_from_{a.there}",
                 {"space": a.space, "here": a.here, "here_cpu": cpu_model(), "there": a.there,
                  "there_cpu": there.fingerprint.get("cpu_model"), "there_to_here_ratio": ratio,
                  "evaluations": a.evaluations, "seed": a.seed, "budgets": rows, "summary": summary})
    print(summary)


if __name__ == "__main__":
    main()
