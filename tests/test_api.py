"""The Python API mirrors the command line: same results, same files, same errors (raised, not printed)."""
import json

import pandas as pd
import pytest

from nas import UserError, api
from nas.cli import main


def test_search_from_python_gives_the_command_lines_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = api.search(evaluations=400, constraints="latency@cpu-ort-1t<=0.2", seed=3, out="py", quiet=True)
    assert main(["search", "--evaluations", "400", "--constraint", "latency@cpu-ort-1t<=0.2", "--seed", "3",
                 "--out", "cli", "--quiet"]) == 0
    assert run.out.resolve() == (tmp_path / "py").resolve()
    pd.testing.assert_frame_equal(run.pareto, pd.read_csv(tmp_path / "cli" / "pareto.csv"))
    assert len(run.evaluated) == run.run["evaluated"] == 400
    assert (run.pareto["latency@cpu-ort-1t"] <= 0.2).all()


def test_api_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--targets"):
        api.search(controller="rl", targets="0.1,fast", out=tmp_path / "r")
    with pytest.raises(UserError, match="--train-device"):
        api.pipeline(tmp_path / "none.npz", tmp_path / "p", train_device="banana")
    assert not (tmp_path / "p").exists()
    with pytest.raises(UserError, match="--latency-weight: the latency term needs a latency table"):
        api.multipath(["cifar10", "fashion-mnist"], latency_weight=0.07, out=tmp_path / "mp")
    with pytest.raises(UserError, match="--latency-weight: the latency term needs a target"):
        api.multipath(["cifar10", "fashion-mnist"], latency_weight=0.07, device="cpu-ort-1t", out=tmp_path / "mp")
    with pytest.raises(UserError, match="--latency-target"):
        api.multipath(["cifar10", "fashion-mnist"], latency_target=0.1, out=tmp_path / "mp")
    with pytest.raises(UserError, match="--latency-reward: unknown reward 'tunas'"):
        api.multipath(["cifar10", "fashion-mnist"], latency_reward="tunas", out=tmp_path / "mp")
    assert not (tmp_path / "mp").exists()
    for budget, needle in (({}, "no budget given"), ({"budget_ms": 0.2, "budget_ratio": 0.5}, "both"),
                           ({"budget_ratio": 1.5}, "--budget-ratio: must be between 0 and 1")):
        with pytest.raises(UserError, match=needle):  # before the network is even looked for
            api.adapt(str(tmp_path / "no_such_net"), out=tmp_path / "ad", **budget)
    assert not (tmp_path / "ad").exists()
    with pytest.raises(UserError, match="--reference"):
        api.supernet_mixture(tmp_path / "none.npz", tmp_path / "m", reference="d1k3e3w75r")
    with pytest.raises(UserError, match="--blocks/--pools/--base-width"):
        api.supernet_mixture(tmp_path / "none.npz", tmp_path / "m", space="mobilenetv3_cifar_placement", pools=3)
    with pytest.raises(UserError, match="--scoring: unknown rule 'worst'"):  # before any data or training
        api.supernet_mixture(tmp_path / "none.npz", tmp_path / "m", scoring="worst")
    with pytest.raises(UserError, match="--val-size: 0 leaves no images"):
        api.supernet_mixture(tmp_path / "none.npz", tmp_path / "m", val_size=0)
    assert not (tmp_path / "m").exists()


def test_export_writes_the_network(tmp_path, cifar_space):
    arch = cifar_space.decode(cifar_space.largest())
    out = api.export(arch.id, tmp_path / "net", seed=1)
    assert {p.name for p in out.iterdir()} >= {"arch.json", "model.safetensors", "model.onnx"}


def test_export_picks_from_a_run_of_a_space_of_your_own_anywhere(tmp_path, monkeypatch):
    """--pick: the front's best network on the run's first objective meeting the bound; the run folder
    carries the space's YAML, so export needs neither the file nor the working directory of the search."""
    import yaml

    from conftest import TINY_SPACE

    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    monkeypatch.chdir(tmp_path)
    run = api.search("mine.yaml", objectives="proxy_accuracy,macs", evaluations=200, seed=0, out="run", quiet=True)
    bound = float(run.pareto["macs"].median())
    expected = run.pareto[run.pareto["macs"] <= bound].sort_values("proxy_accuracy").iloc[-1]["arch_id"]
    (tmp_path / "mine.yaml").unlink()
    monkeypatch.chdir(tmp_path / "run")
    out = api.export(run=tmp_path / "run", pick=f"macs<={bound}", out=tmp_path / "net")
    assert json.loads((out / "arch.json").read_text())["id"] == expected
    with pytest.raises(UserError, match="spans"):
        api.export(run=tmp_path / "run", pick="macs<=1", out=tmp_path / "none")
    with pytest.raises(UserError, match="not both"):
        api.export(expected, run=tmp_path / "run", pick="macs<=1e12", out=tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_search_dataset_picks_the_predictor_file(tmp_path, monkeypatch, capsys):
    """--dataset D: predictors/<space>/D.json (./predictors first); none there: the MACs proxy, said so."""
    import shutil

    from nas.resources import shipped_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "predictors" / "mobilenetv3_cifar").mkdir(parents=True)
    shutil.copy(shipped_dir("predictors") / "mobilenetv3_cifar" / "cifar10.json",
                tmp_path / "predictors" / "mobilenetv3_cifar" / "svhn.json")
    found = api.search(dataset="svhn", evaluations=100, out="a", quiet=True)
    assert "accuracy" in found.pareto and found.run["config"]["dataset"] == "svhn"
    missing = api.search(dataset="imagenet", evaluations=100, out="b", quiet=True)
    assert "proxy_accuracy" in missing.pareto and "accuracy" not in missing.pareto
    assert "this space has predictors for cifar10, svhn: choose with --dataset" in capsys.readouterr().out
    api.search("mobilenetv3_imagenet", evaluations=50, out="c", quiet=True)  # none for that space: how to make one
    assert "none exists for mobilenetv3_imagenet yet: build one with nas pipeline --space" in capsys.readouterr().out
