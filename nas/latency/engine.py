"""Drift-compensated latency measurement. Standalone: needs only the standard library, numpy and onnxruntime.

This file is also the runner of a remote-device bundle (``nas profile --export-bundle``): it is copied
there verbatim as ``run_bundle.py``, so the device and this machine time with the same protocol.

Protocol (why: on a shared host, timings drift by 15-60% within minutes, so absolute timings taken
minutes apart do not add up):

* Entries are timed in chunks; inside a chunk every round visits all entries in a fresh random order.
* Each timing of an entry sits between two timings of one fixed *reference* model
  (R E1 R E2 R ...), and is recorded as the ratio ``E / mean(R before, R after)``.
* Every timing is preceded by one untimed run of the same model, so that it measures steady-state
  inference (weights in cache, as a deployed network runs), not how much of a chunk's other models evicted
  it (benchmarks/session_placement.py on a 2-vCPU Intel VM: without it, networks timed among 80 others ran 15%
  slower than alone, and two timings of a network agreed within 10% for 86% of networks; with it, 2% and 97.5%).
* An entry's result is the median ratio over rounds; entries whose ratios spread more than
  ``spread_tol`` get extra rounds. Ratios become milliseconds through one reference time (the median
  of all reference timings of the profile), so a table is internally consistent even if the machine
  was faster at one moment than another.
* One timing is the mean of ``n`` back-to-back runs, with ``n`` chosen so that it lasts ``target_s``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Iterable, Optional

import numpy as np

ENGINE_VERSION = 2  # 2: an untimed run before every timing (steady state); 1 timed from whatever the cache held
Runner = Callable[[int], float]  # runner(n) -> mean seconds per run over n back-to-back runs


# ---------------------------------------------------------------------- runners
def ort_session(model: Any, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Busy-waiting pool threads make multi-thread timings erratic on small shared machines (measured on a
    # 2-vCPU VM: ratios spread 40x with spinning, 5-20% without); one thread has no pool to spin.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads == 1 else "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_runner(model: Any, input_shape: Iterable[int], threads: int, seed: int = 0) -> Runner:
    """A runner for an ONNX model (bytes or path) on ONNX Runtime's CPU provider."""
    sess = ort_session(model, threads)
    name = sess.get_inputs()[0].name
    feed = {name: np.random.default_rng(seed).standard_normal(tuple(input_shape)).astype(np.float32)}
    run = sess.run

    def runner(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            run(None, feed)
        return (time.perf_counter() - t0) / n

    runner.session = sess  # keep the session alive as long as the runner
    return runner


def warm_up(runner: Runner, min_runs: int = 5, min_s: float = 0.01) -> float:
    """Run until both ``min_runs`` and ``min_s`` are reached; return the last per-run time."""
    t_end = time.perf_counter() + min_s
    per = runner(min_runs)
    while time.perf_counter() < t_end:
        per = runner(1)
    return per


def calibrate(runner: Runner, target_s: float) -> int:
    per = min(runner(1) for _ in range(3))
    return max(1, int(round(target_s / max(per, 1e-7))))


# ---------------------------------------------------------------------- measurement
class Measurement:
    """Ratios (entry / reference) of one entry over rounds, with the reference times beside them."""

    __slots__ = ("key", "ratios", "ref_s", "n")

    def __init__(self, key: str, n: int):
        self.key, self.ratios, self.ref_s, self.n = key, [], [], n

    def spread(self) -> float:
        r = np.asarray(self.ratios)
        return float(np.percentile(r, 90) / np.percentile(r, 10) - 1.0) if len(r) > 1 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "ratios": [round(x, 6) for x in self.ratios],
                "ref_s": [round(x, 9) for x in self.ref_s], "n": self.n}


def measure_chunk(keys: list[str], make_runner: Callable[[str], Runner], reference: Runner, ref_n: int,
                  rounds: int, rng: np.random.Generator, target_s: float = 0.002,
                  spread_tol: float = 0.10, extra_rounds: Optional[int] = None,
                  on_round: Optional[Callable[[int], None]] = None) -> list[Measurement]:
    """Measure ``keys`` interleaved with ``reference`` over ``rounds`` shuffled rounds.

    Sessions are created in a random order too: when a session is made changes its speed (measured on a 2-vCPU
    Intel VM, timed without the untimed run: the first fifth of 80 networks created ran 17% slower, the last
    fifth 10% faster, than in reverse order), so list order would bias entries by their position in the list."""
    runners, results = {}, {}
    for k in (keys[i] for i in rng.permutation(len(keys))):
        r = make_runner(k)
        warm_up(r)
        runners[k] = r
        results[k] = Measurement(k, calibrate(r, target_s))
    gc_was = gc.isenabled()
    gc.disable()
    try:
        _rounds(keys, runners, results, reference, ref_n, rounds, rng, on_round)
        noisy = [k for k in keys if results[k].spread() > spread_tol]
        if noisy:
            _rounds(noisy, runners, results, reference, ref_n, extra_rounds or rounds, rng, None)
    finally:
        if gc_was:
            gc.enable()
    return [results[k] for k in keys]


def _steady(runner: Runner, n: int) -> float:
    """One untimed run, then the timed ``n``: the timing starts from the model's own weights in cache."""
    runner(1)
    return runner(n)


