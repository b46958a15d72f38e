import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nas.blocks import count_params
from nas.errors import UserError
from nas.multipath import (DomainSpec, JointModel, MultipathConfig, Prioritiser, controller_step, load_domains,
                           make_controllers, most_likely, node_map, parse_domains, search_paths, select_sharing,
                           sharing_candidates, unique_costs)

from conftest import ROOT


@pytest.fixture(scope="module")
def second_npz(tmp_path_factory):
    """Another learnable domain: 10 classes by stripe orientation and colour."""
    rng = np.random.default_rng(1)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 40, (n, 32, 32, 3)).astype(np.uint8)
        for i, c in enumerate(y):
            if c < 5:
                x[i, :, 3 * c:3 * c + 3, :] = 220
            else:
                x[i, 3 * (c - 5):3 * (c - 5) + 3, :, 1] = 220
        return x, y

    (xtr, ytr), (xte, yte) = make(800), make(200)
    path = tmp_path_factory.mktemp("d2") / "stripes.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def test_controllers_learn_different_paths_for_different_rewards(mini_space):
    cfg = MultipathConfig(controller_lr=0.2)
    ctl = make_controllers(mini_space, ["a", "b"], cfg)
    kcols = [6 * s + 1 for s in range(len(mini_space.stages))]

    def reward(domain, pop):  # domain a likes kernel 3 (index 0), domain b kernel 5 (index 1)
        want = 0 if domain == "a" else 1
        return (pop[:, kcols] == want).mean(axis=1)

    for _ in range(60):
        for d in ("a", "b"):
            controller_step(mini_space, ctl[d], d, reward, 8)
    ka, kb = most_likely(ctl["a"])[kcols], most_likely(ctl["b"])[kcols]
    assert (ka == 0).all() and (kb == 1).all()


def test_shared_nodes_are_counted_once(mini_space):
    vec = mini_space.sample(np.random.default_rng(0), 2)
    same = {"a": mini_space.decode(vec[0]), "b": mini_space.decode(vec[0])}
    classes = {"a": 10, "b": 10}
    nm = node_map(mini_space, same)
    assert all(v == ["a", "b"] for v in nm.values()) and len(nm) == len(mini_space.stages)
    joint = JointModel(mini_space, same, classes)
    assert unique_costs(mini_space, same, classes)["unique_params"] == count_params(joint)
    other = dict(same, b=mini_space.decode(vec[1]))
    joint2 = JointModel(mini_space, other, classes)
    assert unique_costs(mini_space, other, classes)["unique_params"] == count_params(joint2)
    assert count_params(joint2) > count_params(joint)


def test_prioritiser_favours_lagging_domain_and_round_robin_alternates():
    p = Prioritiser(["a", "b"], "lagging", seed=0)
    for _ in range(20):
        p.update("a", 0.9)
        p.update("b", 0.3)
    picks = [p.pick() for _ in range(400)]
    assert picks.count("b") > 2 * picks.count("a") and picks.count("a") >= 400 * 0.2 / 2 * 0.7
    rr = Prioritiser(["a", "b"], "round_robin")
    assert [rr.pick() for _ in range(4)] == ["a", "b", "a", "b"]


