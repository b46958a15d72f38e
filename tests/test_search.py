import numpy as np
import pandas as pd
import pytest

from nas.cli import main
from nas.objectives import parse_objectives
from nas.pareto import hypervolume, non_dominated_mask
from nas.search.run import SearchConfig, run_search
from nas.report import write_outputs


@pytest.fixture(scope="module")
def small_table(tmp_path_factory, cifar_space):
    """7,776 real architectures (kernel x expansion per stage), scored by MACs proxy and the shipped table."""
    from nas.evaluator import Evaluator
    from nas.tabular import subspace_population, table_from_space

    objs = parse_objectives("proxy_accuracy,latency@cpu-ort-1t")
    ev = Evaluator.build(cifar_space, objs)
    pop = subspace_population(cifar_space, {"kernel": 3, "expansion": 2, "width": 1})
    frame = table_from_space(cifar_space, ev, pop)
    path = tmp_path_factory.mktemp("tab") / "small.csv"
    frame.to_csv(path, index=False)
    return path, [d.name for d in cifar_space.decisions]


def _cfg(table, decisions, **kw):
    base = dict(table=str(table), decisions=decisions, objectives=["proxy_accuracy:max", "latency@cpu-ort-1t:min"],
                evaluations=300, population=24, seed=0)
    return SearchConfig(**{**base, **kw})


def _hv_ratio(res, frame):
    F_all = np.stack([-frame["proxy_accuracy"].to_numpy(), frame["latency@cpu-ort-1t"].to_numpy()], axis=1)
    ref = F_all.max(axis=0) + 1e-3
    F = np.stack([-res.archive.values["proxy_accuracy"], res.archive.values["latency@cpu-ort-1t"]], axis=1)
    return hypervolume(F, ref) / hypervolume(F_all, ref)


@pytest.mark.parametrize("controller,kw", [("evolution", {}), ("rl", {}), ("optuna", {"sampler": "nsga2"}),
                                           ("optuna", {"sampler": "tpe"})])
def test_controllers_beat_random(small_table, controller, kw):
    path, decisions = small_table
    frame = pd.read_csv(path)
    rand = _hv_ratio(run_search(_cfg(path, decisions, controller="random"), quiet=True), frame)
    res = run_search(_cfg(path, decisions, controller=controller, **kw), quiet=True)
    assert len(res.archive) == 300
    assert _hv_ratio(res, frame) > rand


@pytest.mark.parametrize("controller,kw", [("evolution", {}), ("rl", {}), ("random", {}),
                                           ("optuna", {"sampler": "nsga2"}), ("optuna", {"sampler": "tpe"})])
def test_large_seeds_run(small_table, controller, kw):
    """Seeds are mixed per island and per ask; none of them may leave the 32 bits Optuna/numpy accept."""
    path, decisions = small_table
    res = run_search(_cfg(path, decisions, controller=controller, seed=2**31 + 7, evaluations=60, **kw), quiet=True)
    assert len(res.archive) == 60


def test_same_seed_same_front_and_resume_equals_uninterrupted(small_table, tmp_path):
    path, decisions = small_table
    cfg = _cfg(path, decisions, controller="evolution")
    full = run_search(cfg, out=tmp_path / "a", quiet=True)
    again = run_search(cfg, quiet=True)
    np.testing.assert_array_equal(full.archive.pop, again.archive.pop)
    part = run_search(cfg, out=tmp_path / "b", quiet=True, stop_after=4)
    assert len(part.archive) < 300
    resumed = run_search(cfg, out=tmp_path / "b", quiet=True)
    np.testing.assert_array_equal(resumed.archive.pop, full.archive.pop)
    np.testing.assert_array_equal(resumed.front_mask(), full.front_mask())


@pytest.mark.parametrize("controller", ["rl", "random"])
def test_resume_is_exact_for_rl_and_random(small_table, tmp_path, controller):
    path, decisions = small_table
    cfg = _cfg(path, decisions, controller=controller, evaluations=150)
    full = run_search(cfg, quiet=True)
    run_search(cfg, out=tmp_path, quiet=True, stop_after=2)
    resumed = run_search(cfg, out=tmp_path, quiet=True)
    np.testing.assert_array_equal(resumed.archive.pop, full.archive.pop)


