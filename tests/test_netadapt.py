import pytest
import torch

from nas.blocks import build_model
from nas.errors import UserError
from nas.latency.profile import Protocol, profile
from nas.latency.table import LatencyTable
from nas.netadapt import AdaptConfig, adapt, propose, shrink_weights


FAST = Protocol(rounds=2, chunk=16, target_s=0.0003)


@pytest.fixture(scope="module")
def mini_table(mini_space, tmp_path_factory):
    """A profiled table whose times are then replaced by a cost that grows with each entry's work. These tests
    check NetAdapt, not the profiler: live timings on a busy machine can rate the largest network faster than
    its smallest shrink, and NetAdapt then rightly refuses the budget."""
    measured = profile(mini_space, "cpu-ort-1t", out_root=tmp_path_factory.mktemp("t"), protocol=FAST, quiet=True)
    rows = measured.rows.copy()
    work = ((rows["cin"] + rows["cout"]) * (rows["hin"] / rows["stride"]) ** 2 * rows["depth"] * rows["kernel"] ** 2
            * rows["expansion"].clip(lower=1) * (1 + 0.1 * rows["se"].astype(bool)))
    rows["median_ms"] = 0.001 + 1e-8 * work
    meta = {k: v for k, v in measured.meta.items() if k not in ("correction", "validation")}
    return LatencyTable(rows, meta, measured.path).bind(mini_space)


def _largest(space):
    return space.decode(space.largest())


def test_kept_channels_are_copied_exactly(mini_space):
    a = _largest(mini_space)
    torch.manual_seed(0)
    src = build_model(a)
    vec = mini_space.encode(a)
    vec[3] = 0  # stage 1 narrower
    vec[6 + 2] = 0  # stage 2 smaller expansion
    vec[6 + 1] = 0  # stage 2 kernel 5 -> 3
    b = mini_space.decode(vec)
    dst = shrink_weights(src, a, b)
    s, d = src.state_dict(), dst.state_dict()

    def rows_in(small, big):
        """Index in ``big`` of each row of ``small`` (rows compared whole, bit for bit)."""
        return [int(torch.nonzero((big == r).flatten(1).all(1))[0]) for r in small]

    # stage 1's output channels: the strongest ones, kept in order ...
    idx = rows_in(d["blocks.1.0.conv_pwl.weight"], s["blocks.1.0.conv_pwl.weight"])
    assert idx == sorted(idx) and len(idx) == b.stages[0].channels
    # ... and the same channels feed stage 2 (its first 1x1 conv keeps exactly those input columns)
    pw_d, pw_s = d["blocks.2.0.conv_pw.weight"], s["blocks.2.0.conv_pw.weight"][:, idx]
    assert len(rows_in(pw_d, pw_s)) == pw_d.shape[0]
    for j in range(1, b.stages[0].depth):  # residual-tied: every block of stage 1 uses the same set
        rows = rows_in(d[f"blocks.1.{j}.conv_pw.weight"], s[f"blocks.1.{j}.conv_pw.weight"][:, idx])
        assert len(rows) == d[f"blocks.1.{j}.conv_pw.weight"].shape[0]
    # stage 2 kernel: the centre 3x3 of the kept 5x5 depthwise filters, bit for bit
    dw_s, dw_d = s["blocks.2.0.conv_dw.weight"], d["blocks.2.0.conv_dw.weight"]
    rows = rows_in(dw_d, dw_s[:, :, 1:4, 1:4])
    assert torch.equal(dw_d, dw_s[rows, :, 1:4, 1:4])
    with torch.no_grad():
        assert dst(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_one_iteration_meets_its_target(mini_space, mini_table, synthetic_npz, tmp_path):
    a = _largest(mini_space)
    torch.manual_seed(0)
    model = build_model(a)
    lat0 = float(mini_table.predict(mini_space.encode(a)[None])[0])
    cfg = AdaptConfig(budget_ratio=0.9, initial_step=0.1, short_steps=2, long_epochs=0.05, max_iterations=1)
    state = adapt(mini_space, model, a, mini_table, synthetic_npz, tmp_path, cfg, measure=False, quiet=True)
    first = state["trajectory"][1]
    assert first["table_ms"] <= lat0 * 0.9 + 1e-12
    assert (tmp_path / "trajectory.csv").exists() and (tmp_path / "adapted" / "model.onnx").exists()
    props = propose(mini_space, a, mini_table, lat0 * 0.95)
    assert props and all(p["meets_target"] for p in props)


def test_met_budget_changes_nothing(mini_space, mini_table, synthetic_npz, tmp_path):
    from nas.export import load_network

    a = _largest(mini_space)
    torch.manual_seed(0)
    model = build_model(a)
    state = adapt(mini_space, model, a, mini_table, synthetic_npz, tmp_path, AdaptConfig(budget_ratio=1.0),
                  measure=False, quiet=True)
    assert state["unchanged"] and state["iteration"] == 0
    arch2, model2 = load_network(tmp_path / "adapted")
    assert arch2 == a
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k])
    # the same folder with another budget would go on shrinking the finished network: refused
    with pytest.raises(UserError, match="budget_ratio=1.0, not budget_ratio=0.9"):
        adapt(mini_space, model, a, mini_table, synthetic_npz, tmp_path, AdaptConfig(budget_ratio=0.9),
              measure=False, quiet=True)
    assert adapt(mini_space, model, a, mini_table, synthetic_npz, tmp_path, AdaptConfig(budget_ratio=1.0),
                 measure=False, quiet=True)["unchanged"]  # the same settings: as before
    fmnist = tmp_path / "fashion-mnist"
    fmnist.mkdir()
    with pytest.raises(UserError, match="dataset=cifar10.*not dataset=fashion-mnist"):  # nor other data
        adapt(mini_space, model, a, mini_table, fmnist, tmp_path, AdaptConfig(budget_ratio=1.0), measure=False,
              quiet=True)


