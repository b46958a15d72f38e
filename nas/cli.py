"""``nas`` command line. Thin: parses arguments and calls library functions; no logic lives here."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from .errors import UserError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


def _kwargs(a: argparse.Namespace, *skip: str) -> dict:
    """The parsed options as keyword arguments of the matching :mod:`nas.api` function."""
    return {k: v for k, v in vars(a).items() if k not in ("command", "version", *skip)}


# ---------------------------------------------------------------------- profile
@command("profile")
def cmd_profile(a: argparse.Namespace) -> int:
    from . import api
    from .latency.profile import describe

    if a.import_results:
        print(describe(_warned(api.import_results, a.import_results, space=a.space, out_root=a.out_root,
                               device=a.device)))
        return 0
    if not a.space or not a.device:
        raise UserError("nas profile", "--space and --device are required", "e.g. --space mobilenetv3_cifar --device cpu-ort-1t")
    if a.export_bundle:
        from .io import read_json

        out = api.export_bundle(**_kwargs(a, "import_results", "export_bundle"), bundle=a.export_bundle)
        ext = read_json(out / "manifest.json", "bundle manifest").get("extends")
        extends = f" (extends the {a.device} table: {ext['entries']} entries to time)" if ext else ""
        print(f"bundle written to {out}{extends}; on the device run: python {out}/run_bundle.py")
        return 0
    print(describe(_warned(api.profile, **_kwargs(a, "import_results", "export_bundle"))))
    return 0


# ---------------------------------------------------------------------- search
@command("search")
def cmd_search(a: argparse.Namespace) -> int:
    from . import api
    from .report import print_summary

    run = api.search(**_kwargs(a, "constraint"), constraints=a.constraint or ())
    if not a.quiet:
        print_summary(run.result, run.pareto, run.run)
    print(f"{run.run['front_size']} architectures on the front, {run.run['evaluated']} evaluated; results in "
          f"{run.out}/ (pareto.csv, evaluated.csv, pareto.png, run.json)")
    return 0


# ---------------------------------------------------------------------- predictor pipeline
@command("teacher")
def cmd_teacher(a: argparse.Namespace) -> int:
    from . import api

    rep = api.teacher(**_kwargs(a))
    print(f"teacher {rep['arch_id']}: val top-1 {rep['val_top1']:.4f}, test top-1 {rep['test_top1']:.4f} "
          f"-> {a.out}/teacher/")
    return 0


@command("distill")
def cmd_distill(a: argparse.Namespace) -> int:
    from . import api

    frame = api.distill(**_kwargs(a))
    print(f"block-quality table: {len(frame)} options -> {a.out}/blocks/block_quality.csv")
    return 0


@command("predictor")
def cmd_predictor(a: argparse.Namespace) -> int:
    from . import api

    if a.action == "sample":
        for option in ("predictor_out", "placement_ranking"):
            if getattr(a, option):
                flag = "--" + option.replace("_", "-")
                raise UserError(flag, "is an option of nas predictor fit", f"drop {flag} here, give it to fit")
        api.sample(**_kwargs(a, "action", "dataset", "predictor_out", "placement_ranking"))
        print(f"{a.samples} fine-tuned samples x {a.sample_seeds} seed(s) in {a.out}/samples.jsonl")
        return 0
    pred = _warned(api.fit, **_kwargs(a, "action", "data", "workers", "ray_address", "subset", "train_device",
                                      "quiet"))
    tau = pred.cv_kendall_tau
    shown = f"{tau:.3f}" if tau == tau else "undefined"  # NaN when the predictions do not vary (see the warning)
    print(f"predictor ({pred.meta['chosen']}, CV Kendall tau {shown}) -> {pred.path}"
          f"{_how_to_search_with(pred, a.space)}")
    return 0


def _how_to_search_with(pred, space: str) -> str:
    dataset = pred.meta["dataset"]
    default = f"predictors/{pred.meta['space']}/{dataset}.json"
    flag = "" if dataset == "cifar10" else f" --dataset {dataset}"
    return (f"; search with it: nas search --space {space} --predictor {pred.path} (or copy it to {default}: "
            f"then nas search --space {space}{flag} finds it)")


def _warned(make: Callable, *args, **kwargs):
    """``make(...)``, a predictor or a latency table, with its quality warning (WeakPredictorWarning,
    WeakTableWarning) printed as the CLI's one ``warning:`` line."""
    import warnings

    from .errors import WeakPredictorWarning, WeakTableWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakPredictorWarning)
        warnings.simplefilter("ignore", WeakTableWarning)
        made = make(*args, **kwargs)
    message = made.quality_warning()
    if message:
        print(f"warning: {message}", file=sys.stderr)
    return made


