import subprocess
import sys

import pytest

from nas.cli import main

from conftest import ROOT


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("argv,needle", [
    (["profile", "--space", "mobilenetv3_cifar", "--device", "gpu"], "--device"),
    (["profile", "--space", "no_such_space", "--device", "cpu-ort-1t"], "no such search space"),
    (["profile", "--space", "mobilenetv3_cifar", "--device", "cpu-ort-1t", "--threads", "4"], "contradicts"),
    (["profile", "--import-results", "/nonexistent/bundle"], "manifest.json"),
    (["export", "d9k9e9w1-x", "--space", "mobilenetv3_cifar"], "expected 5 stage tokens"),
    (["predictor", "sample", "--predictor-out", "p.json"], "--predictor-out: is an option of nas predictor fit"),
])
def test_user_errors_are_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in _error_line(capsys)


@pytest.mark.parametrize("argv", [
    ["pipeline", "--train-device", "cuda"],
    ["teacher", "--train-device", "cuda:3"],
    ["supernet-mixture", "--train-device", "cuda"],
    ["distill", "--train-device", "banana"],
    ["predictor", "sample", "--train-device", "tpu"],
    ["multipath", "--domains", "cifar10", "fashion-mnist", "--train-device", "mps"],
    ["adapt", "--net", "no_such_dir", "--budget-ratio", "0.5", "--train-device", "cuda"],
])
def test_unusable_train_device_fails_before_any_work(argv, tmp_path, capsys):
    import torch

    if torch.cuda.is_available() and argv[-1].startswith("cuda"):
        pytest.skip("this machine has a CUDA GPU")
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert "--train-device" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", [[], ["--export-bundle", "bundle"]])
def test_too_few_validation_networks_fail_before_any_timing(mode, tmp_path, capsys):
    argv = ["profile", "--space", "mobilenetv3_cifar", "--device", "cpu-ort-1t", "--validate", "12",
            "--out-root", str(tmp_path / "tables"), *mode]
    assert main([*argv[:-1], str(tmp_path / argv[-1])] if mode else argv) == 2
    assert "--fit-networks=30" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["pipeline"], ["predictor", "sample"]])
