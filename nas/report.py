"""A search's outputs: tidy CSVs (one row per architecture, ``arch_id`` first), the plot, run.json, a summary."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from . import __version__
from .errors import UserError
from .io import write_csv, write_json
from .objectives import Constraint, minimisation_matrix, total_violation
from .pareto import hypervolume
from .search.run import SearchResult


def evaluated_frame(res: SearchResult) -> pd.DataFrame:
    arc, problem = res.archive, res.problem
    if problem.tabular:
        ids = problem.space.arch_ids(arc.pop)
        cols = {d.name: [d.choices[v] for v in arc.pop[:, j]] for j, d in enumerate(problem.space.decisions)}
    else:
        archs = problem.space.decode_many(arc.pop)
        ids = [a.id for a in archs]
        cols = {"arch_json": [json.dumps({k: v for k, v in a.to_json().items() if k in ("space", "stages")},
                                         separators=(",", ":")) for a in archs]}
    frame = pd.DataFrame({"arch_id": ids, **cols, **{m: arc.values[m] for m in arc.metric_names}})
    cv = total_violation(problem.constraints, arc.values, len(arc))
    frame["feasible"] = cv <= 0
    frame["on_front"] = res.front_mask()
    frame["island"] = arc.island
    frame["generation"] = arc.generation
    frame["evaluation"] = np.arange(len(arc))
    return frame


def provenance(res: SearchResult) -> dict[str, Any]:
    return {**res.problem.evaluator.provenance(), "seed": res.config.seed, "toolkit_version": __version__}


def pareto_frame(res: SearchResult, evaluated: pd.DataFrame) -> pd.DataFrame:
    front = evaluated[evaluated["on_front"]].copy()
    keep = [c for c in front.columns if c not in ("on_front", "feasible")]
    front = front[keep]
    for k, v in provenance(res).items():
        front[k] = v
    first = res.problem.objectives[0]
    return front.sort_values(first.name, ascending=first.direction == "min").reset_index(drop=True)


def reference_point(F: np.ndarray) -> np.ndarray:
    """Nadir of the finite points, pushed out by 10% of the range."""
    F = F[np.isfinite(F).all(axis=1)]
    lo, hi = F.min(axis=0), F.max(axis=0)
    return hi + 0.1 * np.maximum(hi - lo, 1e-12)


def front_hypervolume(res: SearchResult, ref: Optional[np.ndarray] = None) -> tuple[float, list[float]]:
    F = minimisation_matrix(res.problem.objectives, res.archive.values)
    cv = total_violation(res.problem.constraints, res.archive.values, len(F))
    ok = (cv <= 0) & np.isfinite(F).all(axis=1)
    if not ok.any():
        return 0.0, []
    ref = reference_point(F[ok]) if ref is None else ref
    return hypervolume(F[ok], ref), ref.tolist()


def axis_label(objective) -> str:
    """``latency@cpu-ort-1t (ms, lower is better)``: a unit where it has one, and which way is better."""
    unit = "ms, " if objective.device else {"accuracy": "top-1, ", "proxy_accuracy": "log MACs scaled, "}.get(
        objective.name, "")
    return f"{objective.name} ({unit}{'higher' if objective.direction == 'max' else 'lower'} is better)"


def plot_front(res: SearchResult, evaluated: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = res.problem.objectives
    pairs = [(1, 0)] if len(objs) == 2 else [(i, j) for i in range(len(objs)) for j in range(i)][:3]
    if len(objs) == 1:
        pairs = [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.2), squeeze=False)
    front = evaluated[evaluated["on_front"]]
    for ax, (x, y) in zip(axes[0], pairs):
        xn, yn = objs[x].name, objs[y].name
        ax.scatter(evaluated[xn], evaluated[yn], s=6, c="0.75", label=f"evaluated ({len(evaluated)})")
        f = front.sort_values(xn)
        ax.plot(f[xn], f[yn], "o-", ms=3.5, c="tab:red", lw=1, label=f"Pareto front ({len(f)})")
        ax.set_xlabel(axis_label(objs[x]))
        ax.set_ylabel(axis_label(objs[y]))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{res.problem.space.name}: {res.config.controller}, seed {res.config.seed}")
    fig.tight_layout()
    from .io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "hwnas": __version__}
    for pkg in ("numpy", "torch", "timm", "onnxruntime", "optuna", "ray", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def check_measurable(problem) -> None:
    """``--measure`` can re-time this problem's front here: it has latency tables, and each was measured on
    this machine (same CPU, backend version, threads, batch, timing engine). Checked before a search, not after it."""
    from .latency.profile import check_measured_here

    if problem.tabular:
        raise UserError("--measure", "a tabular space has no networks to measure", "drop --measure")
    tables = problem.evaluator.tables
    if not tables:
        raise UserError("--measure", "no latency objective or constraint to re-measure", "add latency@<device>")
    for device, table in tables.items():
        check_measured_here(table, "--measure", "run --measure on the device the table describes, or profile this "
                                                "machine (nas profile --device <name>) and search with latency@<name>",
                            device)


def measure_front(res: SearchResult, pareto: pd.DataFrame, quiet: bool = False) -> pd.DataFrame:
    """Re-measure the front end to end on this device (drift-compensated, same units as the table).

    With a latency constraint, members whose *measured* latency breaks it are flagged and dropped.
    """
    from .latency.profile import measure_networks

    problem = res.problem
    check_measurable(problem)
    archs = [problem.space.parse_id(i) for i in pareto["arch_id"]]
    for device, table in problem.evaluator.tables.items():
        state = Path(res.out or ".") / "state" / f"measure_{device}.jsonl"
        pareto[f"measured_latency@{device}"] = measure_networks(table, archs, state, f"measure front on {device}",
                                                                quiet)
        pareto[f"latency_error@{device}"] = pareto[f"latency@{device}"] / pareto[f"measured_latency@{device}"] - 1
    breaks = np.zeros(len(pareto), dtype=bool)
    for c in problem.constraints:
        col = f"measured_{c.name}"
        if col in pareto:
            breaks |= c.violation(pareto[col].to_numpy()) > 0
    pareto["breaks_constraint_measured"] = breaks
    return pareto


def write_outputs(res: SearchResult, out: Path, measure: bool = False, quiet: bool = False) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    evaluated = evaluated_frame(res)
    pareto = pareto_frame(res, evaluated)
    dropped = 0
    if measure:
        pareto = measure_front(res, pareto, quiet)
        dropped = int(pareto["breaks_constraint_measured"].sum())
        if dropped:
            write_csv(out / "pareto_dropped.csv", pareto[pareto["breaks_constraint_measured"]])
            pareto = pareto[~pareto["breaks_constraint_measured"]].reset_index(drop=True)
    write_csv(out / "evaluated.csv", evaluated)
    write_csv(out / "pareto.csv", pareto)
    plot_front(res, evaluated, out / "pareto.png")
    hv, ref = front_hypervolume(res)
    run = {"config": res.config.to_json(), "seed": res.config.seed, "versions": versions(),
           "provenance": provenance(res), "objectives": [o.__dict__ for o in res.problem.objectives],
           "constraints": [str(c) for c in res.problem.constraints], "evaluated": len(res.archive),
           "generations": res.generations, "front_size": len(pareto), "dropped_by_measurement": dropped,
           "hypervolume": hv, "hypervolume_reference": ref, "wall_time_s": round(res.wall_time_s, 3),
           "worker_restarts": res.restarts, "rl_targets": res.targets,
           "space_config": getattr(res.problem.space, "config", None)}  # nas export --run works from anywhere
    write_json(out / "run.json", run)
    return run


def pick_from_front(pareto: pd.DataFrame, first: dict[str, str], constraints: list[Constraint],
                    where: str) -> pd.Series:
    """The front member best on the run's first objective (``{"name", "direction"}``) among those meeting every
    constraint; ``where`` names the front in errors."""
    ok = np.ones(len(pareto), dtype=bool)
    for i, c in enumerate(constraints):
        if c.name not in pareto:
            numeric = [k for k in pareto.columns if pd.api.types.is_numeric_dtype(pareto[k])
                       and k not in ("island", "generation", "evaluation", "seed")]
            raise UserError("--pick", f"{where} has no column {c.name!r}", f"use one of: {', '.join(numeric)}")
        values = pareto[c.name].to_numpy(dtype=np.float64)
        ok &= c.violation(values) <= 0
        if not ok.any():
            lo, hi = np.nanmin(values), np.nanmax(values)
            raise UserError("--pick", f"no network of {where} meets {c}" + (" with the bounds before it" if i else ""),
                            f"its {c.name} spans {lo:.4g}..{hi:.4g}; loosen the bound")
    chosen = pareto[ok]
    col = chosen[first["name"]]
    return pareto.loc[col.idxmax() if first["direction"] == "max" else col.idxmin()]


def print_summary(res: SearchResult, pareto: pd.DataFrame, run: dict[str, Any], limit: int = 15) -> None:
    from rich.console import Console
    from rich.table import Table

    objs = [o.name for o in res.problem.objectives]
    table = Table(title=f"Pareto front: {len(pareto)} of {run['evaluated']} evaluated "
                        f"({res.config.controller}, seed {res.config.seed}, {run['wall_time_s']:.1f}s)")
    table.add_column("arch_id", overflow="fold")
    shown = objs + [c for c in pareto.columns if c.startswith("measured_")]
    for c in shown:
        table.add_column(c, justify="right")
    step = max(1, len(pareto) // limit)
    for _, row in pareto.iloc[::step].head(limit).iterrows():
        table.add_row(str(row["arch_id"]), *[_fmt(c, row[c]) for c in shown])
    Console().print(table)


def _fmt(name: str, v: Any) -> str:
    if name in ("macs", "params"):
        return f"{v / 1e6:.2f}M"
    return f"{v:.4f}" if isinstance(v, (float, np.floating)) else str(v)