@command("pipeline")
def cmd_pipeline(a: argparse.Namespace) -> int:
    from . import api

    pred = _warned(api.pipeline, **_kwargs(a))
    print(f"predictor {pred.meta['chosen']} -> {pred.path}{_how_to_search_with(pred, a.space)}")
    return 0


# ---------------------------------------------------------------------- netadapt
@command("adapt")
def cmd_adapt(a: argparse.Namespace) -> int:
    from . import api

    state = api.adapt(**_kwargs(a))
    last = state["trajectory"][-1]
    print(f"adapted to {last['table_ms']:.4f} ms (table; budget {state['budget_ms']:.4f}), val top-1 "
          f"{last['accuracy']:.4f} -> {a.out}/adapted/, trajectory.csv, trajectory.png")
    return 0


# ---------------------------------------------------------------------- multipath
@command("multipath")
def cmd_multipath(a: argparse.Namespace) -> int:
    from . import api

    res = api.multipath(**_kwargs(a))
    for d, arch_id in res["paths"].items():
        print(f"{d}: {arch_id}  test top-1 {res['accuracy'][d]:.4f}")
    shared = sum(len(v) > 1 for v in res["node_map"].values())
    print(f"{res['nodes']} distinct nodes ({shared} shared), {res['unique_params'] / 1e6:.3f}M unique parameters, "
          f"{res['unique_macs'] / 1e6:.2f}M unique MACs -> {a.out}/")
    return 0


# ---------------------------------------------------------------------- pooling placement
@command("supernet-mixture")
def cmd_mixture(a: argparse.Namespace) -> int:
    from . import api

    ranking = api.supernet_mixture(**_kwargs(a))
    print(ranking.head(10).to_string(index=False))
    print(f"ranking of {len(ranking)} placements -> {a.out}/placement_ranking_M{a.models}.csv")
    return 0


# ---------------------------------------------------------------------- space
@command("space")
def cmd_space(a: argparse.Namespace) -> int:
    import numpy as np

    from . import cost
    from .api import load_space, space_info

    if a.sample:
        space = load_space(a.space)
        pop = space.sample(np.random.default_rng(a.seed), a.sample)
        macs, params = cost.macs(space, pop), cost.params(space, pop)
        for arch, m, p in zip(space.decode_many(pop), macs, params):
            print(f"{arch.id}  macs={m / 1e6:.2f}M  params={p / 1e6:.3f}M")
        return 0
    info = space_info(a.space, tables_dir=a.tables_dir)
    print(f"{info['name']}: {info['stages']} stages, {len(info['decisions'])} decisions, "
          f"{info['cardinality']:.3e} architectures")
    for name, choices in info["decisions"]:
        print(f"  {name:14s} {choices}")
    print(f"  stage options (distinct blocks with their input shapes): {info['stage_options']}")
    print("latency tables" + ("" if info["tables"] else f": none (nas profile --space {a.space} --device <name>)"))
    for t in info["tables"]:
        check = (f"; validated: Kendall tau {t['kendall_tau']:.3f}, {t['share_within_10pct']:.0%} within 10%"
                 if t["kendall_tau"] is not None else "")
        if t["earlier_validations"]:
            e = t["earlier_validations"][-1]
            check += (f" (replaces {len(t['earlier_validations'])} earlier; the last: Kendall tau "
                      f"{e['kendall_tau']:.3f}, {e['share_within_10pct']:.0%} within 10%)")
        here = (" (measured here)" if not t["differs_here"] else
                f" (this CPU; to measure against it here, profile again: {'; '.join(t['differs_here'])})"
                if t["this_cpu"] else "")
        print(f"  {t['device']:14s} {t['cpu_model']}{here}, {t['backend']}, "
              f"{t['threads']} thread(s), {t['entries']} entries, {t['date']}{check}")
        if t["problem"]:
            print(f"  {'':14s} not usable as it is: {t['problem']} (nas profile --space {a.space} --device "
                  f"{t['device']} times what it lacks)")
    print("accuracy predictors" + ("" if info["predictors"] else ": none (nas pipeline builds one)"))
    for p in info["predictors"]:
        cv = f", CV Kendall tau {p['cv_kendall_tau']:.3f}" if p["cv_kendall_tau"] is not None else ""
        print(f"  {p['dataset']:14s} {p['model']} on {p['samples']} fine-tuned networks{cv} ({p['version']})")
        if p["problem"]:
            print(f"  {'':14s} not usable as it is: {p['problem']}")
    return 0