def test_search_resumes_after_kill(mini_space, synthetic_npz, second_npz, tmp_path):
    specs = [DomainSpec("blobs", str(synthetic_npz)), DomainSpec("stripes", str(second_npz))]
    cfg = MultipathConfig(steps=40, warmup=10, batch_size=32, checkpoint_every=10, controller_every=5)
    full = search_paths(mini_space, load_domains(specs, mini_space, 32, 0), cfg, tmp_path / "a")
    # same intra-op thread count as this process: float sums split differently across threads differ in the last bits
    code = ("import sys, torch; sys.path.insert(0, %r); torch.set_num_threads(%d)\n"
            "from nas.space import SearchSpace\nfrom nas.multipath import DomainSpec, MultipathConfig, load_domains, search_paths\n"
            "space = SearchSpace.load(%r)\n"
            "specs = [DomainSpec('blobs', %r), DomainSpec('stripes', %r)]\n"
            "cfg = MultipathConfig(steps=40, warmup=10, batch_size=32, checkpoint_every=10, controller_every=5)\n"
            "search_paths(space, load_domains(specs, space, 32, 0), cfg, %r)\n") % (
        str(ROOT / "tests"), torch.get_num_threads(), str(mini_space.source), str(synthetic_npz), str(second_npz),
        str(tmp_path / "b"))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "b" / "search.ckpt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate()
    assert ckpt.exists(), err[-2000:]
    resumed = search_paths(mini_space, load_domains(specs, mini_space, 32, 0), cfg, tmp_path / "b")
    assert {d: a.id for d, a in resumed["paths"].items()} == {d: a.id for d, a in full["paths"].items()}
    for (k, v), w in zip(full["net"].state_dict().items(), resumed["net"].state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)
    import pandas as pd  # the reward history survives the kill: the resumed run's CSV is the uninterrupted one's

    h_full, h_resumed = (pd.read_csv(tmp_path / x / "search_history.csv") for x in ("a", "b"))
    pd.testing.assert_frame_equal(h_full, h_resumed, check_exact=False, rtol=1e-4)
    assert len(h_full) == 2 * cfg.steps // cfg.controller_every
    # the finished search is reused when only what comes after it changes; other search settings or
    # domains are refused (they failed with a state_dict traceback, or continued with a mixed schedule)
    from dataclasses import replace

    again = search_paths(mini_space, load_domains(specs, mini_space, 32, 0), replace(cfg, retrain_epochs=9.0),
                         tmp_path / "b")
    assert {d: a.id for d, a in again["paths"].items()} == {d: a.id for d, a in full["paths"].items()}
    with pytest.raises(UserError, match="steps=40, not steps=80"):
        search_paths(mini_space, load_domains(specs, mini_space, 32, 0), replace(cfg, steps=80), tmp_path / "b")
    other = [specs[0], DomainSpec("other", str(second_npz))]
    with pytest.raises(UserError, match="domains=.*stripes.*, not domains=.*other"):
        search_paths(mini_space, load_domains(other, mini_space, 32, 0), cfg, tmp_path / "b")


def test_bad_domains(mini_space, synthetic_npz):
    with pytest.raises(UserError, match="unknown domain 'svhn'"):
        parse_domains(["cifar10", "svhn"])
    with pytest.raises(UserError, match="at least two domains"):
        parse_domains(["cifar10"])
    specs = [DomainSpec("a", str(synthetic_npz), 100), DomainSpec("b", str(synthetic_npz))]
    with pytest.raises(UserError, match="declares 100 classes, the data has 10"):
        load_domains(specs, mini_space, 32, 0)
    assert parse_domains([f"x={synthetic_npz}:10", "fashion-mnist"])[0].num_classes == 10


