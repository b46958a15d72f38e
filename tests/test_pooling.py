import math
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas.errors import UserError
from nas.pooling import MixtureConfig, PlacementNet, PlacementSpace, assignment, sinkhorn, train_mixture



@pytest.mark.parametrize("seed", range(5))
def test_balancing_gives_every_model_an_equal_share(seed):
    rng = np.random.default_rng(seed)
    W = rng.random((36, 4))
    for tau in (1.0, 10.0, 50.0):
        P = assignment(W, tau)
        np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(P.sum(axis=0), 9.0, rtol=0.02)
    # with a sharp tau the hard assignment is nearly balanced too
    hard = np.bincount(assignment(W, 50.0).argmax(axis=1), minlength=4)
    assert hard.min() >= 6


def test_sinkhorn_keeps_preferences():
    W = np.zeros((8, 2))
    W[:4, 0] = W[4:, 1] = 1.0
    P = sinkhorn(5.0 * W)
    assert (P[:4, 0] > 0.9).all() and (P[4:, 1] > 0.9).all()


def test_single_model_is_plain_supernet_training(synthetic_npz):
    from nas.data import load_data

    space = PlacementSpace(blocks=3, pools=1, base_width=4)
    cfg = MixtureConfig(models=1, epochs=1, batch_size=64, seed=3)
    res = train_mixture(space, load_data(synthetic_npz, batch_size=64, seed=3), cfg)
    assert np.allclose(res["P"], 1.0)
    # the same steps by hand: a placement drawn uniformly per batch, one SGD step on the one supernet
    data = load_data(synthetic_npz, batch_size=64, seed=3)
    torch.manual_seed(cfg.seed)
    net = PlacementNet(space)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rng = np.random.default_rng(cfg.seed)
    total = len(data.train)
    for step, (x, y) in enumerate(data.train):
        i = int(rng.integers(len(space.placements)))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        net.train()
        loss = F.cross_entropy(net(x, space.placements[i]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (k, a), b in zip(net.state_dict().items(), res["models"][0].state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_scoring_on_extra_held_out_images_pools_counts(synthetic_npz):
    from nas.data import load_data
    from nas.pooling import score_placements

    space = PlacementSpace(blocks=3, pools=1, base_width=4)
    data = load_data(synthetic_npz, batch_size=64, seed=0)
    res = train_mixture(space, data, MixtureConfig(models=1, epochs=0.5, batch_size=64))
    plain = score_placements(space, res, data).set_index("placement")
    both = score_placements(space, res, data, extra=data.test).set_index("placement")
    np.testing.assert_allclose(both["supernet_accuracy"], plain.loc[both.index, "supernet_accuracy"])
    n_val, n_test = sum(len(y) for _, y in data.val), sum(len(y) for _, y in data.test)
    pooled = (both["supernet_accuracy"] * n_val + both["extra_accuracy"] * n_test) / (n_val + n_test)
    np.testing.assert_allclose(both["pooled_accuracy"], pooled)
    assert "extra_accuracy" not in plain


def test_best_model_scoring_takes_each_placements_best_model(synthetic_npz):
    from nas.data import load_data
    from nas.pooling import score_placements

    space = PlacementSpace(blocks=3, pools=1, base_width=4)
    data = load_data(synthetic_npz, batch_size=64, seed=0)
    res = train_mixture(space, data, MixtureConfig(models=2, epochs=0.5, batch_size=64))
    best = score_placements(space, res, data).set_index("placement")
    per_model = best[["accuracy_model0", "accuracy_model1"]].to_numpy()
    np.testing.assert_allclose(best["supernet_accuracy"], per_model.max(axis=1))
    assert (best["model"].to_numpy() == per_model.argmax(axis=1)).all()
    assigned = score_placements(space, res, data, rule="assigned").set_index("placement")
    favoured = {space.name(p): int(np.argmax(res["P"][i])) for i, p in enumerate(space.placements)}
    assert assigned["model"].to_dict() == favoured
    for name, k in favoured.items():  # the same evaluation, whichever rule asked for it
        assert assigned.loc[name, "supernet_accuracy"] == pytest.approx(best.loc[name, f"accuracy_model{k}"])


def test_placement_params_count_the_network_weights():
    space = PlacementSpace(base_width=16)
    # pools before blocks 4 and 7: stem, 3 blocks at 16, 3 at 32 (projection into the first), 3 at 64, classifier
    by_hand = 3 * 16 * 9 + 3 * 9 * 2 * 16 * 16 + 9 * (16 * 32 + 32 * 32) + 16 * 32 + 2 * 9 * 2 * 32 * 32 \
        + 9 * (32 * 64 + 64 * 64) + 32 * 64 + 2 * 9 * 2 * 64 * 64 + 64 * 10 + 10
    assert space.params((4, 7)) == by_hand
    assert space.params((1, 2)) > space.params((4, 7)) > space.params((8, 9))
    assert len({space.macs(p) for p in space.placements}) == 1  # widths double where resolution halves


def test_placements_and_widths():
    space = PlacementSpace()
    assert len(space.placements) == 36 and space.default() == (4, 7)
    assert space.widths((4, 7)) == [16] * 3 + [32] * 3 + [64] * 3
    net = PlacementNet(space)
    with torch.no_grad():
        for p in space.placements[::7]:
            assert net(torch.zeros(1, 3, 32, 32), p).shape == (1, 10)
    with pytest.raises(UserError, match="cannot place 9 pools"):
        PlacementSpace(blocks=9, pools=9)


def test_fixed_widths_change_only_resolution():
    """The paper's ResNet20 search: every placement keeps ResNet20's widths and uses each block's weights whole,
    so parameters are equal and MACs grow the later the network pools; the default placement is ResNet20 under
    either rule."""
    fixed, doubling = PlacementSpace(widths_rule="fixed"), PlacementSpace()
    assert all(fixed.widths(p) == [16] * 3 + [32] * 3 + [64] * 3 for p in fixed.placements)
    assert fixed.params((4, 7)) == doubling.params((4, 7)) and fixed.macs((4, 7)) == doubling.macs((4, 7))
    assert len({fixed.params(p) for p in fixed.placements}) == 1
    assert fixed.macs((1, 2)) < fixed.macs((4, 7)) < fixed.macs((8, 9))
    net = PlacementNet(fixed)
    assert [b.conv1.weight.shape[0] for b in net.blocks] == fixed.widths((4, 7))  # stored unsliced
    assert sum(v.numel() for k, v in net.state_dict().items() if "conv" in k or "proj" in k or "fc" in k
               or k.startswith("stem.0")) >= fixed.params((4, 7))
    with torch.no_grad():
        for p in ((1, 2), (4, 7), (8, 9)):
            assert net(torch.zeros(2, 3, 32, 32), p).shape == (2, 10)
    with pytest.raises(UserError, match="unknown width rule 'wide'"):
        PlacementSpace(widths_rule="wide")


def test_bn_recalibration_gives_each_placements_own_statistics():
    """After recalibration, the sliced BN of every block holds the cumulative mean/var of its input over the
    recalibration batches (what nn.BatchNorm2d with momentum=None computes), so eval mode equals batch stats."""
    from nas.supernet import recalibrate_bn

    torch.manual_seed(0)
    space = PlacementSpace(base_width=4)
    net = PlacementNet(space)
    p = space.placements[5]
    x = torch.randn(64, 3, 16, 16)
    net.train()
    for _ in range(3):  # running stats written by other placements first
        net(torch.randn(8, 3, 16, 16) * 3 + 1, space.placements[0])
    recalibrate_bn(net, lambda b: net(b, p), [x])
    with torch.no_grad():
        eval_out = net(x, p)
        net.train()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.0  # batch statistics, running statistics untouched
        batch_out = net(x, p)
    # eval uses the unbiased running variance, training the biased one: equal up to that n/(n-1) factor
    torch.testing.assert_close(eval_out, batch_out, rtol=0.02, atol=0.02)


def test_stride_placements_of_a_search_space_are_ranked_and_searched(synthetic_npz, tmp_path, capsys):
    import json

    import pandas as pd
    import yaml

    from conftest import MINI
    from nas.cli import main
    from nas.pooling import StridePlacementSpace
    from nas.space import SearchSpace

    cfg = json.loads(json.dumps(MINI))
    cfg["name"] = "mini_placed"
    cfg["stages"].append({"name": "s3", "base_width": 32})
    for st in cfg["stages"]:
        st["stride"] = [1, 2]
    cfg["downsampling"] = {"total": 8}  # stem 2 x two of the three stages
    path = tmp_path / "mini_placed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ps = StridePlacementSpace(SearchSpace.load(path))
    assert len(ps.placements) == 3
    net = ps.build_supernet()
    for p in ps.placements:
        assert net(torch.randn(2, 3, 32, 32), p).shape == (2, 10)
    assert len({ps.macs(p) for p in ps.placements}) == 3  # where the network downsamples changes its cost

    assert main(["supernet-mixture", "--space", str(path), "--models", "2", "--epochs", "1", "--data",
                 str(synthetic_npz), "--out", str(tmp_path / "mix"), "--quiet"]) == 0
    ranking_path = tmp_path / "mix" / "placement_ranking_M2.csv"
    ranking = pd.read_csv(ranking_path)
    assert sorted(ranking["placement"]) == sorted(ps.name(p) for p in ps.placements)

    out = tmp_path / "search"
    assert main(["search", "--space", str(path), "--placement-ranking", str(ranking_path), "--objectives",
                 "placement_score,macs", "--evaluations", "40", "--population", "8", "--out", str(out),
                 "--quiet"]) == 0
    front = pd.read_csv(out / "pareto.csv")
    assert set(front["placement_score"]) <= set(ranking["supernet_accuracy"])

    ranking.iloc[1:].to_csv(tmp_path / "partial.csv", index=False)
    capsys.readouterr()
    assert main(["search", "--space", str(path), "--placement-ranking", str(tmp_path / "partial.csv"),
                 "--objectives", "placement_score,macs", "--evaluations", "8", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "partial.csv" in err and "no score for placement" in err and "Traceback" not in err
    assert main(["search", "--objectives", "placement_score,macs", "--evaluations", "8", "--quiet"]) != 0
    assert "--placement-ranking" in capsys.readouterr().err


def test_warmup_trains_one_supernet_then_clones_it(synthetic_npz):
    from nas.data import load_data

    space = PlacementSpace(blocks=3, pools=1, base_width=4)
    data = load_data(synthetic_npz, batch_size=64, seed=3)
    whole = train_mixture(space, data, MixtureConfig(models=3, epochs=1, batch_size=64, warmup_epochs=1, seed=3))
    assert whole["split_at"] == whole["steps"]
    first = whole["models"][0].state_dict()
    for m in whole["models"][1:]:
        assert all(torch.equal(first[k], v) for k, v in m.state_dict().items())
    assert np.allclose(whole["W"], whole["W"][:, :1])
    half = train_mixture(space, load_data(synthetic_npz, batch_size=64, seed=3),
                         MixtureConfig(models=3, epochs=1, batch_size=64, warmup_epochs=0.5, seed=3))
    assert 0 < half["split_at"] < half["steps"]
    a, b = (m.state_dict() for m in half["models"][:2])
    assert not all(torch.equal(a[k], b[k]) for k in a)  # they trained apart after the split


def test_interrupted_mixture_resumes_exactly(synthetic_npz, tmp_path):
    from nas.data import load_data
    from nas.errors import UserError

    space = PlacementSpace(blocks=3, pools=1, base_width=4)
    cfg = MixtureConfig(models=2, epochs=2, batch_size=64, warmup_epochs=0.5, seed=1)
    whole = train_mixture(space, load_data(synthetic_npz, batch_size=64, seed=1), cfg)

    data = load_data(synthetic_npz, batch_size=64, seed=1)
    calls, real_batch = [0], data.val.batch

    def dies_midway(i):  # the job is killed during step 7, after the checkpoint of step 5
        calls[0] += 1
        if calls[0] == 7:
            raise KeyboardInterrupt
        return real_batch(i)

    data.val.batch = dies_midway
    ckpt = tmp_path / "m.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_mixture(space, data, cfg, checkpoint=ckpt, checkpoint_every=5)
    assert ckpt.exists()
    resumed = train_mixture(space, load_data(synthetic_npz, batch_size=64, seed=1), cfg, checkpoint=ckpt,
                            checkpoint_every=5)
    np.testing.assert_array_equal(resumed["W"], whole["W"])
    for a, b in zip(resumed["models"], whole["models"]):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(UserError, match="trained with epochs=2.*not epochs=1"):
        train_mixture(space, load_data(synthetic_npz, batch_size=64, seed=1), MixtureConfig(models=2, epochs=1,
                      batch_size=64, seed=1), checkpoint=ckpt)


def test_mixture_folder_refuses_other_data_of_the_same_size(synthetic_npz, tmp_path, capsys):
    """Another archive with as many images and classes gives the same number of steps: without the data in
    the checkpoint's settings, the rerun would continue the first data's supernets on the second."""
    import shutil

    from nas.cli import main

    other = tmp_path / "other.npz"
    shutil.copy(synthetic_npz, other)
    args = ["supernet-mixture", "--blocks", "3", "--pools", "1", "--base-width", "4", "--models", "1",
            "--epochs", "0.2", "--out", str(tmp_path / "mix"), "--quiet"]
    assert main(args + ["--data", str(synthetic_npz)]) == 0
    assert main(args + ["--data", str(synthetic_npz)]) == 0  # same data: the finished mixture is reused
    capsys.readouterr()
    assert main(args + ["--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "data=synthetic.npz, not data=other.npz" in err and "Traceback" not in err


def test_cli_ranks_fixed_width_placements(synthetic_npz, tmp_path, capsys):
    import pandas as pd

    from nas.cli import main

    out = tmp_path / "mix"
    args = ["supernet-mixture", "--blocks", "3", "--pools", "1", "--base-width", "4", "--widths", "fixed",
            "--models", "1", "--epochs", "0.2", "--data", str(synthetic_npz), "--out", str(out), "--quiet"]
    assert main(args) == 0
    ranking = pd.read_csv(out / "placement_ranking_M1.csv")
    space = PlacementSpace(blocks=3, pools=1, base_width=4, widths_rule="fixed")
    assert sorted(ranking["macs"]) == sorted(space.macs(p) for p in space.placements)
    assert ranking["macs"].nunique() == 3
    capsys.readouterr()
    assert main(args[:-1] + ["--widths", "doubling", "--quiet"]) == 2  # not the space this folder trained
    assert "widths_rule" in capsys.readouterr().err


def test_cli_scores_placements_on_val_size_images(synthetic_npz, tmp_path, capsys):
    from nas.cli import main
    from nas.io import read_json

    out = tmp_path / "mix"
    args = ["supernet-mixture", "--blocks", "3", "--pools", "1", "--base-width", "4", "--models", "1",
            "--epochs", "0.2", "--data", str(synthetic_npz), "--out", str(out), "--quiet"]
    assert main(args + ["--val-size", "200"]) == 0
    assert read_json(out / "mixture_M1.json")["val_images"] == 200
    capsys.readouterr()
    assert main(args + ["--val-size", "100"]) == 2  # other validation images: not the run this checkpoint holds
    err = capsys.readouterr().err
    assert "val_size" in err and "Traceback" not in err


def test_mixture_checkpoint_from_before_settings_still_resumes(synthetic_npz, tmp_path):
    """Checkpoints written before the settings were recorded carry only the old fingerprint."""
    import json

    from nas.data import load_data
    from nas.errors import UserError
    from nas.io import read_torch, write_torch
    from nas.pooling import mixture_settings

    space = PlacementSpace(blocks=3, pools=1, base_width=4)
    cfg = MixtureConfig(models=1, epochs=0.5, batch_size=64, seed=2)
    ckpt = tmp_path / "m.ckpt"
    first = train_mixture(space, load_data(synthetic_npz, batch_size=64, seed=2), cfg, checkpoint=ckpt)
    st = read_torch(ckpt, "mixture checkpoint")
    extra = json.loads(st["extra"])
    settings = extra.pop("settings")
    extra["fingerprint"] = json.dumps({"config": asdict(cfg), "space": space.describe(), "steps": settings["steps"]},
                                      sort_keys=True, default=str)
    write_torch(ckpt, {**st, "extra": json.dumps(extra)})
    again = train_mixture(space, load_data(synthetic_npz, batch_size=64, seed=2), cfg, checkpoint=ckpt)
    np.testing.assert_array_equal(again["W"], first["W"])
    assert settings == mixture_settings(space, cfg, settings["steps"])
    with pytest.raises(UserError, match="another mixture configuration"):
        train_mixture(space, load_data(synthetic_npz, batch_size=64, seed=2), replace(cfg, seed=3), checkpoint=ckpt)


def test_standalone_run_counts_hits_on_test_and_extra_images(synthetic_npz):
    from dataclasses import asdict

    from nas.pooling import standalone_task

    space = PlacementSpace(blocks=3, pools=1, base_width=4)
    run = lambda seed, extra=None: standalone_task(asdict(space), (2,), str(synthetic_npz), 0.3, seed, None,  # noqa: E731
                                                   extra_path=extra)
    row = run(1, str(synthetic_npz))
    assert (row["placement"], row["seed"], row["test_images"], row["extra_images"]) == ("pool@2", 1, 300, 1500)
    assert row["standalone_accuracy"] == row["test_correct"] / 300
    assert row["extra_accuracy"] == row["extra_correct"] / 1500
    again = run(1)  # same seed, same network; no extra images asked for, none counted
    assert again["standalone_accuracy"] == row["standalone_accuracy"] and "extra_correct" not in again
    # every record names its recipe (the data by file name), so ground truths of two recipes never mix
    assert row["recipe"] == {"space": asdict(space), "data": synthetic_npz.name, "epochs": 0.3, "subset": None}


def _image_tree(root, classes: int, per_class: int, size: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_mixture_runs_on_an_imagefolder_tree_at_the_spaces_size(tmp_path, capsys):
    """ImageNet-style data: the ResNet20-like space reads it at its own 32 px and takes the data's class count;
    a search space whose classes do not match the data is a one-line error."""
    import json

    import pandas as pd

    from conftest import MINI
    from nas.cli import main

    tree = _image_tree(tmp_path / "tree", classes=3, per_class=60, size=48)  # one batch of 128 to train on
    out = tmp_path / "mix"
    assert main(["supernet-mixture", "--data", str(tree), "--blocks", "3", "--pools", "1", "--base-width", "4",
                 "--models", "1", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    ranking = pd.read_csv(out / "placement_ranking_M1.csv")
    assert sorted(ranking["placement"]) == ["pool@1", "pool@2", "pool@3"]
    assert json.loads((out / "mixture_M1.json").read_text())["space"]["num_classes"] == 3

    import yaml

    cfg = json.loads(json.dumps(MINI))
    for st in cfg["stages"]:
        st["stride"] = [1, 2]
    cfg["downsampling"] = {"total": 4}
    path = tmp_path / "mini_placed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["supernet-mixture", "--space", str(path), "--data", str(tree), "--epochs", "1",
                 "--out", str(tmp_path / "mix2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "3 classes" in err and "Traceback" not in err