# ---------------------------------------------------------------------- export
@command("export")
def cmd_export(a: argparse.Namespace) -> int:
    from . import api
    from .io import read_json

    out = api.export(**_kwargs(a, "quiet", "pick"), pick=tuple(a.pick))
    picked = f" for {read_json(out / 'arch.json', 'arch file')['id']}" if a.pick else ""
    print(f"wrote {out}/arch.json, model.safetensors, model.onnx{picked}")
    return 0


# ---------------------------------------------------------------------- parser: one function per command
def _common_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_device_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--train-device", default="cpu", metavar="TORCH_DEVICE",
                    help="where PyTorch trains: cpu (default), cuda, cuda:N or mps (with --workers on CUDA, "
                         "Ray shares each GPU among that many tasks)")


def _data_args(sp: argparse.ArgumentParser, *, samples: bool = False, fits: bool = False, parallel: bool = True,
               out_help: str = "pipeline folder (teacher/, blocks/, samples.jsonl)") -> None:
    sp.add_argument("--space", default="mobilenetv3_cifar")
    sp.add_argument("--data", default="../shared/data/cifar10.npz",
                    help="cifar10.npz, a CIFAR-10 folder, Fashion-MNIST IDX folder or an ImageFolder tree")
    sp.add_argument("--out", default="runs/predictor", help=out_help)
    sp.add_argument("--subset", type=int, default=None, help="use only N training images (quick runs)")
    if parallel:
        sp.add_argument("--workers", type=int, default=0, help="Ray workers (0: in-process)")
        sp.add_argument("--ray-address", help="join an existing Ray cluster")
    if fits:
        sp.add_argument("--dataset", default=None,
                        help="dataset name recorded in the predictor (predictors/<space>/<DATASET>.json); "
                             "default: the data's (cifar10, fashion-mnist, an ImageFolder tree's folder name)")
    if samples:
        sp.add_argument("--samples", type=int, default=40, help="fine-tuned architectures (M)")
        sp.add_argument("--sample-seeds", type=int, default=1, metavar="K",
                        help="fine-tune every sample with K seeds (--seed .. --seed+K-1) and fit their mean")
    _common_args(sp)