def _rounds(keys, runners, results, reference, ref_n, rounds, rng, on_round) -> None:
    for _ in range(rounds):
        order = rng.permutation(len(keys))
        before = _steady(reference, ref_n)
        for i in order:
            m = results[keys[i]]
            t = _steady(runners[keys[i]], m.n)
            after = _steady(reference, ref_n)
            ref = 0.5 * (before + after)
            m.ratios.append(t / ref)
            m.ref_s.append(ref)
            before = after
        if on_round:
            on_round(len(keys))


def summarise(m: dict[str, Any], ref_ms: float) -> dict[str, float]:
    r = np.asarray(m["ratios"], dtype=np.float64) * ref_ms
    return {"median_ms": float(np.median(r)), "p10_ms": float(np.percentile(r, 10)),
            "p90_ms": float(np.percentile(r, 90)), "runs": int(len(r) * m["n"])}


def reference_ms(measurements: Iterable[dict[str, Any]]) -> float:
    """The profile's reference time: the median of every reference timing it made, in ms."""
    refs = [x for m in measurements for x in m["ref_s"]]
    return float(np.median(refs) * 1e3) if refs else float("nan")


# ---------------------------------------------------------------------- state files
def load_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a partial run; a torn line (kill -9 during a write) is skipped, the records after it kept."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def append_jsonl(path: str, records: Iterable[dict[str, Any]]) -> None:
    """Append one line per record. After a torn last line (a kill mid-write) a newline comes first: the new
    records must not continue that line, or they would be unreadable with it."""
    torn = False
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        if torn:
            f.write("\n")
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------- environment
def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
            value = line.split(":", 1)[1].strip()
            if value and not value.isdigit():
                return value
    return platform.processor() or platform.machine()


def fingerprint(device: str, backend: str, backend_version: str, provider: str, threads: int,
                batch: int) -> dict[str, Any]:
    """What makes two timings comparable. Resumed and imported results must match it."""
    return {"device": device, "cpu_model": cpu_model(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "backend": backend, "backend_version": backend_version,
            "execution_provider": provider, "threads": int(threads), "batch": int(batch),
            "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "intra_op_spinning": int(threads) == 1, "engine_version": ENGINE_VERSION}


COMPARED_FINGERPRINT_KEYS = ("device", "cpu_model", "machine", "backend", "backend_version",
                             "execution_provider", "threads", "batch", "engine_version")


def fingerprint_mismatch(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in COMPARED_FINGERPRINT_KEYS if a.get(k) != b.get(k)]


# ---------------------------------------------------------------------- bundle runner
def run_bundle(bundle: str, rounds: Optional[int] = None, quiet: bool = False) -> str:
    """Time every model of a bundle on this device; resumable. Writes results.jsonl and device.json."""
    import onnxruntime as ort

    with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    p = manifest["protocol"]
    rounds = rounds or p["rounds"]
    fp = fingerprint(manifest["device"], "onnxruntime", ort.__version__, "CPUExecutionProvider",
                     p["threads"], p["batch"])
    dev_path = os.path.join(bundle, "device.json")
    if os.path.exists(dev_path):
        with open(dev_path, encoding="utf-8") as f:
            old = json.load(f)
        diff = fingerprint_mismatch(old, fp)
        if diff:
            sys.exit(f"error: {dev_path}: results in this bundle come from another environment ({'; '.join(diff)}) "
                     f"(delete results.jsonl and device.json to start over)")
        fp["elapsed_s"] = float(old.get("elapsed_s", 0.0))
    else:
        fp["elapsed_s"] = 0.0
    write_json_atomic(dev_path, fp)
    res_path = os.path.join(bundle, "results.jsonl")
    done = {r["key"] for r in load_jsonl(res_path)}
    entries = {e["key"]: e for e in manifest["entries"]}
    todo = [k for k in entries if k not in done]
    ref = manifest["reference"]
    reference = ort_runner(os.path.join(bundle, ref["file"]), ref["input_shape"], p["threads"])
    warm_up(reference, min_s=0.2)
    ref_n = calibrate(reference, p["target_s"])
    rng = np.random.default_rng(p["seed"] + len(done))
    chunk = p["chunk"]
    t0 = time.time()
    for start in range(0, len(todo), chunk):
        keys = todo[start:start + chunk]
        t_chunk = time.time()

        def make(k):
            e = entries[k]
            return ort_runner(os.path.join(bundle, e["file"]), e["input_shape"], p["threads"])

        ms = measure_chunk(keys, make, reference, ref_n, rounds, rng, p["target_s"], p["spread_tol"])
        append_jsonl(res_path, [m.to_json() for m in ms])
        fp["elapsed_s"] += time.time() - t_chunk
        write_json_atomic(dev_path, fp)
        if not quiet:
            n_done = len(done) + start + len(keys)
            print(f"{n_done}/{len(entries)} entries, {time.time() - t0:.0f}s", flush=True)
    return res_path


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="Time the models of an hwnas latency bundle on this device.")
    ap.add_argument("bundle", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    out = run_bundle(args.bundle, args.rounds, args.quiet)
    print(f"done: {out}; copy the bundle folder back and run: nas profile --import-results <bundle>")


if __name__ == "__main__":
    main()
