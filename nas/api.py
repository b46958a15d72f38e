"""The Python API: one function per ``nas`` command, same option names (``--train-device`` is ``train_device``),
same defaults, same files written. The command line only parses arguments, calls these and prints.

    from nas import api

    run = api.search(constraints=["latency@cpu-ort-1t<=0.15"], seed=0)
    run.pareto                     # the front as a DataFrame (also run.out / "pareto.csv")
    table = api.profile("mobilenetv3_cifar", "cpu-ort-1t", validate=80)
    predictor = api.pipeline("cifar10.npz", "runs/predictor", workers=2)

Mistakes raise :class:`nas.UserError` (one line: what, where, and the fix); a fitted predictor that barely
ranks comes with a :class:`nas.errors.WeakPredictorWarning`, a latency table that misses its validation goals
with a :class:`nas.errors.WeakTableWarning`. Heavy libraries (torch, Ray) are
imported by the functions that need them, so ``import nas.api`` is quick.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .errors import UserError, WeakPredictorWarning, WeakTableWarning

if TYPE_CHECKING:
    import pandas as pd

    from .latency import LatencyTable
    from .predictor.model import Predictor
    from .search.run import SearchResult
    from .space import SearchSpace

CIFAR_ARCHIVE = "../shared/data/cifar10.npz"  # the command line's default --data (this repository's layout)


def load_space(space: "str | SearchSpace") -> "SearchSpace":
    """A search space by shipped name or YAML path (a :class:`SearchSpace` passes through)."""
    from .space import SearchSpace

    return space if isinstance(space, SearchSpace) else SearchSpace.load(space)


def _names(value: "str | Sequence[str] | None") -> Optional[list[str]]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    if value is None:
        return None
    return [v for v in value.split(",") if v] if isinstance(value, str) else list(value)


def _listed(value: "str | Sequence[str]") -> list[str]:
    """One option value or several: ``"a<=1"`` -> ``["a<=1"]`` (never split: a constraint is one string)."""
    return [value] if isinstance(value, str) else list(value)


def _train_device(train_device: str) -> str:
    from .train import resolve_device

    return resolve_device(train_device)


def space_info(space: "str | SearchSpace" = "mobilenetv3_cifar",
               tables_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """``nas space``: the space's size, and the latency tables and accuracy predictors that exist for it (in
    ``tables_dir``, else ./latency_tables then shipped; ./predictors then shipped), each with what it was
    measured or fitted on; ``this_cpu`` says whether a table was measured on this machine's CPU, ``differs_here``
    how its timing set-up differs from this machine's (empty: networks can be measured against it here)."""
    from .evaluator import find_predictor_path, predictor_datasets
    from .latency.engine import cpu_model
    from .latency.profile import measured_elsewhere
    from .latency.table import LatencyTable, available_devices, find_table_path, table_roots
    from .predictor.model import Predictor

    def problem(check) -> Optional[str]:
        """Why a file cannot serve this space (e.g. the space was edited since), or None."""
        try:
            check()
        except UserError as e:
            return e.what
        return None

    sp = load_space(space)
    tables = []
    for device in available_devices(sp.name, table_roots(tables_dir)):
        path = find_table_path(sp.name, device, tables_dir)
        t = LatencyTable.load(path)
        fp, v = t.fingerprint, t.meta.get("validation") or {}
        tables.append({"device": device, "path": str(path), "cpu_model": fp.get("cpu_model"),
                       "backend": f"{fp.get('backend')} {fp.get('backend_version')}", "threads": fp.get("threads"),
                       "entries": len(t.rows), "date": str(t.meta.get("date", ""))[:10],
                       "kendall_tau": v.get("kendall_tau"), "share_within_10pct": v.get("share_within_10pct"),
                       "earlier_validations": t.meta.get("validation_history", []),
                       "this_cpu": fp.get("cpu_model") == cpu_model(), "differs_here": measured_elsewhere(t),
                       "problem": problem(lambda: t.check(sp))})
    predictors = []
    for dataset in predictor_datasets(sp.name):
        path = find_predictor_path(sp.name, dataset)
        pred = Predictor.load(path)
        chosen = pred.meta.get("chosen")
        predictors.append({"dataset": dataset, "path": str(path), "version": pred.version, "model": chosen,
                           "samples": pred.meta.get("n_samples"),
                           "cv_kendall_tau": (pred.meta.get("cv") or {}).get(chosen, {}).get("kendall_tau"),
                           "problem": problem(lambda: Predictor.load(path, sp))})
    return {"name": sp.name, "stages": len(sp.stages), "decisions": [(d.name, list(d.choices)) for d in sp.decisions],
            "cardinality": sp.cardinality, "stage_options": len(sp.stage_options()), "tables": tables,
            "predictors": predictors}


