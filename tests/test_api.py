"""The Python API mirrors the command line: same results, same files, same errors (raised, not printed)."""
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


def test_export_writes_the_network(tmp_path, cifar_space):
    arch = cifar_space.decode(cifar_space.largest())
    out = api.export(arch.id, tmp_path / "net", seed=1)
    assert {p.name for p in out.iterdir()} >= {"arch.json", "model.safetensors", "model.onnx"}
