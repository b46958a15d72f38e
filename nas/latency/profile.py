"""``nas profile``: measure a space's latency table on this device, validate it, or go through a bundle.

Everything measured is appended to a partial-results file as soon as a chunk finishes, so an
interrupted profile (Ctrl-C, kill -9) continues where it stopped when the same command runs again.
Results from another environment (fingerprint) are refused rather than mixed.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import __version__
from ..blocks import build_model
from ..errors import UserError
from ..io import read_json, write_bytes, write_csv, write_json, write_text
from ..progress import progress_bar
from ..space import Arch, SearchSpace, carried_space
from . import engine
from .backends import Backend, make_backend, resolve_device
from .entries import GRANULARITIES, KEY_COLUMNS, Entry, entry_counts, enumerate_entries
from .table import VALUE_COLUMNS, LatencyTable, apply_correction, fit_correction, meta_path, table_path

REFERENCE_METHOD = ("each timing divided by the mean of a fixed reference model timed right before and after it, "
                    "entries interleaved in random order over rounds; median ratio x the profile's median "
                    "reference time")


@dataclass(frozen=True)
class Protocol:
    rounds: int = 7
    chunk: int = 150
    target_s: float = 0.002
    spread_tol: float = 0.10
    seed: int = 0


@dataclass(frozen=True)
class Item:
    """Something to time: a key, a module factory and its input shape."""

    key: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


def reference_entry(space: SearchSpace) -> Entry:
    """A mid-sized stage option of the middle stage: the fixed model every timing is divided by."""
    s = len(space.stages) // 2
    st = space.stages[s]
    mid = lambda xs: xs[len(xs) // 2]  # noqa: E731
    cin, hin, stride = space.context(s, space.n_contexts(s) // 2)
    return Entry("stage", s, cin, hin, stride, mid(st.depth), mid(st.kernel), mid(st.expansion),
                 mid(st.channels), False, st.act[0])


def table_reference(table: LatencyTable) -> Entry:
    """The reference model ``table``'s times are ratios to: measurements meant to sit on its scale (validation,
    extension, re-measured fronts) must time against it, even where the space was edited since and its own
    reference would now be another model."""
    return Entry.from_key(table.meta["reference"]["key"])


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build()


# ---------------------------------------------------------------------- resumable measurement
class PartialResults:
    """``<name>.partial.jsonl`` (one record per measured item) + ``<name>.partial.json`` (header)."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path, self.header_path = path, path.with_suffix(".json")
        self.header = header
        if self.header_path.exists():
            old = read_json(self.header_path, "partial profile header")
            diff = engine.fingerprint_mismatch(old.get("fingerprint", {}), header["fingerprint"])
            if diff:
                raise UserError(self.path, f"partial results come from another environment ({'; '.join(diff)})",
                                "run on the original machine, or delete the .partial files to start over")
            if old.get("protocol") != header.get("protocol"):
                raise UserError(self.path, "partial results used other protocol settings",
                                "repeat the original options, or delete the .partial files")
            self.header["elapsed_s"] = float(old.get("elapsed_s", 0.0))
        else:
            self.header["elapsed_s"] = 0.0
        self.records = {r["key"]: r for r in engine.load_jsonl(str(self.path))}

    def add(self, records: list[dict[str, Any]], elapsed_s: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        engine.append_jsonl(str(self.path), records)
        self.records.update({r["key"]: r for r in records})
        self.header["elapsed_s"] += elapsed_s
        write_json(self.header_path, self.header)

    def remove(self) -> None:
        for p in (self.path, self.header_path):
            p.unlink(missing_ok=True)


class Timer:
    """A backend plus its warmed-up reference runner; measures items in interleaved chunks."""

    def __init__(self, space: SearchSpace, backend: Backend, batch: int, protocol: Protocol,
                 reference: Optional[Entry] = None):
        self.space, self.backend, self.batch, self.protocol = space, backend, batch, protocol
        ref = reference or reference_entry(space)
        self.reference_key = ref.key
        self.reference = backend.runner(_seeded(lambda: ref.build(space)), ref.input_shape(batch, space))
        engine.warm_up(self.reference, min_s=0.2)
        self.ref_n = engine.calibrate(self.reference, protocol.target_s)

    def measure(self, items: list[Item], partial: PartialResults, desc: str, quiet: bool = False) -> None:
        todo = [it for it in items if it.key not in partial.records]
        by_key = {it.key: it for it in items}
        rng = np.random.default_rng(self.protocol.seed + len(partial.records))
        p = self.protocol
        with progress_bar(quiet) as bar:
            task = bar.add_task(desc, total=len(items) * p.rounds, completed=(len(items) - len(todo)) * p.rounds)
            t0 = time.time()  # wall clock between checkpoints: exports, sessions and timing all count
            for start in range(0, len(todo), p.chunk):
                keys = [it.key for it in todo[start:start + p.chunk]]

                def make(key: str) -> engine.Runner:
                    it = by_key[key]
                    return self.backend.runner(_seeded(it.build), it.input_shape)

                ms = engine.measure_chunk(keys, make, self.reference, self.ref_n, p.rounds, rng, p.target_s,
                                          p.spread_tol, on_round=lambda n: bar.advance(task, n))
                now = time.time()
                partial.add([m.to_json() for m in ms], now - t0)
                t0 = now


def _header(space: SearchSpace, fp: dict[str, Any], granularity: str, protocol: Protocol, kind: str) -> dict:
    return {"kind": kind, "space": space.name, "space_signature": space.signature(), "granularity": granularity,
            "fingerprint": fp, "protocol": asdict(protocol)}


def entry_items(space: SearchSpace, entries: list[Entry], batch: int) -> list[Item]:
    return [Item(e.key, (lambda e=e: e.build(space)), e.input_shape(batch, space)) for e in entries]


def network_items(space: SearchSpace, pop: np.ndarray, batch: int, prefix: str = "") -> list[Item]:
    return arch_items(space.decode_many(pop), batch, prefix)


def arch_items(archs: list[Arch], batch: int, prefix: str = "") -> list[Item]:
    """Whole networks to time, keyed ``prefix + id``."""
    return [Item(prefix + a.id, (lambda a=a: build_model(a)),
                 (batch, a.frame.in_chans, a.frame.input_size, a.frame.input_size)) for a in archs]


def measured_elsewhere(table: LatencyTable) -> list[str]:
    """How ``table``'s fingerprint differs from this machine's (CPU, backend version, threads, batch, timing
    engine): empty when networks timed here land on its scale."""
    fp = table.fingerprint
    here = engine.fingerprint(table.device, fp["backend"], make_backend(fp["backend"], fp["threads"]).version,
                              fp["execution_provider"], fp["threads"], fp["batch"])
    return engine.fingerprint_mismatch(fp, here)


def check_measured_here(table: LatencyTable, where: str, fix: str, name: Optional[str] = None) -> None:
    """Refuse (naming ``where`` and ``fix``) to time networks against ``table`` (called ``name``, default its
    device) unless it was measured here: their timings would carry another machine's (or engine's) milliseconds."""
    diff = measured_elsewhere(table)
    if diff:
        raise UserError(where, f"table {name or table.device} was measured elsewhere or otherwise "
                        f"({'; '.join(diff)}), so networks cannot be measured against it here", fix)


def measure_networks(table: LatencyTable, archs: list[Arch], state: str | Path | None = None,
                     desc: str = "measure networks", quiet: bool = True) -> np.ndarray:
    """End-to-end ms of these networks (of ``table``'s frame, in its space or not) on this machine, on
    ``table``'s scale: timed with its protocol against its reference model. With ``state`` (a JSONL file) every
    timing is kept as it is made, so an interrupted call resumes. The caller checks that ``table`` was
    measured here (:func:`check_measured_here`)."""
    import tempfile
    from contextlib import ExitStack

    space, fp = table.space, table.fingerprint
    protocol = Protocol(**table.meta.get("protocol", {}))
    timer = Timer(space, make_backend(fp["backend"], fp["threads"]), fp["batch"], protocol,
                  reference=table_reference(table))
    items = arch_items(list(dict.fromkeys(archs)), fp["batch"])
    with ExitStack() as stack:
        path = Path(state) if state else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "m.jsonl"
        partial = PartialResults(path, {"fingerprint": fp, "protocol": table.meta.get("protocol")})
        timer.measure(items, partial, desc, quiet)
        ref_ms = float(table.meta["reference"]["median_ms"])
        return np.array([engine.summarise(partial.records[a.id], ref_ms)["median_ms"] for a in archs])


# ---------------------------------------------------------------------- profile
def profile(space: SearchSpace, device: str, backend: Optional[str] = None, threads: Optional[int] = None,
            batch: int = 1, granularity: Optional[str] = None, out_root: str | Path = "latency_tables",
            protocol: Protocol = Protocol(), validate: int = 0, fit_networks: int = 30, force: bool = False,
            quiet: bool = False) -> LatencyTable:
    """Measure (or finish measuring) the table of ``device`` for ``space``; optionally validate it.
    ``granularity``: of a new table (default ``stage``); an existing table keeps its own."""
    if granularity is not None and granularity not in GRANULARITIES:
        raise UserError("--granularity", f"unknown granularity {granularity!r}", f"use one of {GRANULARITIES}")
    if batch < 1:
        raise UserError("--batch", f"must be at least 1, got {batch}", "give a positive batch size")
    if validate:
        check_validation_size(validate, fit_networks)
    be = resolve_device(device, backend, threads)
    fp = engine.fingerprint(device, be.name, be.version, be.provider, be.threads, batch)
    csv = table_path(space.name, device, out_root)
    if csv.exists() and force:
        csv.unlink()
        meta_path(csv).unlink(missing_ok=True)
    table = _existing_table(csv, space, fp, be, batch, protocol, quiet, granularity) if csv.exists() else None
    timer = None
    if table is None:
        granularity = granularity or "stage"
        entries = enumerate_entries(space, granularity)
        partial = PartialResults(csv.with_name(f"{device}.partial.jsonl"),
                                 _header(space, fp, granularity, protocol, "table"))
        timer = Timer(space, be, batch, protocol)
        timer.measure(entry_items(space, entries, batch), partial, f"profile {space.name} on {device}", quiet)
        table = finish_table(space, device, granularity, fp, protocol, entries, partial.records,
                             partial.header["elapsed_s"], timer.reference_key, csv)
        partial.remove()
    if validate:
        timer = timer or Timer(space, be, batch, protocol, reference=table_reference(table))
        validate_table(table, timer, validate, fit_networks, quiet=quiet)
    return table


def _existing_table(csv: Path, space: SearchSpace, fp: dict[str, Any], be: Backend, batch: int,
                    protocol: Protocol, quiet: bool, granularity: Optional[str] = None) -> LatencyTable:
    table = LatencyTable.load(csv)
    diff = engine.fingerprint_mismatch(table.fingerprint, fp)
    if diff:
        raise UserError(csv, f"table was measured in another environment ({'; '.join(diff)})",
                        "name another --device, or pass --force to re-measure it here")
    if granularity and granularity != table.granularity:
        raise UserError(csv, f"holds a {table.granularity}-granularity table, not {granularity}",
                        "drop --granularity to use it, or add --force to re-measure it")
    if needs_extension(table, space):
        table = extend_table(table, space, be, batch, protocol, quiet)
    table.bind(space)
    return table


def needs_extension(table: LatencyTable, space: SearchSpace) -> bool:
    """``table`` was measured for an earlier version of ``space`` (or lacks entries it needs)."""
    return table.space_name == space.name and (
        table.meta.get("space_signature") not in (None, space.signature()) or bool(table.missing(space)))


def table_to_extend(space: SearchSpace, device: str, out_root: str | Path, force: bool) -> Optional[LatencyTable]:
    """This device's table under ``out_root`` where an edit of ``space`` left it incomplete (``force``: none)."""
    csv = table_path(space.name, device, out_root)
    if force or not csv.exists():
        return None
    table = LatencyTable.load(csv)
    return table if needs_extension(table, space) else None


def entries_to_extend(old: LatencyTable, space: SearchSpace) -> tuple[list[Entry], list[Entry]]:
    """The entries the (edited) space needs, and those of them ``old`` cannot give: the ones it lacks, and
    always the stem and the head (a stage entry's key fixes its module; the stem's and head's keys do not hold
    the frame, e.g. the stem width or the head's width, so an edit there keeps their keys)."""
    entries = enumerate_entries(space, old.granularity)
    have = {Entry.from_row(r).key for r in old.rows.to_dict("records")}
    return entries, [e for e in entries if e.key not in have or e.kind in ("stem", "head")]


def merge_extension(old: LatencyTable, space: SearchSpace, records: dict[str, dict], wall_time_s: float,
                    where: dict[str, Any]) -> LatencyTable:
    """``old`` plus the entries measured for the edited space (``records``: ratios to ``old``'s reference model),
    on ``old``'s scale; saved in place of ``old``. Validation and correction are cleared: they were fitted on
    networks of the space before the edit."""
    entries, missing = entries_to_extend(old, space)
    have = {Entry.from_row(r).key: r for r in old.rows.to_dict("records")}
    ref_ms = float(old.meta["reference"]["median_ms"])
    new = {e.key: _measured_row(e, records, ref_ms) for e in missing}
    rows = _table_rows([new[e.key] if e.key in new else have[e.key] for e in entries])
    session_ref = engine.reference_ms(records[e.key] for e in missing)
    meta = {**old.meta}
    _keep_in_history(meta)  # the figures of the table before the edit
    meta = {**meta, "space_signature": space.signature(), "entries": len(entries),
            "validation": None, "correction": None,
            "extensions": [*old.meta.get("extensions", []), {
                "date": _now(),
                "kept": len(entries) - len(missing), "measured": len(missing),
                "dropped": len(set(have) - {e.key for e in entries}), "wall_time_s": round(wall_time_s, 1),
                "session_reference_ms": session_ref if np.isfinite(session_ref) else None, **where}]}
    table = LatencyTable(rows, meta, Path(old.path))
    table.save()
    return table.bind(space)


def extend_table(old: LatencyTable, space: SearchSpace, be: Backend, batch: int, protocol: Protocol,
                 quiet: bool = False) -> LatencyTable:
    """The space was edited since ``old`` was measured here: time only what it lacks, against ``old``'s own
    reference model, so that no absolute timings of two sessions are compared. Resumable like a profile."""
    _, missing = entries_to_extend(old, space)
    ref = table_reference(old)
    header = {**_header(space, old.fingerprint, old.granularity, protocol, "extension"), "reference": ref.key}
    partial = PartialResults(Path(old.path).with_name(f"{old.device}.extension.partial.jsonl"), header)
    Timer(space, be, batch, protocol, reference=ref).measure(
        entry_items(space, missing, batch), partial, f"extend {space.name} table on {old.device}", quiet)
    table = merge_extension(old, space, partial.records, partial.header["elapsed_s"], {"source": "profile"})
    partial.remove()
    return table


def _measured_row(entry: Entry, records: dict[str, dict], ref_ms: float) -> dict[str, Any]:
    return {**entry.as_row(), **engine.summarise(records[entry.key], ref_ms)}


def _table_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)[[*KEY_COLUMNS, *VALUE_COLUMNS]]