# ---------------------------------------------------------------------- latency tables
def _protocol(rounds: int, chunk: int, target_ms: float, spread_tol: float, seed: int):
    from .latency.profile import Protocol

    return Protocol(rounds=rounds, chunk=chunk, seed=seed, target_s=target_ms / 1e3, spread_tol=spread_tol)


def profile(space: "str | SearchSpace", device: str, *, backend: Optional[str] = None,
            threads: Optional[int] = None, batch: int = 1, granularity: Optional[str] = None, rounds: int = 7,
            chunk: int = 150, target_ms: float = 2.0, spread_tol: float = 0.10, validate: int = 0,
            fit_networks: int = 30, out_root: str | Path = "latency_tables", force: bool = False, seed: int = 0,
            quiet: bool = False) -> "LatencyTable":
    """``nas profile``: measure (or finish measuring) ``device``'s latency table for ``space`` on this machine."""
    from .latency import profile as P

    return _warn_if_weak_table(P.profile(load_space(space), device, backend, threads, batch, granularity, out_root,
                                         _protocol(rounds, chunk, target_ms, spread_tol, seed), validate,
                                         fit_networks, force, quiet))


def _warn_if_weak_table(table: "LatencyTable") -> "LatencyTable":
    message = table.quality_warning()
    if message:
        warnings.warn(message, WeakTableWarning, stacklevel=3)
    return table


def export_bundle(space: "str | SearchSpace", device: str, bundle: str | Path, *, backend: Optional[str] = None,
                  threads: Optional[int] = None, batch: int = 1, granularity: Optional[str] = None, rounds: int = 7,
                  chunk: int = 150, target_ms: float = 2.0, spread_tol: float = 0.10, validate: int = 0,
                  fit_networks: int = 30, out_root: str | Path = "latency_tables", force: bool = False,
                  seed: int = 0, quiet: bool = False) -> Path:
    """``nas profile --export-bundle``: a self-contained folder to measure ``device`` remotely. Where
    ``out_root`` holds this device's table of an earlier version of the space, the bundle holds only what the
    edit added and its import extends that table (``force``: measure everything again)."""
    from .latency import profile as P

    be = P.resolve_device(device, backend, threads)
    if be.name != "onnxruntime":
        raise UserError("--export-bundle", "bundles run ONNX Runtime", "use an ort device name")
    sp = load_space(space)
    return P.export_bundle(sp, device, bundle, be.threads, batch, granularity,
                           _protocol(rounds, chunk, target_ms, spread_tol, seed), validate, fit_networks, quiet,
                           extends=P.table_to_extend(sp, device, out_root, force))


def import_results(bundle: str | Path, *, space: "str | SearchSpace | None" = None,
                   out_root: str | Path = "latency_tables", device: Optional[str] = None) -> "LatencyTable":
    """``nas profile --import-results``: a measured bundle becomes a table under ``out_root``, named after the
    bundle's device unless ``device`` names it otherwise."""
    from .latency import profile as P

    return _warn_if_weak_table(P.import_results(bundle, out_root, load_space(space) if space else None, device))