def test_too_few_samples_fail_before_any_training(command, tmp_path, capsys):
    assert main([*command, "--samples", "4", "--out", str(tmp_path / "run")]) == 2
    assert "--samples: only 4 fine-tuned samples" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_bad_space_file_through_console_script(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("name: x\nstages: [\n")
    out = subprocess.run([sys.executable, "-m", "nas.cli", "space", str(bad)], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "space.yaml" in out.stderr and "Traceback" not in out.stderr


def test_space_command_prints_summary(capsys):
    assert main(["space", "mobilenetv3_cifar", "--sample", "2", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("macs=" in line for line in lines)


def test_space_command_lists_its_tables_and_predictors(tmp_path, monkeypatch, capsys):
    """What a user on a new machine needs first: which tables exist for the space, measured on which CPU
    (and whether it is this one), and which predictors."""
    import shutil

    from nas import api
    from nas.latency import engine
    from nas.resources import shipped_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine, "cpu_model", lambda: "AMD EPYC")
    info = api.space_info("mobilenetv3_cifar")
    tables = {t["device"]: t for t in info["tables"]}
    assert {"cpu-ort-1t", "cpu-ort-2t", "xeon-ort-1t"} <= set(tables)
    assert tables["cpu-ort-1t"]["this_cpu"] and not tables["xeon-ort-1t"]["this_cpu"]
    assert any("cpu_model" in d for d in tables["xeon-ort-1t"]["differs_here"])
    assert all(t["entries"] > 4000 and t["kendall_tau"] > 0.8 for t in tables.values())
    assert [(p["dataset"], p["samples"]) for p in info["predictors"]] == [("cifar10", 280)]
    monkeypatch.setattr(engine, "cpu_model", lambda: "Another CPU")
    local = tmp_path / "latency_tables" / "mobilenetv3_cifar"  # ./latency_tables comes first, then shipped
    local.mkdir(parents=True)
    for f in ("cpu-ort-1t.csv", "cpu-ort-1t.json"):
        shutil.copy(shipped_dir("latency_tables") / "mobilenetv3_cifar" / f, local / f.replace("cpu-", "mine-"))
    assert main(["space"]) == 0
    out = capsys.readouterr().out
    assert "mine-ort-1t" in out and "cpu-ort-2t     AMD EPYC, onnxruntime" in out and "(this CPU)" not in out
    assert "cifar10        ridge:" in out
    import yaml

    cfg = yaml.safe_load((shipped_dir("search_spaces") / "mobilenetv3_cifar.yaml").read_text())
    cfg["defaults"]["kernel"] = [3, 5, 7, 9]  # edited: the table lacks the new entries, the predictor its options
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["space", "edited.yaml"]) == 0  # still described, with what does not fit said
    out = capsys.readouterr().out
    edited = api.space_info("edited.yaml")
    assert out.count("not usable as it is: space 'mobilenetv3_cifar' changed since") == \
        len(edited["tables"]) + len(edited["predictors"]) >= 2  # every table and predictor there is
    assert "times what it lacks" in out and "architectures" in out
    assert main(["space", "mobilenetv3_imagenet", "--tables-dir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "latency tables: none (nas profile --space mobilenetv3_imagenet" in out
    assert "accuracy predictors: none" in out


def test_export_command_writes_all_files(tmp_path, capsys):
    from nas.space import SearchSpace
    import numpy as np

    space = SearchSpace.load("mobilenetv3_cifar")
    arch = space.decode(space.sample(np.random.default_rng(0), 1)[0])
    assert main(["export", arch.id, "--out", str(tmp_path / "net")]) == 0
    for name in ("arch.json", "model.safetensors", "model.onnx"):
        assert (tmp_path / "net" / name).exists()


def test_embedded_default_search_runs_without_data(tmp_path, monkeypatch, capsys):
    """`nas search` with no arguments: shipped cifar table + shipped predictor, accuracy vs latency."""
    monkeypatch.chdir(tmp_path)  # no ./latency_tables or ./predictors here: the shipped ones must be found
    assert main(["search", "--evaluations", "400", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "on the front" in out
    import pandas as pd

    (run_dir,) = list((tmp_path / "runs").iterdir())
    pareto = pd.read_csv(run_dir / "pareto.csv")
    assert {"accuracy", "latency@cpu-ort-1t", "predictor_version", "table_hash@cpu-ort-1t"} <= set(pareto.columns)
    front = pareto.sort_values("latency@cpu-ort-1t")
    assert front["accuracy"].is_monotonic_increasing  # on a front, more latency must buy more accuracy


def test_teacher_for_a_224px_space_on_32px_archive_fails_before_training(synthetic_npz, tmp_path, capsys):
    argv = ["teacher", "--space", "mobilenetv3_imagenet", "--data", str(synthetic_npz), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "images are 32px, the space expects 224px" in _error_line(capsys)
    assert not (tmp_path / "run" / "teacher").exists()


def test_pipeline_steps_out_of_order_say_what_to_run_first(tmp_path, capsys):
    assert main(["distill", "--out", str(tmp_path)]) == 2
    assert "no teacher here" in _error_line(capsys)
    assert main(["predictor", "fit", "--out", str(tmp_path)]) == 2
    assert "no fine-tuned samples here" in _error_line(capsys)


class _Called(Exception):
    pass


@pytest.mark.parametrize("argv,fn", [
    (["search"], "search"),
    (["profile", "--space", "mobilenetv3_cifar", "--device", "cpu-ort-1t"], "profile"),
    (["profile", "--space", "mobilenetv3_cifar", "--device", "cpu-ort-1t", "--export-bundle", "b"], "export_bundle"),
    (["profile", "--import-results", "b"], "import_results"),
    (["teacher"], "teacher"), (["distill"], "distill"), (["predictor", "sample"], "sample"),
    (["predictor", "fit"], "fit"), (["pipeline"], "pipeline"), (["adapt", "--net", "n"], "adapt"),
    (["multipath", "--domains", "cifar10"], "multipath"), (["supernet-mixture"], "supernet_mixture"),
    (["export", "some-arch-id"], "export"), (["space"], "space_info"),
])
def test_each_command_is_its_api_function_with_the_same_defaults(argv, fn, monkeypatch):
    """The CLI passes only names the API function takes, and an option left out means the API's default."""
    import inspect

    from nas import api

    real, seen = getattr(api, fn), {}

    def spy(*args, **kwargs):
        seen.update(inspect.signature(real).bind(*args, **kwargs).arguments)
        raise _Called

    monkeypatch.setattr(api, fn, spy)
    with pytest.raises(_Called):
        main(argv)
    given = {a.lstrip("-").replace("-", "_") for a in argv} | {k for k, v in seen.items() if v in argv}  # positional
    defaults = {k: p.default for k, p in inspect.signature(real).parameters.items() if p.default is not p.empty}
    differ = {k: (v, defaults[k]) for k, v in seen.items() if k in defaults and k not in given and v != defaults[k]}
    assert seen and not differ