def finish_table(space: SearchSpace, device: str, granularity: str, fp: dict[str, Any], protocol: Protocol,
                 entries: list[Entry], records: dict[str, dict], wall_time_s: float, reference_key: str,
                 csv: Path) -> LatencyTable:
    missing = [e.key for e in entries if e.key not in records]
    if missing:
        raise UserError(csv, f"{len(missing)} entries were not measured (e.g. {missing[0]})",
                        "run the same command again to finish")
    ref_ms = engine.reference_ms(records[e.key] for e in entries)
    rows = _table_rows([_measured_row(e, records, ref_ms) for e in entries])
    meta = {"space": space.name, "space_signature": space.signature(), "device": device,
            "granularity": granularity, "entries": len(entries), "fingerprint": fp,
            "date": _now(),
            "wall_time_s": round(wall_time_s, 1),
            "reference": {"key": reference_key, "median_ms": ref_ms, "method": REFERENCE_METHOD},
            "protocol": asdict(protocol), "toolkit_version": __version__, "validation": None,
            "correction": None}
    table = LatencyTable(rows, meta, csv)
    table.save(csv)
    return table.bind(space)


# ---------------------------------------------------------------------- validation
def agreement(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau

    rel = pred / meas - 1.0
    return {"mape": float(np.mean(np.abs(rel))), "mean_error": float(np.mean(rel)),
            "share_within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "kendall_tau": float(kendalltau(pred, meas).statistic)}


def validation_sample(space: SearchSpace, n: int, seed: int) -> np.ndarray:
    """``n`` distinct random networks (seeded)."""
    rng = np.random.default_rng(seed)
    pop = np.unique(space.sample(rng, n * 2), axis=0)
    return pop[rng.permutation(len(pop))[:n]]


def check_validation_size(n: int, fit_networks: int) -> None:
    """Before any timing: ``n`` validation networks must leave some held out of the correction's fit."""
    if fit_networks < 0 or n <= fit_networks:
        raise UserError("--validate", f"needs more than --fit-networks={fit_networks} networks, got {n}",
                        "raise --validate (e.g. 80) so that held-out networks remain")


def validate_table(table: LatencyTable, timer: Timer, n: int, fit_networks: int = 30, seed: int = 12345,
                   quiet: bool = False) -> dict[str, Any]:
    """Measure ``n`` random whole networks twice end to end and compare them with the table."""
    space = table.space
    check_validation_size(n, fit_networks)
    pop = validation_sample(space, n, seed)
    csv = Path(table.path)
    partial = PartialResults(csv.with_name(f"{table.device}.validation.partial.jsonl"),
                             _header(space, table.fingerprint, table.granularity, timer.protocol, "validation"))
    for tag in ("A:", "B:"):  # two independent passes: their agreement is the noise floor
        timer.measure(network_items(space, pop, timer.batch, tag), partial, f"validate pass {tag[0]}", quiet)
    report = record_validation(table, pop, partial.records, fit_networks)
    partial.remove()
    return report


def record_validation(table: LatencyTable, pop: np.ndarray, records: dict[str, dict],
                      fit_networks: int) -> dict[str, Any]:
    """Turn end-to-end records (keys ``A:<id>``/``B:<id>``) into the table's validation and correction."""
    space, ref_ms = table.space, float(table.meta["reference"]["median_ms"])
    ids = [a.id for a in space.decode_many(pop)]
    a = np.array([engine.summarise(records["A:" + i], ref_ms)["median_ms"] for i in ids])
    b = np.array([engine.summarise(records["B:" + i], ref_ms)["median_ms"] for i in ids])
    both = np.array([engine.summarise({"ratios": records["A:" + i]["ratios"] + records["B:" + i]["ratios"],
                                       "n": 1}, ref_ms)["median_ms"] for i in ids])
    plain = table.predict_sum(pop)
    counts = entry_counts(space, pop, table.granularity)
    fit, held = slice(0, fit_networks), slice(fit_networks, None)
    corr = fit_correction(plain[fit], counts[fit], both[fit])
    corrected = apply_correction(corr, plain, counts)
    plain_m, corr_m = agreement(plain[held], both[held]), agreement(corrected[held], both[held])
    corr["used"] = bool(corr_m["mape"] < plain_m["mape"])
    noise = float(np.mean(np.abs(a[held] / b[held] - 1.0) <= 0.10))
    chosen = corr_m if corr["used"] else plain_m
    _keep_in_history(table.meta)
    table.meta["validation"] = {"networks": int(len(ids) - fit_networks), "fit_networks": int(fit_networks),
                                **chosen, "noise_floor": noise, "uses_correction": corr["used"],
                                "plain_sum": plain_m, "corrected": corr_m,
                                "csv": f"{table.device}.validation.csv", "date": _now()}
    table.meta["correction"] = corr
    frame = pd.DataFrame({"arch_id": ids, "split": ["fit"] * fit_networks + ["heldout"] * (len(ids) - fit_networks),
                          "table_sum_ms": plain, "table_corrected_ms": corrected, "measured_ms": both,
                          "measured_a_ms": a, "measured_b_ms": b, "n_entries": counts})
    write_csv(Path(table.path).with_name(f"{table.device}.validation.csv"), frame)
    table.save()
    return table.meta["validation"]


HISTORY_KEYS = ("date", "networks", "share_within_10pct", "kendall_tau", "mape", "noise_floor", "uses_correction")


def _keep_in_history(meta: dict[str, Any]) -> None:
    """A re-validation replaces the table's validation (and correction, and CSV); the figures of the one it
    replaces stay in ``validation_history``, oldest first, so that drift over time or load stays visible."""
    previous = meta.get("validation")
    if previous:
        meta["validation_history"] = [*meta.get("validation_history", []),
                                      {k: previous.get(k) for k in HISTORY_KEYS}]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- remote bundles
def export_bundle(space: SearchSpace, device: str, bundle: str | Path, threads: int = 1, batch: int = 1,
                  granularity: Optional[str] = None, protocol: Protocol = Protocol(), validate: int = 0,
                  fit_networks: int = 30, quiet: bool = False, extends: Optional[LatencyTable] = None) -> Path:
    """Write ONNX files, a manifest and a standalone runner (Python + numpy + onnxruntime) to ``bundle``.
    ``extends``: this device's table of an earlier version of the space; the bundle then holds only what the
    edited space lacks, timed against that table's reference model, and its import extends it."""
    from ..export import onnx_bytes

    if validate:
        check_validation_size(validate, fit_networks)
    bundle = Path(bundle)
    models = bundle / "models"
    models.mkdir(parents=True, exist_ok=True)
    if extends and granularity and granularity != extends.granularity:
        raise UserError("--granularity", f"the {device} table being extended has {extends.granularity} granularity",
                        "drop --granularity, or add --force to export a full bundle")
    granularity = extends.granularity if extends else granularity or "stage"
    entries = entries_to_extend(extends, space)[1] if extends else enumerate_entries(space, granularity)
    items = entry_items(space, entries, batch)
    pop = validation_sample(space, validate, 12345) if validate else np.zeros((0, space.D), dtype=np.int64)
    for tag in ("A:", "B:"):
        items += network_items(space, pop, batch, tag)
    ref = table_reference(extends) if extends else reference_entry(space)
    manifest_entries, files = [], {}
    with progress_bar(quiet) as bar:
        task = bar.add_task("export bundle", total=len(items) + 1)
        ref_file = "models/reference.onnx"
        write_bytes(bundle / ref_file, onnx_bytes(_seeded(lambda: ref.build(space)), ref.input_shape(batch, space)))
        bar.advance(task)
        for i, it in enumerate(items):
            base = it.key[2:] if it.key[:2] in ("A:", "B:") else it.key
            if base not in files:
                files[base] = f"models/{len(files):06d}.onnx"
                path = bundle / files[base]
                if not path.exists():  # a rerun after an interruption keeps the files already written whole
                    write_bytes(path, onnx_bytes(_seeded(it.build), it.input_shape))
            manifest_entries.append({"key": it.key, "file": files[base], "input_shape": list(it.input_shape)})
            bar.advance(task)
    manifest = {"format": "hwnas-latency-bundle", "version": 1, "space": space.name,
                "space_signature": space.signature(), "space_config": space.config,
                "device": device, "granularity": granularity,
                "extends": {"table_signature": extends.meta.get("space_signature"),
                            "table_date": extends.meta.get("date"), "entries": len(entries)} if extends else None,
                "validation": {"networks": pop.tolist(), "fit_networks": fit_networks},
                "reference": {"key": ref.key, "file": ref_file, "input_shape": list(ref.input_shape(batch, space))},
                "protocol": {**asdict(protocol), "threads": threads, "batch": batch},
                "entries": manifest_entries}
    write_json(bundle / "manifest.json", manifest)
    write_bytes(bundle / "run_bundle.py", Path(engine.__file__).read_bytes())
    write_text(bundle / "README.txt",
               "hwnas latency bundle\n\nOn the target device (needs Python 3, numpy, onnxruntime):\n"
               "    python run_bundle.py            # resumable: run again after an interruption\n"
               "Then copy this folder back and run:\n    nas profile --import-results <this folder>\n")
    return bundle


def import_results(bundle: str | Path, out_root: str | Path = "latency_tables",
                   space: Optional[SearchSpace] = None, device: Optional[str] = None) -> LatencyTable:
    """Turn a bundle measured on a remote device into a table (and its validation, if it had networks);
    ``device``: name the table otherwise than the bundle does."""
    bundle = Path(bundle)
    manifest = read_json(bundle / "manifest.json", "bundle manifest")
    if manifest.get("format") != "hwnas-latency-bundle":
        raise UserError(bundle / "manifest.json", "not an hwnas latency bundle", "point at a folder made by --export-bundle")
    space = space or carried_space(manifest.get("space_config"), manifest["space"], str(bundle / "manifest.json"))
    if manifest["space_signature"] != space.signature():
        raise UserError(bundle, f"bundle was made for another version of space {space.name}",
                        "export a new bundle for the current space")
    fp_path = bundle / "device.json"
    if not fp_path.exists():
        raise UserError(bundle, "no results yet (device.json missing)", "run run_bundle.py on the device first")
    fp = read_json(fp_path, "bundle device fingerprint")
    records = {r["key"]: r for r in engine.load_jsonl(str(bundle / "results.jsonl"))}
    keys = [e["key"] for e in manifest["entries"]]
    missing = [k for k in keys if k not in records]
    if missing:
        raise UserError(bundle, f"{len(missing)} of {len(keys)} models are not measured yet",
                        "run run_bundle.py on the device again; it resumes")
    if device and resolve_device(device, None, None).threads != manifest["protocol"]["threads"]:
        raise UserError("--device", f"{device!r} names another thread count than the bundle measured "
                        f"({manifest['protocol']['threads']})", f"e.g. --device {manifest['device']}")
    device = device or manifest["device"]
    csv = table_path(space.name, device, out_root)
    if csv.exists():
        old = LatencyTable.load(csv)
        diff = engine.fingerprint_mismatch(old.fingerprint, fp)
        if diff:
            raise UserError(bundle, f"results come from another environment than {csv} ({'; '.join(diff)})",
                            "import under another --device name, or delete the old table")
    granularity = manifest["granularity"]
    protocol = Protocol(**{k: manifest["protocol"][k] for k in asdict(Protocol())})
    wall = float(fp.get("elapsed_s", 0.0))
    if manifest.get("extends"):
        table = merge_extension(_extended_base(csv, bundle, manifest), space, records, wall,
                                {"source": "bundle", "bundle": str(bundle)})
    else:
        table = finish_table(space, device, granularity, fp, protocol, enumerate_entries(space, granularity),
                             records, wall, manifest["reference"]["key"], csv)
        table.meta["source"] = {"bundle": str(bundle), "imported": True}
        table.save()
    pop = np.asarray(manifest["validation"]["networks"], dtype=np.int64).reshape(-1, space.D)
    if len(pop):
        record_validation(table, pop, records, int(manifest["validation"]["fit_networks"]))
    return table


def _extended_base(csv: Path, bundle: Path, manifest: dict) -> LatencyTable:
    """The table an extension bundle extends, as it was when the bundle was exported."""
    if not csv.exists():
        raise UserError(bundle, f"extends {csv}, which is not there", "import it into the folder that holds that table "
                        "(--out-root)")
    base = LatencyTable.load(csv)
    ext = manifest["extends"]
    if base.meta.get("space_signature") != ext["table_signature"] or \
            base.meta["reference"]["key"] != manifest["reference"]["key"]:
        raise UserError(bundle, f"{csv} changed since this bundle was exported from it",
                        "export a new bundle (nas profile ... --export-bundle) and measure it")
    return base


def describe(table: LatencyTable) -> str:
    v = table.meta.get("validation") or {}
    text = (f"{table.path}: {len(table.rows)} entries, {table.granularity} granularity, "
            f"reference {table.meta['reference']['median_ms']:.4f} ms, wall {table.meta.get('wall_time_s', 0):.0f}s")
    for ext in table.meta.get("extensions", []):
        text += f", extended {ext['date'][:10]} (+{ext['measured']} entries, {ext['wall_time_s']:.0f}s)"
    if v:
        text += (f"\nvalidation on {v['networks']} held-out networks: within 10% {v['share_within_10pct']:.0%}, "
                 f"MAPE {v['mape']:.1%}, Kendall tau {v['kendall_tau']:.3f}, noise floor {v['noise_floor']:.0%}"
                 f" ({'corrected' if v['uses_correction'] else 'plain sum'})")
    return text