def _run_space_and_pick(run: Path, arch_id: Optional[str], pick: list[str]) -> tuple["SearchSpace", str]:
    """A search run's space (from the YAML its run.json carries, else by the name it was given) and the
    architecture to export: ``arch_id``, or the one ``pick`` selects from the run's pareto.csv."""
    from .io import read_csv, read_json
    from .objectives import parse_constraint
    from .report import pick_from_front
    from .space import carried_space

    info = read_json(run / "run.json", "run file")
    space = carried_space(info.get("space_config"), info["config"]["space"], str(run / "run.json"))
    if pick:
        row = pick_from_front(read_csv(run / "pareto.csv", "Pareto front"), info["objectives"][0],
                              [parse_constraint(c, "--pick") for c in pick], str(run / "pareto.csv"))
        arch_id = str(row["arch_id"])
    return space, arch_id


# ---------------------------------------------------------------------- search
@dataclass
class SearchRun:
    """What ``nas search`` leaves in its run folder, loaded."""

    out: Path
    pareto: "pd.DataFrame"
    evaluated: "pd.DataFrame"
    run: dict[str, Any]  # run.json: config, seed, versions, hypervolume, wall time...
    result: "SearchResult"


def search(space: str = "mobilenetv3_cifar", *, objectives: "str | Sequence[str] | None" = None,
           constraints: "str | Sequence[str]" = (), controller: str = "evolution", sampler: str = "nsga2",
           evaluations: int = 3000, population: int = 48, islands: Optional[int] = None,
           targets: "str | Sequence[float] | None" = None, table: Optional[str] = None,
           decisions: "str | Sequence[str] | None" = None, tables_dir: Optional[str] = None,
           predictor: Optional[str] = None, dataset: str = "cifar10", placement_ranking: Optional[str] = None,
           storage: Optional[str] = None, out: "str | Path | None" = None, workers: int = 0,
           ray_address: Optional[str] = None, measure: bool = False, seed: int = 0, quiet: bool = False) -> SearchRun:
    """``nas search``: run (or resume) a search and write pareto.csv, evaluated.csv, pareto.png and run.json
    to ``out`` (default ``runs/<space>-<controller>-<config hash>``). With no arguments: the cifar space for
    predicted accuracy vs. latency on the shipped ``cpu-ort-1t`` table. ``dataset``: without ``predictor``, use
    ``predictors/<space>/<dataset>.json`` (in ./predictors, else shipped)."""
    import pandas as pd

    from .report import check_measurable, write_outputs
    from .search.run import SearchConfig, build_problem, default_objectives, default_out, run_search

    if isinstance(targets, str):
        try:
            targets = [float(t) for t in targets.split(",")]
        except ValueError:
            raise UserError("--targets", f"cannot parse {targets!r}",
                            "comma-separated numbers, e.g. 0.1,0.15") from None
    cfg = SearchConfig(space=space, table=table, decisions=_names(decisions),
                       objectives=_names(objectives) or default_objectives(space, table, predictor, dataset),
                       constraints=_listed(constraints),
                       controller=controller, sampler=sampler, evaluations=evaluations, population=population,
                       islands=islands, targets=list(targets) if targets else None, seed=seed,
                       tables_dir=tables_dir, predictor=predictor, placement_ranking=placement_ranking,
                       storage=storage, dataset=dataset)
    out = Path(out) if out else default_out(cfg)
    if measure:
        check_measurable(build_problem(cfg))
    res = run_search(cfg, out=out, workers=workers, ray_address=ray_address, quiet=quiet)
    run = write_outputs(res, out, measure=measure, quiet=quiet)
    return SearchRun(out, pd.read_csv(out / "pareto.csv"), pd.read_csv(out / "evaluated.csv"), run, res)