def test_joint_model_from_supernet_matches_supernet(mini_space):
    from nas.multipath import MultiPathSupernet

    torch.manual_seed(0)
    net = MultiPathSupernet(mini_space, {"a": 10, "b": 7})
    for m in net.modules():  # non-trivial BN statistics, so that slicing mistakes show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    net.eval()
    vec = mini_space.sample(np.random.default_rng(4), 2)
    paths = {"a": mini_space.decode(vec[0]), "b": mini_space.decode(vec[1])}
    joint = JointModel(mini_space, paths, {"a": 10, "b": 7})
    joint.load_from_supernet(net)
    joint.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for d, arch in paths.items():
            torch.testing.assert_close(joint(x, d), net(x, arch, d), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(joint.domain_module(d)(x), net(x, arch, d), rtol=1e-4, atol=1e-5)


def test_build_joint_from_a_supernet_file_matches_the_supernet(mini_space, tmp_path):
    from nas.multipath import MultiPathSupernet, build_joint

    torch.manual_seed(0)
    net = MultiPathSupernet(mini_space, {"a": 10, "b": 7}).eval()
    torch.save(net.state_dict(), tmp_path / "supernet.pt")
    vec = mini_space.sample(np.random.default_rng(5), 2)
    paths = {"a": mini_space.decode(vec[0]), "b": mini_space.decode(vec[1])}
    joint = build_joint(mini_space, paths, {"a": 10, "b": 7}, tmp_path / "supernet.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for d, arch in paths.items():
            torch.testing.assert_close(joint(x, d), net(x, arch, d), rtol=1e-4, atol=1e-5)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pt.*search supernet.*nas multipath again"):
        build_joint(mini_space, paths, {"a": 10, "b": 7}, tmp_path / "bad.pt")


def test_shared_modules_keep_one_norm_per_domain_and_export_per_domain(mini_space, tmp_path):
    import onnxruntime as ort

    from nas.export import export_onnx
    from nas.multipath import DomainBatchNorm

    torch.manual_seed(0)
    arch = mini_space.decode(mini_space.sample(np.random.default_rng(2), 1)[0])
    joint = JointModel(mini_space, {"a": arch, "b": arch}, {"a": 10, "b": 10})
    norms = [m for m in joint.modules() if isinstance(m, DomainBatchNorm)]
    assert norms and all(set(m.norms) == {"a", "b"} for m in norms)
    with torch.no_grad():
        joint.classifiers["b"].load_state_dict(joint.classifiers["a"].state_dict())
        for m in norms:  # only domain b's statistics move
            m.norms["b"].running_mean.add_(1.0)
    joint.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ya, yb = joint(x, "a"), joint(x, "b")
        assert not torch.allclose(ya, yb)
        torch.testing.assert_close(joint.domain_module("b")(x), yb)
    export_onnx(joint.domain_module("b"), (1, 3, 32, 32), tmp_path / "b.onnx")
    sess = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
    np.testing.assert_allclose(got, yb[:1].numpy(), rtol=1e-3, atol=1e-4)


def test_batch_statistics_leave_running_statistics_untouched(mini_space):
    from nas.multipath import MultiPathSupernet, batch_statistics

    net = MultiPathSupernet(mini_space, {"a": 10})
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    arch = mini_space.decode(mini_space.sample(np.random.default_rng(0), 1)[0])
    with torch.no_grad(), batch_statistics(net):
        net(torch.randn(8, 3, 32, 32) * 5 + 3, arch, "a")
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(m.momentum is not None and m.momentum > 0 for m in net.modules()
               if isinstance(m, torch.nn.BatchNorm2d) and m.momentum is not None)


def test_sharing_incentive_makes_controllers_share_nodes(mini_space):
    from nas.multipath import sharing_ratio

    vec = mini_space.sample(np.random.default_rng(0), 2)
    a, b = mini_space.decode(vec[0]), mini_space.decode(vec[1])
    assert sharing_ratio(mini_space, {"x": a, "y": a}) < sharing_ratio(mini_space, {"x": a, "y": b}) <= 1.0
    # equal accuracy everywhere: only the sharing term separates paths
    cfg = MultipathConfig(controller_lr=0.3, share_weight=1.0)
    ctl = make_controllers(mini_space, ["x", "y"], cfg)
    for d, c in ctl.items():  # start from two different preferred paths
        c.policy.logits += np.random.default_rng(len(d) + ord(d)).normal(0, 0.5, c.policy.logits.shape)

    def bonus(domain, pop):
        others = {d: mini_space.decode(most_likely(c)) for d, c in ctl.items() if d != domain}
        return np.array([sharing_ratio(mini_space, {**others, domain: p}) for p in mini_space.decode_many(pop)]) ** -1.0

    flat = lambda domain, pop: np.full(len(pop), 0.5)  # noqa: E731
    start = sharing_ratio(mini_space, {d: mini_space.decode(most_likely(c)) for d, c in ctl.items()})
    for _ in range(150):
        for d in ("x", "y"):
            controller_step(mini_space, ctl[d], d, flat, 8, bonus=bonus)
    end = sharing_ratio(mini_space, {d: mini_space.decode(most_likely(c)) for d, c in ctl.items()})
    assert start > 0.75 and end < start and end < 0.6


def test_soft_sharing_ratio_agrees_with_the_exact_one_at_the_ends(mini_space):
    from nas.multipath import sharing_ratio, soft_sharing_ratio

    vec = mini_space.sample(np.random.default_rng(3), 2)
    a, b = mini_space.decode(vec[0]), mini_space.decode(vec[1])
    same = soft_sharing_ratio(mini_space, [a], [a])[0]
    assert same == pytest.approx(sharing_ratio(mini_space, {"x": a, "y": a}), rel=0.02)
    # one decision closer to the other path -> a lower (better) soft ratio, though no node is shared yet
    closer = vec[1].copy()
    j = int(np.flatnonzero(vec[0] != vec[1])[0])
    closer[j] = vec[0][j]
    soft = soft_sharing_ratio(mini_space, [b, mini_space.decode(closer)], [a])
    assert soft[1] < soft[0] <= 1.0 and same < soft[1]


def _differing_paths(space, stages: int):
    """Two paths of ``space`` that differ in exactly the first ``stages`` stages."""
    rng = np.random.default_rng(0)
    a = space.decode(space.sample(rng, 1)[0])
    while True:
        b = space.decode(space.sample(rng, 1)[0])
        if all(a.stages[s] != b.stages[s] for s in range(stages)):
            break
    from dataclasses import replace
    return {"x": a, "y": replace(b, stages=b.stages[:stages] + a.stages[stages:])}


def test_sharing_candidates_span_own_paths_to_full_sharing(mini_space):
    paths = _differing_paths(mini_space, 2)
    cands = sharing_candidates(mini_space, paths, limit=100)
    assert len(cands) == 9  # per differing stage: own options, or both take x's, or both take y's
    assert {d: a.id for d, a in cands[0].items()} == {d: a.id for d, a in paths.items()}
    full = [c for c in cands if c["x"] == c["y"]]
    assert len(full) == 4  # each of the two stages from either domain
    assert {paths["x"].id, paths["y"].id} <= {c["x"].id for c in full}  # all on x's path, all on y's
    assert len({tuple(a.id for a in c.values()) for c in cands}) == 9
    assert [c["x"].id for c in cands[1:3]] == [paths["x"].id, paths["y"].id] and cands[1]["y"] == paths["x"]
    few = sharing_candidates(mini_space, paths, limit=4, seed=1)
    assert len(few) == 4 and few[:3] == cands[:3]
    assert sharing_candidates(mini_space, {"x": paths["x"], "y": paths["x"]}) == [{"x": paths["x"], "y": paths["x"]}]


def test_select_sharing_takes_best_proxy_and_resumes(mini_space, synthetic_npz, second_npz, tmp_path, monkeypatch):
    import nas.multipath as mp

    specs = [DomainSpec("blobs", str(synthetic_npz)), DomainSpec("stripes", str(second_npz))]
    paths = _differing_paths(mini_space, 1)
    names = {"x": "blobs", "y": "stripes"}
    paths = {names[k]: v for k, v in paths.items()}
    cfg = MultipathConfig(batch_size=32, select_epochs=0.2)
    first = select_sharing(mini_space, specs, paths, cfg, tmp_path)
    rows = first["candidates"]
    assert len(rows) == 3 and all(0 <= v <= 1 for r in rows for v in r["val_accuracy"].values())
    best = max(r["mean_val_accuracy"] for r in rows)
    chosen = rows[first["chosen"]]
    assert chosen["mean_val_accuracy"] == best
    assert {d: a.id for d, a in first["paths"].items()} == chosen["paths"]
    assert len((tmp_path / "selection.jsonl").read_text().splitlines()) == 3

    def no_training(*a, **k):
        raise AssertionError("a saved proxy result was retrained")

    monkeypatch.setattr(mp, "proxy_accuracy", no_training)
    again = select_sharing(mini_space, specs, paths, cfg, tmp_path)
    assert again["candidates"] == rows
    monkeypatch.undo()

    # proxies that start from the search's supernet (as the CLI's final retraining does) are kept apart
    torch.save(mp.MultiPathSupernet(mini_space, {"blobs": 10, "stripes": 10}).state_dict(), tmp_path / "supernet.pt")
    warm = select_sharing(mini_space, specs, paths, cfg, tmp_path, init="supernet")
    assert len(warm["candidates"]) == 3
    assert len((tmp_path / "selection.jsonl").read_text().splitlines()) == 6


def test_multipath_runs_with_an_imagefolder_domain(mini_space, synthetic_npz, tmp_path):
    """A user's ImageNet-style tree as one domain (read at the space's 32 px, its own 3 classes) beside the
    archive: search with a checkpoint, joint model, retraining and per-domain ONNX, end to end."""
    from PIL import Image

    from nas.multipath import run_multipath

    rng = np.random.default_rng(0)
    tree = tmp_path / "tree"
    for c in range(3):
        (tree / f"class{c}").mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tree / f"class{c}" / f"{i}.png")
    specs = [DomainSpec("blobs", str(synthetic_npz)), DomainSpec("tree", str(tree))]
    cfg = MultipathConfig(steps=12, warmup=4, batch_size=16, checkpoint_every=6, controller_every=4,
                          retrain_epochs=0.2)
    res = run_multipath(mini_space, specs, tmp_path / "run", cfg, quiet=True)
    assert set(res["paths"]) == {"blobs", "tree"} and 0.0 <= res["accuracy"]["tree"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "run").glob("*.onnx")) == ["blobs.onnx", "tree.onnx"]