def _profile_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("profile", help="measure a latency table for a device (or export/import a bundle)")
    sp.add_argument("--space", help="search space name or YAML path")
    sp.add_argument("--device", help="device name <hardware>-<ort|torch>-<threads>t, e.g. cpu-ort-1t")
    sp.add_argument("--backend", choices=["onnxruntime", "ort", "torch"], default=None)
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--granularity", choices=["layer", "stage"], default=None,
                    help="time whole stage options, or first+repeated layers (default: stage; an existing table "
                         "keeps its own)")
    sp.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per entry")
    sp.add_argument("--chunk", type=int, default=150, help="entries interleaved together")
    sp.add_argument("--target-ms", type=float, default=2.0, help="length of one timing (back-to-back runs)")
    sp.add_argument("--spread-tol", type=float, default=0.10,
                    help="entries whose ratios spread more (p90/p10-1) get extra rounds")
    sp.add_argument("--validate", type=int, default=0, metavar="N",
                    help="also measure N random whole networks end to end and compare")
    sp.add_argument("--fit-networks", type=int, default=30, help="validation networks used to fit the correction")
    sp.add_argument("--out-root", default="latency_tables", help="tables go to OUT_ROOT/<space>/<device>.csv")
    sp.add_argument("--force", action="store_true", help="re-measure an existing table from scratch")
    sp.add_argument("--export-bundle", metavar="DIR", help="write a self-contained bundle for a remote device")
    sp.add_argument("--import-results", metavar="DIR",
                    help="turn a measured bundle into a table (named after the bundle's device, or --device)")
    _common_args(sp)


def _search_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("search", help="search for the Pareto front (default: cifar space, shipped table+predictor)")
    sp.add_argument("--space", default="mobilenetv3_cifar", help="search space name or YAML path")
    sp.add_argument("--table", help="tabular space: a CSV of decision and objective columns")
    sp.add_argument("--decisions", help="tabular space: comma-separated decision columns")
    sp.add_argument("--objectives", help="comma-separated, e.g. accuracy,latency@cpu-ort-1t,latency@cpu-ort-2t "
                    "(tabular: acc:max,lat_ms:min)")
    sp.add_argument("--constraint", action="append", help='e.g. "latency@cpu-ort-1t<=0.15" (repeatable)')
    sp.add_argument("--controller", default="evolution", choices=["evolution", "rl", "optuna", "random"])
    sp.add_argument("--sampler", default="nsga2", choices=["nsga2", "tpe", "random"], help="Optuna sampler")
    sp.add_argument("--evaluations", type=int, default=3000, help="distinct architectures to evaluate")
    sp.add_argument("--population", type=int, default=48, help="architectures per generation and island")
    sp.add_argument("--islands", type=int, default=None, help="independent controllers (rl: one per target)")
    sp.add_argument("--targets", help="rl: comma-separated latency targets (one controller each)")
    sp.add_argument("--workers", type=int, default=0, help="Ray workers (0: in-process, no Ray)")
    sp.add_argument("--ray-address", help="join an existing Ray cluster")
    sp.add_argument("--tables-dir", help="folder with <space>/<device>.csv tables (default: ./latency_tables, shipped)")
    sp.add_argument("--predictor", help="accuracy predictor JSON (default: predictors/<space>/<dataset>.json)")
    sp.add_argument("--dataset", default="cifar10",
                    help="without --predictor: use predictors/<space>/<DATASET>.json (./predictors, then shipped)")
    sp.add_argument("--placement-ranking", metavar="CSV",
                    help="stride-placement ranking from nas supernet-mixture --space: enables the objective "
                         "placement_score")
    sp.add_argument("--storage", help="optuna: storage URL (default: SQLite in the run folder)")
    sp.add_argument("--out", help="run folder (default: runs/<space>-<controller>-<config hash>)")
    sp.add_argument("--measure", action="store_true", help="re-measure the front end to end on this device")
    _common_args(sp)


def _teacher_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("teacher", help="train the reference network, or load a user checkpoint")
    _data_args(sp, parallel=False)  # one network: nothing to spread over workers
    sp.add_argument("--arch", default=None, help="arch id of the teacher (default: the space's largest, or the "
                                                 "one already in --out)")
    sp.add_argument("--checkpoint", help="use these weights instead of training (safetensors or state_dict)")
    sp.add_argument("--teacher-epochs", type=float, default=None)
    sp.add_argument("--teacher-lr", type=float, default=None)
    _train_device_arg(sp)