# ---------------------------------------------------------------------- accuracy predictor
def teacher(data: str | Path = CIFAR_ARCHIVE, out: str | Path = "runs/predictor", *,
            space: "str | SearchSpace" = "mobilenetv3_cifar", arch: Optional[str] = None,
            checkpoint: Optional[str] = None, teacher_epochs: Optional[float] = None, teacher_lr: Optional[float] = None,
            subset: Optional[int] = None, train_device: str = "cpu", seed: int = 0,
            quiet: bool = False) -> dict[str, Any]:
    """``nas teacher``: train the reference network (resumable) or load ``checkpoint``; the report
    (arch_id, val_top1, test_top1, ...) is also ``<out>/teacher.json``, the network ``<out>/teacher/``."""
    from .predictor.pipeline import training_recipe
    from .predictor.teacher import train_teacher

    device = _train_device(train_device)
    recipe = training_recipe("teacher", teacher_epochs, teacher_lr, seed)
    return train_teacher(load_space(space), data, out, arch, recipe, checkpoint, subset, quiet=quiet, device=device)


def distill(data: str | Path = CIFAR_ARCHIVE, out: str | Path = "runs/predictor", *,
            space: "str | SearchSpace" = "mobilenetv3_cifar", steps: int = 1000, workers: int = 0,
            ray_address: Optional[str] = None, subset: Optional[int] = None, train_device: str = "cpu",
            seed: int = 0, quiet: bool = False) -> "pd.DataFrame":
    """``nas distill``: the block library of ``<out>/teacher``; returns (and writes) ``blocks/block_quality.csv``."""
    from .predictor.distill import DistillConfig, run_distillation

    device = _train_device(train_device)
    return run_distillation(load_space(space), Path(out) / "teacher", data, Path(out) / "blocks",
                            DistillConfig(steps=steps, seed=seed), workers, ray_address, subset, quiet, device)


def sample(data: str | Path = CIFAR_ARCHIVE, out: str | Path = "runs/predictor", *,
           space: "str | SearchSpace" = "mobilenetv3_cifar", samples: int = 40, sample_seeds: int = 1,
           finetune_epochs: Optional[float] = None, finetune_lr: Optional[float] = None, workers: int = 0,
           ray_address: Optional[str] = None, subset: Optional[int] = None, train_device: str = "cpu",
           seed: int = 0, quiet: bool = False) -> "pd.DataFrame":
    """``nas predictor sample``: fine-tune ``samples`` architectures (stratified by MACs) from the block
    library, ``sample_seeds`` times each; results go to ``<out>/samples.jsonl`` as they finish. Returns
    arch_id and mean val_top1 per architecture."""
    import pandas as pd

    from .predictor.fit import check_sample_count
    from .predictor.pipeline import training_recipe
    from .predictor.sample import run_sample_seeds, stratified_sample

    check_sample_count(samples)  # fewer could never be fitted: nas predictor fit draws the same population
    device = _train_device(train_device)
    sp, out = load_space(space), Path(out)
    pop = stratified_sample(sp, samples, seed)
    acc = run_sample_seeds(sp, pop, out / "teacher", out / "blocks", data, out / "samples.jsonl",
                           training_recipe("finetune", finetune_epochs, finetune_lr, seed), sample_seeds, workers,
                           ray_address, subset, quiet, device)
    return pd.DataFrame({"arch_id": [a.id for a in sp.decode_many(pop)], "val_top1": acc})