def test_interrupted_joint_retraining_resumes_exactly(mini_space, synthetic_npz, second_npz, tmp_path):
    """The joint model's retraining checkpoints: killed midway it continues to the uninterrupted result, finished
    it is reused, and other settings are refused."""
    from nas.multipath import train_joint

    specs = [DomainSpec("blobs", str(synthetic_npz)), DomainSpec("stripes", str(second_npz))]
    vec = mini_space.sample(np.random.default_rng(4), 2)
    paths = {"blobs": mini_space.decode(vec[0]), "stripes": mini_space.decode(vec[1])}
    settings = {"paths": {d: a.id for d, a in paths.items()}}

    def fresh():
        torch.manual_seed(0)
        return JointModel(mini_space, paths, {"blobs": 10, "stripes": 10}), load_domains(specs, mini_space, 32, 0)

    model, data = fresh()
    full = train_joint(model, data, 1.0, 0.05, 0, checkpoint=tmp_path / "a.ckpt", settings=settings,
                       checkpoint_every=4)
    assert full["steps_per_domain"] > 10
    killed, data = fresh()
    real, calls = data["stripes"].train._batch, [0]

    def dies_at_the_eleventh_batch(order, i):
        calls[0] += 1
        if calls[0] == 11:
            raise KeyboardInterrupt
        return real(order, i)

    data["stripes"].train._batch = dies_at_the_eleventh_batch
    with pytest.raises(KeyboardInterrupt):
        train_joint(killed, data, 1.0, 0.05, 0, checkpoint=tmp_path / "b.ckpt", settings=settings, checkpoint_every=4)
    resumed, data = fresh()
    train_joint(resumed, data, 1.0, 0.05, 0, checkpoint=tmp_path / "b.ckpt", settings=settings, checkpoint_every=4)
    for (k, v), w in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)
    again, data = fresh()  # finished: nothing is trained again
    assert train_joint(again, data, 1.0, 0.05, 0, checkpoint=tmp_path / "b.ckpt", settings=settings)["seconds"] > 0
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="lr=0.05.*not lr=0.1"):
        train_joint(*fresh(), 1.0, 0.1, 0, checkpoint=tmp_path / "b.ckpt", settings=settings)
