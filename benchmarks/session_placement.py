"""How ONNX Runtime timings on this machine depend on what else is alive and on the cache. The validation
networks of a table, timed with the engine's protocol (ratios to the table's reference model, interleaved,
shuffled rounds), each timing either ``cold`` (engine v1: timed from whatever the cache held) or ``warm``
(engine v2: one untimed run first):

* ``order``: sessions created in list order, then in reverse order, then in list order again (one process).
  If creation order matters, the ratio forward/reverse trends with position; forward/forward2 does not.
* ``regime``: all networks' sessions alive at once (a chunk of 80, as validation times them) or one at a time
  (a chunk of 1, as a deployed network runs); two timings each: their agreement, their mean, and how well
  the table (its plain sum, with a correction fitted on the first 30 networks) predicts the other 50.
* ``copies``: two timings of every network, each with its own sessions in random order, with K sessions per
  network (rounds spread over them): how far the two timings disagree for each K.

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
from nas.latency.entries import entry_counts
from nas.latency.profile import Protocol, Timer, agreement, network_items, table_reference, validation_sample
from nas.latency.table import LatencyTable, apply_correction, fit_correction
from nas.space import SearchSpace


def run(runner, n, warm):
    if warm:
        runner(1)
    return runner(n)


def timed(keys, runners, ns, timer, rounds, rng, warm, copies=1):
    """Median ratio to the reference per key; round r uses copy r % copies of each key's sessions."""
    ratios = {k: [] for k in keys}
    before = run(timer.reference, timer.ref_n, warm)
    for r in range(rounds):
        for i in rng.permutation(len(keys)):
            k = keys[i]
            t = run(runners[(k, r % copies)], ns[k], warm)
            after = run(timer.reference, timer.ref_n, warm)
            ratios[k].append(t / (0.5 * (before + after)))
            before = after
    return np.array([np.median(ratios[k]) for k in keys])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="mobilenetv3_cifar")
    ap.add_argument("--device", default="xeon-ort-1t", help="a table measured on this machine")
    ap.add_argument("--networks", type=int, default=80)
    ap.add_argument("--fit-networks", type=int, default=30)
    ap.add_argument("--copies", default="1,2,3")
    ap.add_argument("--repeats", type=int, default=2, help="measurements of each copies setting")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    space = SearchSpace.load(a.space)
    table = LatencyTable.find(space, a.device)
    fp, protocol = table.fingerprint, Protocol(**table.meta["protocol"])
    timer = Timer(space, make_backend(fp["backend"], fp["threads"]), fp["batch"], protocol,
                  reference=table_reference(table))
    pop = validation_sample(space, a.networks, 12345)
    items = network_items(space, pop, fp["batch"])
    keys = [it.key for it in items]
    model = {it.key: onnx_bytes(it.build(), it.input_shape) for it in items}
    shapes = {it.key: it.input_shape for it in items}
    rounds, rng, ref_ms = protocol.rounds, np.random.default_rng(0), float(table.meta["reference"]["median_ms"])

    def create(slots):
        runners = {}
        for slot in slots:  # slot = (network, copy)
            runners[slot] = engine.ort_runner(model[slot[0]], shapes[slot[0]], fp["threads"])
            engine.warm_up(runners[slot])
        return runners

    def measure(order, warm, chunk=None, copies=1):
        """One timing of every network: sessions of ``chunk`` networks alive at a time (default: all)."""
        out = {}
        chunk = chunk or len(order)
        for s in range(0, len(order), chunk):
            part = order[s:s + chunk]
            slots = [(k, c) for k in part for c in range(copies)]
            runners = create([slots[i] for i in rng.permutation(len(slots))] if copies > 1 else
                             [(k, 0) for k in part])
            ns = {k: engine.calibrate(runners[(k, 0)], protocol.target_s) for k in part}
            out.update(zip(part, timed(part, runners, ns, timer, max(rounds, copies), rng, warm, copies)))
        return np.array([out[k] for k in keys])

    fifths = lambda x: [round(float(v.mean()), 4) for v in np.array_split(x, 5)]  # noqa: E731
    pos = np.arange(len(keys))
    order = {}
    for warm in (False, True):
        f, r, f2 = measure(keys, warm), measure(keys[::-1], warm), measure(keys, warm)
        order["warm" if warm else "cold"] = {
            "forward_over_reverse_by_fifth": fifths(f / r), "forward_over_forward2_by_fifth": fifths(f / f2),
            "spearman_position_vs_forward_over_reverse": float(spearmanr(pos, f / r).statistic),
            "spearman_position_vs_forward_over_forward2": float(spearmanr(pos, f / f2).statistic)}
        print("order", order, flush=True)

    plain, counts = table.predict_sum(pop), entry_counts(space, pop, table.granularity)
    fit = pos < a.fit_networks
    regime = {}
    for chunk in (len(keys), 1):
        for warm in (False, True):
            shuffled = [keys[i] for i in rng.permutation(len(keys))]
            x, y = measure(shuffled, warm, chunk), measure(shuffled, warm, chunk)
            ms = 0.5 * (x + y) * ref_ms
            corr = fit_correction(plain[fit], counts[fit], ms[fit])
            name = f"{'alone' if chunk == 1 else f'{chunk}_alive'}_{'warm' if warm else 'cold'}"
            regime[name] = {"mean_ms": float(ms.mean()), "table_sum_over_measured": float(np.mean(plain / ms)),
                            "two_timings_within_10pct": float(np.mean(np.abs(x / y - 1) <= 0.10)),
                            "table_heldout": agreement(apply_correction(corr, plain, counts)[~fit], ms[~fit])}
            print(name, regime[name], flush=True)

    copies = {}
    for k in map(int, a.copies.split(",")):
        runs = []
        for _ in range(a.repeats):
            x, y = measure(keys, True, copies=k), measure(keys, True, copies=k)
            runs.append({"sd_log_ratio": float(np.std(np.log(x / y))),
                         "share_within_10pct": float(np.mean(np.abs(x / y - 1) <= 0.10))})
        copies[str(k)] = {"rounds": max(rounds, k), "runs": runs}
        print("copies", k, runs, flush=True)
    name = re.sub(r"[^a-z0-9]+", "-", engine.cpu_model().lower()).strip("-")
    write_result(f"session_placement_{name}", {
        "space": a.space, "device": a.device, "table_engine_version": fp.get("engine_version"),
        "networks": len(keys), "fit_networks": a.fit_networks, "protocol": table.meta["protocol"],
        "order": order, "regime": regime, "copies_warm": copies})


if __name__ == "__main__":
    main()