def fit(out: str | Path = "runs/predictor", *, space: "str | SearchSpace" = "mobilenetv3_cifar", samples: int = 40,
        sample_seeds: int = 1, finetune_epochs: Optional[float] = None, finetune_lr: Optional[float] = None,
        dataset: Optional[str] = None, placement_ranking: Optional[str] = None,
        predictor_out: "str | Path | None" = None,
        seed: int = 0) -> "Predictor":
    """``nas predictor fit``: fit the predictor to the fine-tuned samples of ``out`` (the same ``samples``,
    ``sample_seeds``, recipe and ``seed`` as :func:`sample`); saved to ``predictor_out`` (default
    ``<out>/predictor.json``)."""
    from .predictor.pipeline import fit_on_samples, training_recipe
    from .predictor.sample import mean_accuracy, stratified_sample

    sp, out = load_space(space), Path(out)
    pop = stratified_sample(sp, samples, seed)
    recipe = training_recipe("finetune", finetune_epochs, finetune_lr, seed)
    acc = mean_accuracy(sp, pop, out / "samples.jsonl", recipe, sample_seeds)
    scores = None
    if placement_ranking:
        from .placement import load_placement_scores

        scores = load_placement_scores(sp, placement_ranking)
    pred = fit_on_samples(sp, out, pop, acc, dataset, recipe, sample_seeds, seed, placement_scores=scores)
    pred.save(predictor_out or out / "predictor.json")
    return _warn_if_weak(pred)


def pipeline(data: str | Path = CIFAR_ARCHIVE, out: str | Path = "runs/predictor", *,
             space: "str | SearchSpace" = "mobilenetv3_cifar", steps: int = 1000, samples: int = 40,
             sample_seeds: int = 1, teacher_epochs: Optional[float] = None, teacher_lr: Optional[float] = None,
             finetune_epochs: Optional[float] = None, finetune_lr: Optional[float] = None,
             dataset: Optional[str] = None, workers: int = 0, ray_address: Optional[str] = None,
             subset: Optional[int] = None, train_device: str = "cpu", seed: int = 0,
             quiet: bool = False) -> "Predictor":
    """``nas pipeline``: teacher, block library, fine-tuned samples and fit in one resumable call;
    the predictor is saved to ``<out>/predictor.json``."""
    from .predictor.distill import DistillConfig
    from .predictor.fit import check_sample_count
    from .predictor.pipeline import PipelineConfig, run_pipeline, training_recipe

    check_sample_count(samples)
    device = _train_device(train_device)
    cfg = PipelineConfig(teacher=training_recipe("teacher", teacher_epochs, teacher_lr, seed),
                         distill=DistillConfig(steps=steps, seed=seed),
                         finetune=training_recipe("finetune", finetune_epochs, finetune_lr, seed), samples=samples,
                         sample_seeds=sample_seeds, seed=seed, subset=subset, dataset=dataset)
    return _warn_if_weak(run_pipeline(load_space(space), data, out, cfg, workers, ray_address, quiet, device))


def _warn_if_weak(pred: "Predictor") -> "Predictor":
    message = pred.quality_warning()
    if message:
        warnings.warn(message, WeakPredictorWarning, stacklevel=3)
    return pred


# ---------------------------------------------------------------------- netadapt, multi-path, placement
def _load_user_network(space: "SearchSpace", net: Optional[str], checkpoint: Optional[str], arch: Optional[str]):
    from .export import load_network, load_user_weights

    if net:
        return load_network(net)
    if not (checkpoint and arch):
        raise UserError("nas adapt", "give --net DIR, or --checkpoint and --arch", "see nas adapt --help")
    from .blocks import build_model

    parsed = space.parse_id(arch)
    model = build_model(parsed)
    load_user_weights(model, checkpoint, parsed.id, "pass the --arch the checkpoint was trained for")
    return parsed, model