def test_impossible_budget_is_a_clear_error(mini_space, mini_table, synthetic_npz, tmp_path):
    a = _largest(mini_space)
    with pytest.raises(UserError, match="below the smallest shrink"):
        adapt(mini_space, build_model(a), a, mini_table, synthetic_npz, tmp_path, AdaptConfig(budget_ms=1e-6),
              measure=False, quiet=True)
    with pytest.raises(UserError, match="no budget"):
        adapt(mini_space, build_model(a), a, mini_table, synthetic_npz, tmp_path / "x", AdaptConfig(),
              measure=False, quiet=True)


def test_adaptation_killed_between_saving_a_network_and_its_state_resumes_exactly(mini_space, mini_table,
                                                                                   synthetic_npz, tmp_path,
                                                                                   monkeypatch):
    """The state file is the commit point: a kill after an iteration's network is saved but before the state
    names it redoes that iteration from the previous network, and ends as an uninterrupted run."""
    import nas.netadapt as na
    from nas.export import load_network

    a = _largest(mini_space)
    cfg = AdaptConfig(budget_ratio=0.8, initial_step=0.1, short_steps=2, long_epochs=0.05, max_iterations=2)

    def run(out):
        torch.manual_seed(0)
        return adapt(mini_space, build_model(a), a, mini_table, synthetic_npz, out, cfg, measure=False, quiet=True)

    full = run(tmp_path / "full")
    real_write, calls = na.write_json, []

    def killed_at_second_state_write(path, obj):
        calls.append(path)
        if len(calls) == 2:  # iteration 1's network is on disk, its state not yet
            raise KeyboardInterrupt
        real_write(path, obj)

    monkeypatch.setattr(na, "write_json", killed_at_second_state_write)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed")
    assert (tmp_path / "killed" / "networks" / "iteration001").exists()  # saved, but not current
    monkeypatch.setattr(na, "write_json", real_write)
    resumed = run(tmp_path / "killed")
    strip = lambda t: [(r["iteration"], r["arch_id"], r["accuracy"]) for r in t]  # noqa: E731
    # how many iterations the budget takes depends on the table timed here: one or two
    assert strip(resumed["trajectory"]) == strip(full["trajectory"]) and resumed["iteration"] == full["iteration"] >= 1
    (_, m1), (_, m2) = load_network(tmp_path / "full" / "adapted"), load_network(tmp_path / "killed" / "adapted")
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())
    assert [d.name for d in (tmp_path / "killed" / "networks").iterdir()] == [f"iteration{full['iteration']:03d}"]


def test_a_met_budget_is_never_an_impossible_one(mini_space, synthetic_npz, tmp_path):
    """A noisy table may time the smallest shrink slower than the network itself: a budget the network already
    meets still returns it unchanged, instead of the 'below the smallest shrink' error."""
    import numpy as np

    a = _largest(mini_space)
    largest = mini_space.encode(a)

    class InvertedTable:
        def bind(self, space):
            return self

        def predict(self, pop):
            return np.where((np.asarray(pop) == largest).all(axis=1), 1.0, 2.0)

    torch.manual_seed(0)
    state = adapt(mini_space, build_model(a), a, InvertedTable(), synthetic_npz, tmp_path,
                  AdaptConfig(budget_ratio=1.0), measure=False, quiet=True)
    assert state["unchanged"]
    with pytest.raises(UserError, match="below the smallest shrink"):
        adapt(mini_space, build_model(a), a, InvertedTable(), synthetic_npz, tmp_path / "b",
              AdaptConfig(budget_ratio=0.9), measure=False, quiet=True)


def test_measuring_against_a_table_from_elsewhere_is_refused(mini_space, mini_table, synthetic_npz, tmp_path):
    """Networks timed here on another machine's (or timing engine's) table would carry its milliseconds: refused
    before any work, unless the adaptation does not measure."""
    from nas.latency.table import LatencyTable

    foreign = LatencyTable(mini_table.rows, {**mini_table.meta, "fingerprint": {**mini_table.fingerprint,
                                                                              "cpu_model": "another CPU"}},
                           mini_table.path)
    a = _largest(mini_space)
    with pytest.raises(UserError, match=r"measured elsewhere or otherwise \(cpu_model: .*'another CPU'.*--no-measure"):
        adapt(mini_space, build_model(a), a, foreign, synthetic_npz, tmp_path, AdaptConfig(budget_ratio=0.9),
              quiet=True)
    assert not any(tmp_path.iterdir())
