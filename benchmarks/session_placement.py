"""Does where an ONNX Runtime session lands in memory change its measured speed? The validation networks of a
table, timed with the engine's protocol (ratios to the table's reference model, interleaved, shuffled rounds):

* ``order``: sessions created in list order, then in reverse order, then in list order again (one process).
  If creation order matters, the ratio forward/reverse trends with position; forward/forward2 does not.
* ``copies``: two timings of every network, each with its own sessions created in random order, with K
  sessions per network (the rounds spread over them): how far the two timings disagree for each K.

    python benchmarks/session_placement.py --device xeon-ort-1t

Writes benchmarks/results/session_placement_<cpu>.json. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import re
import warnings

import numpy as np
from _common import write_result
from scipy.stats import spearmanr

from nas.export import onnx_bytes
from nas.latency import engine
from nas.latency.backends import make_backend
from nas.latency.profile import Protocol, Timer, network_items, table_reference, validation_sample
from nas.latency.table import LatencyTable
from nas.space import SearchSpace


def timed(keys, runners, ns, timer, rounds, rng, copies=1):
    """Median ratio to the reference per key; round r uses copy r % copies of each key's sessions."""
    ratios = {k: [] for k in keys}
    before = timer.reference(timer.ref_n)
    for r in range(rounds):
        for i in rng.permutation(len(keys)):
            k = keys[i]
            t = runners[(k, r % copies)](ns[k])
            after = timer.reference(timer.ref_n)
            ratios[k].append(t / (0.5 * (before + after)))
            before = after
    return np.array([np.median(ratios[k]) for k in keys])


def create(order, model, shapes, threads):
    runners = {}
    for key in order:  # key = (network, copy)
        runners[key] = engine.ort_runner(model[key[0]], shapes[key[0]], threads)
        engine.warm_up(runners[key])
    return runners


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="mobilenetv3_cifar")
    ap.add_argument("--device", default="xeon-ort-1t", help="a table measured on this machine")
    ap.add_argument("--networks", type=int, default=80)
    ap.add_argument("--copies", default="1,2,3,7")
    ap.add_argument("--repeats", type=int, default=2, help="measurements of each copies setting")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    space = SearchSpace.load(a.space)
    table = LatencyTable.find(space, a.device)
    fp, protocol = table.fingerprint, Protocol(**table.meta["protocol"])
    timer = Timer(space, make_backend(fp["backend"], fp["threads"]), fp["batch"], protocol,
                  reference=table_reference(table))
    items = network_items(space, validation_sample(space, a.networks, 12345), fp["batch"])
    keys = [it.key for it in items]
    model = {it.key: onnx_bytes(it.build(), it.input_shape) for it in items}
    shapes = {it.key: it.input_shape for it in items}
    threads, rounds, rng = fp["threads"], protocol.rounds, np.random.default_rng(0)

    def once(order):
        runners = create([(k, 0) for k in order], model, shapes, fp["threads"])
        ns = {k: engine.calibrate(runners[(k, 0)], protocol.target_s) for k in keys}
        return timed(keys, runners, ns, timer, rounds, rng)

    f, r, f2 = once(keys), once(keys[::-1]), once(keys)
    groups = lambda x: [round(float(v.mean()), 4) for v in np.array_split(x, 5)]  # noqa: E731
    pos = np.arange(len(keys))
    order = {"forward_over_reverse_by_fifth": groups(f / r), "forward_over_forward2_by_fifth": groups(f / f2),
             "spearman_position_vs_forward_over_reverse": float(spearmanr(pos, f / r).statistic),
             "spearman_position_vs_forward_over_forward2": float(spearmanr(pos, f / f2).statistic)}
    print(order)

    copies = {}
    for k in map(int, a.copies.split(",")):
        n_rounds = max(rounds, k)
        runs = []
        for _ in range(a.repeats):
            pair = []
            for _ in range(2):
                slots = [(key, c) for key in keys for c in range(k)]
                runners = create([slots[i] for i in rng.permutation(len(slots))], model, shapes, threads)
                ns = {key: engine.calibrate(runners[(key, 0)], protocol.target_s) for key in keys}
                pair.append(timed(keys, runners, ns, timer, n_rounds, rng, k))
            ratio = pair[0] / pair[1]
            runs.append({"sd_log_ratio": float(np.std(np.log(ratio))),
                         "share_within_10pct": float(np.mean(np.abs(ratio - 1) <= 0.10))})
        copies[str(k)] = {"rounds": n_rounds, "runs": runs}
        print(k, runs, flush=True)
    name = re.sub(r"[^a-z0-9]+", "-", engine.cpu_model().lower()).strip("-")
    write_result(f"session_placement_{name}", {"space": a.space, "device": a.device, "networks": len(keys),
                                                "protocol": table.meta["protocol"], "order": order,
                                                "copies": copies})


if __name__ == "__main__":
    main()