def test_resume_with_other_settings_is_refused(small_table, tmp_path):
    from nas.errors import UserError

    path, decisions = small_table
    run_search(_cfg(path, decisions, evaluations=60), out=tmp_path, quiet=True)
    with pytest.raises(UserError, match="other settings"):
        run_search(_cfg(path, decisions, evaluations=60, seed=1), out=tmp_path, quiet=True)
    state = tmp_path / "state" / "evaluated.npz"
    state.write_bytes(state.read_bytes()[:100])  # damaged (e.g. a full disk): one line, not a zipfile traceback
    with pytest.raises(UserError, match="damaged search state"):
        run_search(_cfg(path, decisions, evaluations=60), out=tmp_path, quiet=True)


def test_resume_after_the_scoring_files_changed_is_refused(small_table, tmp_path):
    """Same options, but the table (or predictor) file was re-made in between: the networks already scored
    with the old values would share one front with the new ones."""
    import shutil

    from nas.errors import UserError

    src, decisions = small_table
    path = shutil.copy(src, tmp_path / "table.csv")
    cfg = _cfg(path, decisions, evaluations=120)
    run_search(cfg, out=tmp_path / "run", quiet=True, stop_after=1)
    frame = pd.read_csv(path)
    frame["latency@cpu-ort-1t"] *= 1.5
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match="holds networks scored with table_hash=.*not table_hash="):
        run_search(cfg, out=tmp_path / "run", quiet=True)


def test_checkpoint_from_before_a_new_setting_resumes(small_table, tmp_path):
    """A setting added later (here: dataset) counts as its default in an older checkpoint."""
    import json

    path, decisions = small_table
    cfg = _cfg(path, decisions, evaluations=120)
    full = run_search(cfg, quiet=True)
    run_search(cfg, out=tmp_path, quiet=True, stop_after=1)
    ck_path = tmp_path / "state" / "checkpoint.json"
    ck = json.loads(ck_path.read_text())
    del ck["config"]["dataset"]
    ck_path.write_text(json.dumps(ck))
    resumed = run_search(cfg, out=tmp_path, quiet=True)
    np.testing.assert_array_equal(resumed.archive.pop, full.archive.pop)


def _wait_until_dead(actor, timeout_s: float = 60.0) -> None:
    import time

    import ray
    from ray.exceptions import RayActorError

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=timeout_s)
        except RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the killed actor still answers")


def test_ray_workers_give_the_in_process_result_and_survive_a_dead_actor(small_table):
    import ray

    from nas.parallel import ray_session
    from nas.search.run import LocalIslands, RayIslands

    path, decisions = small_table
    cfg = _cfg(path, decisions, controller="evolution", islands=2, evaluations=200)
    local = run_search(cfg, quiet=True)
    remote = run_search(cfg, workers=2, quiet=True)
    np.testing.assert_array_equal(local.archive.pop, remote.archive.pop)
    # a worker that dies is re-created from its last state and the step retried
    with ray_session(2):
        opts = [{"population": 8}, {"population": 8}]
        islands, twin = RayIslands(cfg, opts), LocalIslands(cfg, opts)
        islands.step([8, 8], [None, None])
        twin.step([8, 8], [None, None])
        states = [islands.call(i, "state_dict") for i in range(2)]
        ray.kill(islands.actors[0], no_restart=True)
        _wait_until_dead(islands.actors[0])  # ray.kill is asynchronous: a call right after it may still run
        got = islands.step([8, 8], states)
        want = twin.step([8, 8], [None, None])
        assert islands.restarts == 1
        for (p1, _), (p2, _) in zip(got, want):
            np.testing.assert_array_equal(p1, p2)
        islands.close()