def _distill_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("distill", help="blockwise distillation: train every stage option, write block quality")
    _data_args(sp)
    sp.add_argument("--steps", type=int, default=1000, help="training steps per stage")
    _train_device_arg(sp)


def _predictor_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("predictor", help="fine-tune sampled architectures, or fit the predictor")
    sp.add_argument("action", choices=["sample", "fit"])
    _data_args(sp, samples=True, fits=True)
    sp.add_argument("--finetune-epochs", type=float, default=None)
    sp.add_argument("--finetune-lr", type=float, default=None)
    sp.add_argument("--predictor-out", help="where to write the predictor JSON (default: OUT/predictor.json)")
    sp.add_argument("--placement-ranking", metavar="CSV",
                    help="fit: also try the stride placement's score (nas supernet-mixture --space) as a feature")
    _train_device_arg(sp)


def _pipeline_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("pipeline", help="teacher, distillation, samples and fit in one resumable command")
    _data_args(sp, samples=True, fits=True)
    sp.add_argument("--steps", type=int, default=1000, help="distillation steps per stage")
    for prefix in ("teacher", "finetune"):
        sp.add_argument(f"--{prefix}-epochs", type=float, default=None)
        sp.add_argument(f"--{prefix}-lr", type=float, default=None)
    _train_device_arg(sp)


def _adapt_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("adapt", help="NetAdapt: shrink a trained network to a latency budget")
    _data_args(sp, out_help="NetAdapt folder (trajectory.csv, adapted/; a rerun resumes it)")
    sp.set_defaults(out="runs/adapt")
    sp.add_argument("--net", help="network folder (arch.json + model.safetensors), e.g. a teacher or export")
    sp.add_argument("--checkpoint", help="state_dict (safetensors or torch file) instead of --net")
    sp.add_argument("--arch", help="arch id of --checkpoint")
    sp.add_argument("--table", default="cpu-ort-1t", help="device name or table CSV")
    sp.add_argument("--budget-ms", type=float, default=None)
    sp.add_argument("--budget-ratio", type=float, default=None, help="e.g. 0.5: half the initial latency")
    sp.add_argument("--short-steps", type=int, default=100, help="fine-tune steps per proposal")
    sp.add_argument("--long-epochs", type=float, default=3.0, help="final fine-tune")
    sp.add_argument("--select", choices=["accuracy", "ratio"], default="accuracy")
    sp.add_argument("--no-measure", action="store_true", help="skip end-to-end measurements in the trajectory")
    _train_device_arg(sp)


def _multipath_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("multipath", help="multi-domain multi-path NAS: one RL controller per domain")
    sp.add_argument("--domains", nargs="+", required=True,
                    help="known names (cifar10, fashion-mnist), name=path[:classes], or a YAML run file")
    sp.add_argument("--space", default="mobilenetv3_cifar")
    sp.add_argument("--steps", type=int, default=3000)
    sp.add_argument("--warmup", type=int, default=600, help="steps of uniform path sampling first")
    sp.add_argument("--prioritise", choices=["lagging", "round_robin"], default="lagging")
    sp.add_argument("--device", help="latency table device for the reward's latency term, e.g. cpu-ort-1t")
    sp.add_argument("--latency-weight", type=float, default=0.0,
                    help="|w| of the latency term (MnasNet: 0.07); 0: accuracy only")
    sp.add_argument("--latency-target", type=float, default=None, help="target latency in ms (table units)")
    sp.add_argument("--latency-reward", choices=["mnasnet", "absolute"], default="mnasnet",
                    help="mnasnet: acc * (lat/target)^-w, a bonus for every ms saved; absolute (TuNAS): "
                         "acc - w * |lat/target - 1|, aims at the target from both sides")
    sp.add_argument("--share-weight", type=float, default=None,
                    help="reward x (joint params / separate params)^-w, the incentive to share nodes "
                         "(default 0.75); 0: none")
    sp.add_argument("--retrain-epochs", type=float, default=2.0)
    sp.add_argument("--select-epochs", type=float, default=0.0,
                    help="> 0: where the domains' paths differ, choose what to share by proxy retrains this long "
                         "(0: each domain keeps its controller's most likely path)")
    sp.add_argument("--workers", type=int, default=0, help="Ray workers for the proxy retrains (0: in-process)")
    sp.add_argument("--subset", type=int, default=None)
    sp.add_argument("--out", default="runs/multipath")
    _train_device_arg(sp)
    _common_args(sp)