def adapt(net: Optional[str] = None, *, checkpoint: Optional[str] = None, arch: Optional[str] = None,
          data: str | Path = CIFAR_ARCHIVE, out: str | Path = "runs/adapt",
          space: "str | SearchSpace" = "mobilenetv3_cifar",
          table: str = "cpu-ort-1t", budget_ms: Optional[float] = None, budget_ratio: Optional[float] = None,
          short_steps: int = 100, long_epochs: float = 3.0, select: str = "accuracy", no_measure: bool = False,
          workers: int = 0, ray_address: Optional[str] = None, subset: Optional[int] = None,
          train_device: str = "cpu", seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    """``nas adapt``: NetAdapt shrinks a trained network (``net`` folder, or ``checkpoint`` + ``arch``) to a
    latency budget on ``table`` (device name or CSV); resumable from ``out``. Returns the state: budget_ms,
    trajectory (table and measured latency, accuracy per iteration), ..."""
    from .latency import LatencyTable
    from .netadapt import AdaptConfig, adapt as run_adapt

    device = _train_device(train_device)
    if (budget_ms is None) == (budget_ratio is None):
        raise UserError("nas adapt", "both --budget-ms and --budget-ratio given" if budget_ms is not None
                        else "no budget given", "pass one: --budget-ms or --budget-ratio")
    if (budget_ms is not None and budget_ms <= 0) or (budget_ratio is not None and not 0 < budget_ratio < 1):
        raise UserError("--budget-ms" if budget_ms is not None else "--budget-ratio",
                        f"must be {'positive' if budget_ms is not None else 'between 0 and 1'}",
                        "e.g. --budget-ratio 0.5: half the initial latency")
    sp = load_space(space)
    parsed, model = _load_user_network(sp, net, checkpoint, arch)
    tab = LatencyTable.load(table, sp) if str(table).endswith(".csv") else LatencyTable.find(sp, table)
    cfg = AdaptConfig(budget_ms=budget_ms, budget_ratio=budget_ratio, short_steps=short_steps,
                      long_epochs=long_epochs, select=select, seed=seed)
    return run_adapt(sp, model, parsed, tab, data, out, cfg, workers, ray_address, subset,
                     measure=not no_measure, quiet=quiet, device=device)


def multipath(domains: "str | Sequence[str]", *, space: "str | SearchSpace" = "mobilenetv3_cifar", steps: int = 3000,
              warmup: int = 600, prioritise: str = "lagging", device: Optional[str] = None,
              latency_weight: float = 0.0, latency_target: Optional[float] = None, latency_reward: str = "mnasnet",
              share_weight: Optional[float] = None, retrain_epochs: float = 2.0, select_epochs: float = 0.0,
              workers: int = 0, subset: Optional[int] = None, out: str | Path = "runs/multipath",
              train_device: str = "cpu", seed: int = 0, quiet: bool = False) -> dict[str, Any]:
    """``nas multipath``: one REINFORCE controller per domain over one supernet, the joint model retrained
    and saved to ``out``. ``domains``: known names (cifar10, fashion-mnist), ``name=path[:classes]``, or one
    YAML run file. ``device`` names a latency table for the reward's latency term (``latency_reward``: MnasNet's
    ``acc * (lat / target) ** -w`` or TuNAS's ``acc - w * |lat / target - 1|``). Returns paths, node_map,
    accuracy, unique_params, unique_macs, ..."""
    from .latency import LatencyTable
    from .multipath import MultipathConfig, parse_domains, run_multipath
    from .search.rl import REWARDS

    train_on = _train_device(train_device)
    if latency_weight and not device:
        raise UserError("--latency-weight", "the latency term needs a latency table", "add --device, e.g. cpu-ort-1t")
    if latency_target is not None and not latency_weight:
        raise UserError("--latency-target", "is the latency term's target, and that term is off",
                        "add --latency-weight (e.g. 0.07) and --device")
    if latency_weight and latency_target is None:
        raise UserError("--latency-weight", "the latency term needs a target latency in ms",
                        "add --latency-target, e.g. the table latency of a network you would ship")
    if latency_reward not in REWARDS:
        raise UserError("--latency-reward", f"unknown reward {latency_reward!r}", f"use one of {', '.join(REWARDS)}")
    sp = load_space(space)
    specs = parse_domains([domains] if isinstance(domains, str) else list(domains))
    tab = LatencyTable.find(sp, device) if device else None
    cfg = MultipathConfig(steps=steps, warmup=warmup, prioritise=prioritise, latency_weight=latency_weight,
                          latency_target=latency_target, latency_reward=latency_reward,
                          share_weight=MultipathConfig.share_weight if share_weight is None else share_weight,
                          retrain_epochs=retrain_epochs, select_epochs=select_epochs, seed=seed)
    return run_multipath(sp, specs, out, cfg, tab, subset, quiet=quiet, workers=workers, device=train_on)


def supernet_mixture(data: str | Path = CIFAR_ARCHIVE, out: str | Path = "runs/pooling", *, models: int = 4,
                     epochs: float = 20.0, warmup_epochs: float = 0.0, space: Optional[str] = None,
                     reference: Optional[str] = None, blocks: int = 9, pools: int = 2, base_width: int = 16,
                     widths: str = "doubling", scoring: str = "best", subset: Optional[int] = None,
                     val_size: Optional[int] = None, train_device: str = "cpu", seed: int = 0,
                     quiet: bool = False) -> "pd.DataFrame":
    """``nas supernet-mixture``: rank downsampling placements with a balanced mixture of ``models`` supernets
    (the ResNet20-like pooling space, its widths by ``widths``: ``doubling`` or ``fixed``, see
    :mod:`nas.pooling`; or ``space``'s own stride placements around ``reference``); the ranking is also
    ``<out>/placement_ranking_M<models>.csv``. ``val_size``: validation images to score placements on (taken
    out of the training set; default 5,000, at most a quarter of it)."""
    from .pooling import MixtureConfig, PlacementSpace, StridePlacementSpace, run_mixture

    device = _train_device(train_device)
    if reference and not space:
        raise UserError("--reference", "fixes the other decisions of a --space", "add --space, or drop --reference")
    if val_size is not None and val_size < 1:
        raise UserError("--val-size", f"{val_size} leaves no images to score placements on", "give a positive number")
    shape = {"blocks": blocks, "pools": pools, "base_width": base_width, "widths_rule": widths}
    if space and shape != {k: getattr(PlacementSpace, k) for k in shape}:  # not PlacementSpace's defaults
        raise UserError("--blocks/--pools/--base-width/--widths",
                        "shape the ResNet20-like pooling space, not a --space", "drop them, or drop --space")
    if space:
        sspace = load_space(space)
        placements = StridePlacementSpace(sspace, sspace.parse_id(reference) if reference else None)
    else:
        placements = PlacementSpace(**shape)
    cfg = MixtureConfig(models=models, epochs=epochs, seed=seed, warmup_epochs=warmup_epochs)
    return run_mixture(placements, data, out, cfg, subset, quiet, device, scoring, val_size)


# ---------------------------------------------------------------------- export
def export(arch_id: Optional[str] = None, out: str | Path = "exported", *,
           space: "str | SearchSpace" = "mobilenetv3_cifar", run: "str | Path | None" = None,
           pick: "str | Sequence[str]" = (), weights: Optional[str] = None, seed: int = 0) -> Path:
    """``nas export``: the network as safetensors + arch JSON (timm recipe) + ONNX in ``out``. ``run``: take
    the space from that search run (its run.json); ``pick``: instead of ``arch_id``, the network of the run's
    front best on its first objective among those meeting these constraints (e.g. ``latency@cpu-ort-1t<=0.2``);
    ``weights``: load this state_dict (else initialised by ``seed``)."""
    import torch

    from .blocks import build_model
    from .export import load_user_weights, save_network

    pick = _listed(pick)
    if (arch_id is None) == (not pick):
        raise UserError("nas export", "give an arch_id or --pick, not both" if pick else "no network named",
                        "e.g. nas export <arch_id>, or nas export --run runs/<folder> --pick \"latency@cpu-ort-1t<=0.2\"")
    if pick and not run:
        raise UserError("--pick", "picks from a search run's front", "add --run runs/<folder>")
    if run:
        space, arch_id = _run_space_and_pick(Path(run), arch_id, pick)
    arch = load_space(space).parse_id(arch_id)
    torch.manual_seed(seed)
    model = build_model(arch)
    if weights:
        load_user_weights(model, weights, arch.id, "pass the checkpoint trained for this architecture")
    return save_network(arch, model, out)