def test_tabular_outputs_and_budget(small_table, tmp_path):
    path, decisions = small_table
    res = run_search(_cfg(path, decisions, evaluations=120), out=tmp_path, quiet=True)
    run = write_outputs(res, tmp_path)
    pareto = pd.read_csv(tmp_path / "pareto.csv")
    for col in decisions + ["proxy_accuracy", "latency@cpu-ort-1t", "arch_id", "seed", "toolkit_version"]:
        assert col in pareto.columns
    assert pareto.columns[0] == "arch_id"
    evaluated = pd.read_csv(tmp_path / "evaluated.csv")
    assert len(evaluated) == 120 and evaluated["arch_id"].is_unique
    assert run["front_size"] == len(pareto) == int(non_dominated_mask(
        np.stack([-evaluated["proxy_accuracy"], evaluated["latency@cpu-ort-1t"]], 1)).sum())
    assert (tmp_path / "pareto.png").stat().st_size > 1000


def test_missing_rows_are_infeasible_and_never_loop(tmp_path):
    # a 3x3 grid with most combinations missing: the run ends once nothing new can be found
    frame = pd.DataFrame({"a": [0, 1, 2], "b": [0, 1, 2], "acc": [0.5, 0.6, 0.7], "lat": [1.0, 2.0, 3.0]})
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    cfg = SearchConfig(table=str(path), decisions=["a", "b"], objectives=["acc:max", "lat:min"], evaluations=50,
                       population=4, controller="evolution")
    res = run_search(cfg, quiet=True)
    assert len(res.archive) <= 9
    found = np.isfinite(res.archive.values["acc"])
    assert found.sum() <= 3


def test_infeasible_constraint_still_finishes(small_table):
    path, decisions = small_table
    res = run_search(_cfg(path, decisions, evaluations=100, constraints=["latency@cpu-ort-1t<=0.0001"]), quiet=True)
    assert len(res.archive) == 100 and res.front_mask().sum() == 0