def _supernet_mixture_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("supernet-mixture", help="rank downsampling placements with a balanced mixture of supernets")
    sp.add_argument("--models", type=int, default=4, help="M supernets (1: a single supernet)")
    sp.add_argument("--epochs", type=float, default=20.0)
    sp.add_argument("--warmup-epochs", type=float, default=0.0,
                    help="train one supernet this long, then clone it into the M models (M > 1)")
    sp.add_argument("--space", help="rank the stride placements of this search space (e.g. "
                    "mobilenetv3_cifar_placement) instead of the ResNet20-like pooling space")
    sp.add_argument("--reference", metavar="ARCH_ID",
                    help="with --space: the other decisions (default: every decision at its middle choice)")
    sp.add_argument("--blocks", type=int, default=9)
    sp.add_argument("--pools", type=int, default=2)
    sp.add_argument("--base-width", type=int, default=16)
    sp.add_argument("--widths", choices=["doubling", "fixed"], default="doubling",
                    help="fixed: each block keeps ResNet20's width for its position and a placement changes only "
                         "resolution (the paper's search); doubling: the width doubles after each pool")
    sp.add_argument("--data", default="../shared/data/cifar10.npz")
    sp.add_argument("--subset", type=int, default=None)
    sp.add_argument("--val-size", type=int, default=None,
                    help="validation images, out of the training set, that every placement is scored on (default "
                         "5000, at most a quarter of it): the ranking's noise shrinks as they grow")
    sp.add_argument("--out", default="runs/pooling")
    sp.add_argument("--scoring", choices=["best", "assigned"], default="best",
                    help="score a placement by its best model (M evaluations each), or only by the model its "
                         "assignment favours")
    _train_device_arg(sp)
    _common_args(sp)


def _space_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("space", help="describe a search space or sample from it")
    sp.add_argument("space", nargs="?", default="mobilenetv3_cifar")
    sp.add_argument("--sample", type=int, default=0, metavar="N", help="print N random architectures")
    sp.add_argument("--tables-dir", help="folder with <space>/<device>.csv tables (default: ./latency_tables, shipped)")
    _common_args(sp)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("export", help="write a network as safetensors + arch JSON + ONNX")
    sp.add_argument("arch_id", nargs="?", help="the network (or --pick one from --run's front)")
    sp.add_argument("--space", default="mobilenetv3_cifar")
    sp.add_argument("--run", help="search run folder: take the space from its run.json")
    sp.add_argument("--pick", action="append", default=[], metavar="CONSTRAINT",
                    help='with --run: the front\'s best network (on the run\'s first objective) meeting this, '
                         'e.g. "latency@cpu-ort-1t<=0.2" (repeatable)')
    sp.add_argument("--weights", help="state_dict to load (safetensors or torch file; loaded weights_only)")
    sp.add_argument("--out", default="exported")
    _common_args(sp)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nas", description="Hardware-aware neural architecture search.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    for add in (_profile_parser, _search_parser, _teacher_parser, _distill_parser, _predictor_parser,
                _pipeline_parser, _adapt_parser, _multipath_parser, _supernet_mixture_parser, _space_parser,
                _export_parser):
        add(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not args.command:
        args = parser.parse_args(["search", *(argv or [])]) if "search" in COMMANDS else args
        if not args.command:
            parser.print_help()
            return 0
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing measured is lost; run the same command again to continue", file=sys.stderr)
        return 130


def entry_point() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into e.g. head
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    entry_point()
