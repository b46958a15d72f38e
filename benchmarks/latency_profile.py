"""Profile a space on this machine into latency_tables/, validate it, and record the figures.

    python benchmarks/latency_profile.py --space mobilenetv3_cifar --device cpu-ort-1t --validate 80

Writes benchmarks/results/profile_<space>_<device>.json with wall_time_s, entries and validation.
"""
from __future__ import annotations

import argparse
import time

from _common import ROOT, write_result

from nas.latency.profile import Protocol, describe, profile
from nas.space import SearchSpace


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
    a = ap.parse_args()
    space = SearchSpace.load(a.space)
    t0 = time.time()
    table = profile(space, a.device, granularity=a.granularity, out_root=a.out_root,
                    protocol=Protocol(rounds=a.rounds, target_s=a.target_ms / 1e3, spread_tol=a.spread_tol), validate=a.validate, force=a.force)
    print(describe(table))
    v = table.meta["validation"] or {}
    write_result(f"profile_{a.space}_{a.device}", {
        "space": a.space, "device": a.device, "granularity": table.granularity,
        "entries": int(table.meta["entries"]), "wall_time_s": table.meta["wall_time_s"],
        "validation_wall_time_s": round(time.time() - t0 - table.meta["wall_time_s"], 1),
        "validation": v, "correction": table.meta.get("correction"), "fingerprint": table.fingerprint})


if __name__ == "__main__":
    main()