@pytest.mark.parametrize("argv,needle", [
    (["search", "--objectives", "accuracy,speed", "--quiet"], "unknown objective 'speed'"),
    (["search", "--objectives", "macs,latency@cpu-ort-9t", "--quiet"], "no latency table"),
    (["search", "--objectives", "macs,params", "--constraint", "macs<<3", "--quiet"], "cannot parse"),
    (["search", "--objectives", "macs,params", "--constraint", "flops<=3", "--quiet"], "unknown objective or metric"),
    (["search", "--table", "/nonexistent.csv", "--decisions", "a", "--objectives", "x:max", "--quiet"], "not found"),
])
def test_bad_search_arguments(argv, needle, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


def test_malformed_tabular_csv(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text('a,b,acc\n1,2,"0.5\n')
    assert main(["search", "--table", str(bad), "--decisions", "a,b", "--objectives", "acc:max",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "bad.csv" in capsys.readouterr().err
    bad.write_text("a,b,acc\n1,2,0.5\n")
    assert main(["search", "--table", str(bad), "--decisions", "a,z", "--objectives", "acc:max",
                 "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "decision column(s) z" in capsys.readouterr().err


def test_measure_flags_and_drops_members_that_break_the_constraint(tiny_space, tmp_path):
    """--measure re-times the front here; members whose measured latency breaks the bound leave the front."""
    import yaml

    from conftest import TINY_SPACE
    from nas.latency.profile import Protocol, profile

    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(yaml.safe_dump(TINY_SPACE))
    profile(tiny_space, "cpu-ort-1t", out_root=tmp_path / "tables", protocol=Protocol(rounds=2, chunk=16,
                                                                                     target_s=0.0003), quiet=True)
    cfg = SearchConfig(space=str(space_file), objectives=["proxy_accuracy", "latency@cpu-ort-1t"], evaluations=40,
                       population=8, tables_dir=str(tmp_path / "tables"))
    res = run_search(cfg, out=tmp_path / "run", quiet=True)
    lat = res.archive.values["latency@cpu-ort-1t"][res.front_mask()]
    bound = float(np.median(lat))  # about half the front should break it once measured
    cfg2 = SearchConfig(**{**cfg.to_json(), "constraints": [f"latency@cpu-ort-1t<={bound}"]})
    res2 = run_search(cfg2, out=tmp_path / "run2", quiet=True)
    run = write_outputs(res2, tmp_path / "run2", measure=True)
    pareto = pd.read_csv(tmp_path / "run2" / "pareto.csv")
    assert "measured_latency@cpu-ort-1t" in pareto.columns and "latency_error@cpu-ort-1t" in pareto.columns
    assert (pareto["measured_latency@cpu-ort-1t"] > 0).all()
    assert not pareto["breaks_constraint_measured"].any()
    n_before = int(res2.front_mask().sum())
    assert run["front_size"] + run["dropped_by_measurement"] == n_before
    if run["dropped_by_measurement"]:
        dropped = pd.read_csv(tmp_path / "run2" / "pareto_dropped.csv")
        assert (dropped["measured_latency@cpu-ort-1t"] > bound).all()


@pytest.mark.parametrize("kw,option", [({"targets": [0.1]}, "--targets"), ({"sampler": "tpe"}, "--sampler"),
                                       ({"storage": "sqlite:///x.db"}, "--storage")])
def test_another_controllers_option_is_an_error_not_ignored(small_table, kw, option):
    from nas.errors import UserError

    path, decisions = small_table
    with pytest.raises(UserError, match=f"{option}: only the"):
        run_search(_cfg(path, decisions, controller="evolution", evaluations=60, **kw), quiet=True)


def test_measure_that_cannot_run_here_is_refused_before_the_search(tmp_path, monkeypatch, capsys):
    """A table from another CPU (or no latency objective at all) cannot be re-measured: said before the
    search runs, not after it, and nothing is written."""
    from nas.latency import engine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine, "cpu_model", lambda: "Some Other CPU")
    assert main(["search", "--measure", "--evaluations", "100", "--out", "run", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "table cpu-ort-1t was measured elsewhere or otherwise (cpu_model:" in err and "nas profile --device" in err
    assert not (tmp_path / "run").exists()
    assert main(["search", "--measure", "--objectives", "accuracy,macs", "--evaluations", "100", "--out", "run2",
                 "--quiet"]) == 2
    assert "no latency objective or constraint to re-measure" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def _latency_only_policy(space, table, reward: str, target: float, steps: int = 150) -> float:
    """A REINFORCE controller whose accuracy term is flat, so only the latency term moves it; the table
    latency of its most likely path after ``steps`` updates."""
    from nas.objectives import Objective
    from nas.search.rl import Reinforce

    rl = Reinforce(space, [Objective("accuracy", "max"), Objective("latency", "min")], seed=0, target=target,
                   w=-0.5, reward=reward)
    for _ in range(steps):
        pop = rl.ask(8)
        rl.tell(pop, np.stack([np.full(len(pop), -0.5), table.predict(pop)], axis=1), np.zeros(len(pop)))
    return float(table.predict(rl.policy.most_likely()[None])[0])


def test_absolute_reward_aims_at_the_target_and_mnasnet_goes_under_it(cifar_space):
    from nas.latency.table import LatencyTable
    from nas.search.rl import absolute_reward, mnasnet_reward

    acc, lat = np.array([0.6, 0.6, 0.6]), np.array([0.5, 1.0, 1.5])
    np.testing.assert_allclose(absolute_reward(acc, lat, 1.0, -0.5), [0.35, 0.6, 0.35])
    assert mnasnet_reward(acc, lat, 1.0, -0.07)[0] > 0.6  # a bonus for being under the target
    table = LatencyTable.find(cifar_space, "cpu-ort-1t").bind(cifar_space)
    target = float(np.median(table.predict(cifar_space.sample(np.random.default_rng(0), 2000))))
    aimed = _latency_only_policy(cifar_space, table, "absolute", target)
    under = _latency_only_policy(cifar_space, table, "mnasnet", target)
    assert abs(aimed / target - 1) < 0.1
    assert under < 0.8 * target
