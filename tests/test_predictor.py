import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nas.errors import UserError
from nas.predictor.model import Predictor

from conftest import ROOT

@pytest.fixture(scope="module")
def teacher_dir(mini_space, synthetic_npz, tmp_path_factory):
    from nas.predictor.teacher import train_teacher
    from nas.train import TrainConfig

    out = tmp_path_factory.mktemp("pipe")
    rep = train_teacher(mini_space, synthetic_npz, out, cfg=TrainConfig(epochs=3, lr=0.1), batch_size=64, quiet=True)
    assert rep["val_top1"] > 0.3  # learnable data: well above 10% chance
    return out


def test_distillation_lowers_nsr_and_resumes(mini_space, synthetic_npz, teacher_dir, tmp_path):
    from nas.predictor.distill import DistillConfig, distill_stage

    short = DistillConfig(steps=3, checkpoint_every=3, score_images=128, batch_size=64)
    before = distill_stage(str(mini_space.source), str(teacher_dir / "teacher"), str(synthetic_npz), 1, short,
                           str(tmp_path / "a"))
    longer = DistillConfig(steps=60, checkpoint_every=20, score_images=128, batch_size=64)
    after = distill_stage(str(mini_space.source), str(teacher_dir / "teacher"), str(synthetic_npz), 1, longer,
                          str(tmp_path / "b"))
    assert np.mean(after["nsr"]) < 0.8 * np.mean(before["nsr"])
    assert len(after["nsr"]) == mini_space.stages[1].n_options

    # interrupt after the first checkpoint (kill -9), then resume: same result as an uninterrupted run
    code = ("import sys; from nas.predictor.distill import DistillConfig, distill_stage\n"
            f"cfg = DistillConfig(steps=60, checkpoint_every=20, score_images=128, batch_size=64)\n"
            f"distill_stage({str(mini_space.source)!r}, {str(teacher_dir / 'teacher')!r}, {str(synthetic_npz)!r}, 1, "
            f"cfg, {str(tmp_path / 'c')!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    ckpt = tmp_path / "c" / "stage1.ckpt"
    import time

    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert ckpt.exists()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < 60
    from dataclasses import replace

    from nas.errors import UserError

    with pytest.raises(UserError, match="steps=60, not steps=90"):  # its own recipe only
        distill_stage(str(mini_space.source), str(teacher_dir / "teacher"), str(synthetic_npz), 1,
                      replace(longer, steps=90), str(tmp_path / "c"))
    resumed = distill_stage(str(mini_space.source), str(teacher_dir / "teacher"), str(synthetic_npz), 1, longer,
                            str(tmp_path / "c"))
    np.testing.assert_allclose(resumed["nsr"], after["nsr"], rtol=1e-4, atol=1e-6)


def test_option_scores_ignore_running_statistics_and_training_batches(mini_space, synthetic_npz, teacher_dir,
                                                                     tmp_path):
    """An option's NSR is measured with each held-out batch's own BN statistics: whatever the running
    statistics hold and wherever the training loader stands, the scores are the same."""
    from nas.data import load_data
    from nas.predictor.distill import DistillConfig, distill_stage, load_stage_weights, score_options
    from nas.predictor.teacher import load_teacher
    from nas.supernet import SlicedBN

    cfg = DistillConfig(steps=5, score_images=128, batch_size=64)
    stored = distill_stage(str(mini_space.source), str(teacher_dir / "teacher"), str(synthetic_npz), 1, cfg,
                           str(tmp_path))
    t_arch, teacher = load_teacher(teacher_dir / "teacher")
    net = load_stage_weights(mini_space, t_arch, 1, tmp_path / "stage1.safetensors")
    data = load_data(synthetic_npz, batch_size=64)
    first = score_options(mini_space, net, teacher, data, 1, cfg)
    np.testing.assert_allclose(first, stored["nsr"], rtol=1e-5)
    for m in net.modules():
        if isinstance(m, SlicedBN):
            m.running_mean.normal_()
            m.running_var.uniform_(0.1, 10.0)
    next(iter(data.train))
    assert score_options(mini_space, net, teacher, data, 1, cfg) == first


def test_network_from_blocks_is_the_chain_of_distilled_stages(mini_space, synthetic_npz, teacher_dir, tmp_path):
    """Folding each stage's adapter into the next 1x1 conv is exact, at every width: stage s sees the first
    `cin` channels of the (adapted) previous output, as it did during distillation."""
    from nas.predictor.distill import DistillConfig, load_stage_weights, recalibrate, run_distillation, teacher_features
    from nas.predictor.sample import build_from_blocks
    from nas.predictor.teacher import load_teacher

    run_distillation(mini_space, teacher_dir / "teacher", synthetic_npz, tmp_path,
                     DistillConfig(steps=5, score_images=64, batch_size=64), quiet=True)
    t_arch, teacher = load_teacher(teacher_dir / "teacher")
    x = torch.randn(4, 3, 32, 32)
    for seed in range(3):
        vec = mini_space.sample(np.random.default_rng(seed), 1)[0]
        vec[3] = seed % 2  # narrow and wide first stages both
        arch = mini_space.decode(vec)
        net = build_from_blocks(mini_space, arch, t_arch, teacher, tmp_path, [x]).eval()
        with torch.no_grad():
            h = teacher.blocks[0](teacher.bn1(teacher.conv_stem(x)))
            cin = arch.frame.first_channels
            for s, sc in enumerate(arch.stages):
                st = load_stage_weights(mini_space, t_arch, s, tmp_path / f"stage{s}.safetensors")
                c = {"depth": sc.depth, "kernel": sc.kernel, "expansion": sc.expansion, "cout": sc.channels,
                     "se": sc.se, "act": sc.act}
                recalibrate(st, c, [teacher_features(teacher, x, s)[0][:, :cin]])
                h = st(h[:, :cin], c)
                cin = sc.channels
            want = teacher.classifier(teacher.flatten(teacher.act2(teacher.conv_head(teacher.global_pool(
                teacher.blocks[-1](h))))))
            torch.testing.assert_close(net(x), want, rtol=1e-4, atol=1e-4)


def test_fine_tuned_samples_are_saved_once_and_scored_on_val_and_test(mini_space, synthetic_npz, teacher_dir,
                                                                        tmp_path):
    from nas.latency.engine import load_jsonl
    from nas.predictor.distill import DistillConfig, run_distillation
    from nas.predictor.sample import recipe_id, run_samples
    from nas.train import TrainConfig

    run_distillation(mini_space, teacher_dir / "teacher", synthetic_npz, tmp_path / "blocks",
                     DistillConfig(steps=3, score_images=64, batch_size=64), quiet=True)
    pop = mini_space.sample(np.random.default_rng(0), 2)
    cfg = TrainConfig(epochs=1, lr=0.01, max_steps=2)
    results = tmp_path / "samples.jsonl"
    args = (mini_space, pop, teacher_dir / "teacher", tmp_path / "blocks", synthetic_npz, results, cfg)
    recs = run_samples(*args, quiet=True, score_test=True)
    assert sorted(r["arch_id"] for r in recs) == sorted(a.id for a in mini_space.decode_many(pop))
    for r in recs:
        assert r["recipe"] == recipe_id(cfg) and r["seed"] == 0
        assert 0.0 <= r["val_top1"] <= 1.0 and 0.0 <= r["test_top1"] <= 1.0
    assert run_samples(*args, quiet=True) == recs  # a rerun finds them all and fine-tunes nothing
    assert len(load_jsonl(str(results))) == 2
    other = run_samples(*args[:-2], tmp_path / "plain.jsonl", cfg, quiet=True)  # the test split only on request
    assert all("test_top1" not in r for r in other)


def _toy_predictor(space, seed=0):
    from nas.predictor.fit import fit_predictor

    rng = np.random.default_rng(seed)
    nsr = [rng.random(st.n_options) for st in space.stages]
    pop = space.sample(rng, 40)
    from nas.predictor.model import compute_features

    X = compute_features(space, nsr, [f"nsr_{st.name}" for st in space.stages], pop)
    acc = 0.9 - 0.1 * X.sum(axis=1) + 0.005 * rng.standard_normal(40)
    return fit_predictor(space, nsr, pop, acc, {"dataset": "toy"}, repeats=1)


def test_predictor_json_roundtrip_and_vectorised(mini_space, tmp_path):
    pred = _toy_predictor(mini_space)
    assert pred.meta["cv"][pred.meta["chosen"]]["kendall_tau"] > 0.8
    path = pred.save(tmp_path / "p.json")
    again = Predictor.load(path, mini_space)
    pop = mini_space.sample(np.random.default_rng(1), 500)
    np.testing.assert_array_equal(pred.predict(pop), again.predict(pop))
    loop = np.array([again.predict(row[None])[0] for row in pop[:50]])
    np.testing.assert_allclose(again.predict(pop[:50]), loop, rtol=1e-12)
    assert pred.version == again.version
    again.meta["date"] = "another day"  # provenance: refitting the same model keeps its version
    assert again.version == pred.version
    again.meta["model"] = {**again.meta["model"], "intercept": again.meta["model"].get("intercept", 0.0) + 1e-3}
    assert again.version != pred.version


def test_a_predictor_that_does_not_rank_says_so(mini_space):
    from nas.predictor.fit import fit_predictor

    good = _toy_predictor(mini_space)
    assert good.quality_warning() is None
    rng = np.random.default_rng(0)
    nsr = [np.zeros(st.n_options) for st in mini_space.stages]  # no signal: every prediction the same
    flat = fit_predictor(mini_space, nsr, mini_space.sample(rng, 12), rng.random(12), {"dataset": "toy"},
                         repeats=1, feature_sets={"nsr": ()})
    warning = flat.quality_warning()
    assert "barely ranks" in warning and "12 fine-tuned samples" in warning
    # what the record shows about why: samples that all scored alike, a teacher at chance level
    same = fit_predictor(mini_space, nsr, mini_space.sample(rng, 12), np.full(12, 0.086), {"dataset": "toy"},
                         repeats=1, feature_sets={"nsr": ()})
    assert "every fine-tuned sample scored 0.086" in same.quality_warning()
    same.meta["teacher"] = {"val_top1": 0.09}
    assert "teacher is at chance level: validation top-1 0.090 with 10 classes" in same.quality_warning()

    import warnings

    from nas import api
    from nas.errors import WeakPredictorWarning

    with pytest.warns(WeakPredictorWarning, match="barely ranks"):  # what api.fit and api.pipeline return through
        assert api._warn_if_weak(flat) is flat
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api._warn_if_weak(good)


def test_mlp_predictor_roundtrip(mini_space, tmp_path):
    from nas.predictor.fit import fit_mlp
    from nas.predictor.model import predict_from_features

    rng = np.random.default_rng(0)
    X, y = rng.random((30, 3)), rng.random(30)
    model = fit_mlp(X, y)
    back = json.loads(json.dumps(model))
    np.testing.assert_allclose(predict_from_features(back, X), predict_from_features(model, X))


def test_bad_predictor_files(mini_space, cifar_space, tmp_path):
    pred = _toy_predictor(mini_space)
    path = pred.save(tmp_path / "p.json")
    with pytest.raises(UserError, match="made for space 'mini_cifar'"):
        Predictor.load(path, cifar_space)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="malformed predictor"):
        Predictor.load(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="not an hwnas predictor"):
        Predictor.load(bad)
    meta = json.loads(path.read_text())
    del meta["model"]
    bad.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="lacks 'model'"):
        Predictor.load(bad)


def test_predict_speed_is_vectorised(cifar_space):
    """Not a timing assertion: one call scores a large population without a Python loop per arch."""
    rng = np.random.default_rng(0)
    nsr = [rng.random(st.n_options) for st in cifar_space.stages]
    from nas.predictor.fit import fit_ridge
    from nas.predictor.model import FORMAT, VERSION

    names = [f"nsr_{st.name}" for st in cifar_space.stages] + ["log_macs"]
    meta = {"format": FORMAT, "version": VERSION, "space": cifar_space.name, "dataset": "toy", "features": names,
            "stage_nsr": [v.tolist() for v in nsr], "model": fit_ridge(rng.random((20, 6)), rng.random(20))}
    pred = Predictor(meta).bind(cifar_space)
    out = pred.predict(cifar_space.sample(rng, 100_000))
    assert out.shape == (100_000,) and np.isfinite(out).all()


def test_stratified_sample_spreads_over_macs(cifar_space):
    from nas import cost
    from nas.predictor.sample import stratified_sample

    pop = stratified_sample(cifar_space, 10, seed=0)
    assert len(np.unique(pop, axis=0)) == 10
    ref = cost.macs(cifar_space, cifar_space.sample(np.random.default_rng(99), 50_000))
    deciles = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])

    def bins_hit(p):
        return len(np.unique(np.searchsorted(deciles, cost.macs(cifar_space, p))))

    assert bins_hit(pop) >= 9  # one architecture per MACs decile (up to sampling noise of the bin edges)
    rand_hits = [bins_hit(cifar_space.sample(np.random.default_rng(s), 10)) for s in range(20)]
    assert bins_hit(pop) > np.mean(rand_hits)


def test_placement_score_feature_is_fitted_saved_and_checked(tmp_path):
    import json

    import yaml

    from conftest import MINI
    from nas.predictor.fit import fit_predictor
    from nas.space import SearchSpace

    cfg = json.loads(json.dumps(MINI))
    cfg["name"] = "mini_placed"
    cfg["stages"].append({"name": "s3", "base_width": 32})
    for st in cfg["stages"]:
        st["stride"] = [1, 2]
    cfg["downsampling"] = {"total": 8}
    path = tmp_path / "mini_placed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    space = SearchSpace.load(path)
    rng = np.random.default_rng(0)
    nsr = [rng.random(st.n_options) for st in space.stages]
    scores = np.array([0.70, 0.60, 0.65])
    pop = space.sample(rng, 60)
    _, opt, _ = space.grid_index(pop)
    # accuracy = block quality + where the network downsamples (which the NSR features cannot see)
    acc = 0.5 - 0.05 * sum(nsr[s][opt[:, s]] for s in range(3)) + scores[pop[:, -1]] + rng.normal(0, 0.002, 60)
    pred = fit_predictor(space, nsr, pop, acc, {"dataset": "synthetic"}, placement_scores=scores)
    assert "placement_score" in pred.meta["features"]
    plain = max(v["kendall_tau"] for k, v in pred.meta["cv"].items() if "placement" not in k)
    assert pred.meta["cv"][pred.meta["chosen"]]["kendall_tau"] > plain
    saved = pred.save(tmp_path / "p.json")
    again = Predictor.load(saved, space)
    np.testing.assert_allclose(again.predict(pop), pred.predict(pop))
    meta = json.loads(saved.read_text())
    meta["placement_scores"] = meta["placement_scores"][:2]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="placement scores"):
        Predictor.load(tmp_path / "bad.json", space)


def test_fit_targets_average_the_fine_tune_seeds(cifar_space, tmp_path):
    from nas.latency.engine import append_jsonl
    from nas.predictor.sample import mean_accuracy, recipe_id, stratified_sample
    from nas.train import TrainConfig

    cfg = TrainConfig(epochs=2.0, lr=0.01, seed=0)
    other = TrainConfig(epochs=1.0, lr=0.01, seed=0)
    pop = stratified_sample(cifar_space, 5, 0)
    ids = [a.id for a in cifar_space.decode_many(pop)]
    rows = [{"arch_id": i, "val_top1": 0.5 + 0.01 * k + 0.002 * s, "seed": s, "recipe": recipe_id(cfg)}
            for k, i in enumerate(ids) for s in (0, 1)]
    rows += [{"arch_id": i, "val_top1": 0.1, "seed": 0, "recipe": recipe_id(other)} for i in ids]  # never mixed in
    results = tmp_path / "samples.jsonl"
    append_jsonl(str(results), rows)
    np.testing.assert_allclose(mean_accuracy(cifar_space, pop, results, cfg, 1), 0.5 + 0.01 * np.arange(5))
    np.testing.assert_allclose(mean_accuracy(cifar_space, pop, results, cfg, 2), 0.501 + 0.01 * np.arange(5))
    with pytest.raises(UserError, match=r"lack a fine-tune with seeds \[0, 1, 2\].*--sample-seeds"):
        mean_accuracy(cifar_space, pop, results, cfg, 3)


def test_training_tasks_share_a_gpu_among_workers_and_name_it_plainly():
    from nas.parallel import device_in_task, training_task_options
    from nas.train import resolve_device

    assert resolve_device(None) == resolve_device("cpu") == "cpu"
    assert training_task_options("cpu", 2) == {"num_cpus": 1}
    assert training_task_options("cuda:1", 4) == {"num_cpus": 1, "num_gpus": 0.25}
    # Ray points CUDA_VISIBLE_DEVICES at the GPU it assigned: inside the task that GPU is plain "cuda"
    assert device_in_task("cuda:1") == "cuda" and device_in_task("cpu") == "cpu"


def test_whole_pipeline_runs_on_an_imagefolder_tree(mini_space, synthetic_npz, tmp_path):
    """ImageNet-style data: teacher, distillation (checkpointing its loader), fine-tunes (reseeding theirs) and
    the fit, at the space's input size, with images decoded by DataLoader workers."""
    from PIL import Image

    from nas.predictor.distill import DistillConfig
    from nas.predictor.pipeline import PipelineConfig, run_pipeline
    from nas.train import TrainConfig

    arrays = np.load(synthetic_npz)
    root = tmp_path / "tree"
    for split, (x, y), per_class in (("train", (arrays["x_train"], arrays["y_train"]), 16),
                                     ("val", (arrays["x_test"], arrays["y_test"]), 2)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in np.flatnonzero(y == c)[:per_class]:
                Image.fromarray(x[i]).save(root / split / f"class{c}" / f"{i}.png")
    cfg = PipelineConfig(teacher=TrainConfig(max_steps=6, lr=0.05),
                         distill=DistillConfig(steps=4, checkpoint_every=2, batch_size=16, score_images=16),
                         finetune=TrainConfig(max_steps=2, lr=0.01), samples=7)
    pred = run_pipeline(mini_space, root, tmp_path / "run", cfg, quiet=True)
    assert pred.meta["n_samples"] == 7 and np.isfinite(pred.predict(mini_space.sample(np.random.default_rng(0), 5))).all()
    teacher = json.loads((tmp_path / "run" / "teacher.json").read_text())
    assert teacher["device"] == "cpu" and 0.0 <= teacher["test_top1"] <= 1.0
    # no --dataset: the predictor is named after the data, not after CIFAR-10
    assert teacher["dataset"] == "tree" and pred.meta["dataset"] == "tree"


def test_samples_dataset_comes_from_the_teachers_data(synthetic_npz, tmp_path):
    from nas.errors import UserError
    from nas.predictor.pipeline import samples_dataset

    with pytest.raises(UserError, match="--dataset"):
        samples_dataset(tmp_path)  # no teacher report: nothing to tell it by
    (tmp_path / "teacher.json").write_text(json.dumps({"data": str(synthetic_npz)}))  # a report from before
    assert samples_dataset(tmp_path) == "cifar10"
    (tmp_path / "teacher.json").write_text(json.dumps({"data": str(synthetic_npz), "dataset": "fashion-mnist"}))
    assert samples_dataset(tmp_path) == "fashion-mnist" and samples_dataset(tmp_path, "mine") == "mine"


def test_a_pipeline_folder_refuses_other_data(synthetic_npz, tmp_path, capsys):
    """Teacher, blocks and samples in runs/predictor were made on one dataset: another --data into the same
    folder would reuse them (and name the predictor after the new data), so every phase refuses it."""
    from nas.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "teacher.json").write_text(json.dumps({"data": str(synthetic_npz), "dataset": "cifar10"}))
    fmnist = tmp_path / "fashion-mnist"
    fmnist.mkdir()
    for argv in (["teacher"], ["distill"], ["predictor", "sample"], ["pipeline"]):
        assert main([*argv, "--data", str(fmnist), "--out", str(run), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "trained on cifar10" in err and "fashion-mnist" in err and "another --out" in err


def test_a_pipeline_folder_refuses_another_recipe_or_subset(synthetic_npz, tmp_path, capsys):
    """A teacher or block library already in --out, made with other settings, would be reused as it is: every
    phase refuses, and says which flag reuses it."""
    from dataclasses import asdict

    from nas.cli import main
    from nas.predictor.distill import DistillConfig
    from nas.predictor.pipeline import training_recipe

    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    (run / "teacher" / "model.safetensors").write_bytes(b"")
    report = {"data": str(synthetic_npz), "dataset": "cifar10", "source": "trained", "subset": None,
              "config": asdict(training_recipe("teacher")), "arch_id": "d3k7e6w125sh-" * 4 + "d3k7e6w125sh"}
    (run / "teacher.json").write_text(json.dumps(report))
    (run / "blocks").mkdir()
    (run / "blocks" / "stage0_nsr.json").write_text(json.dumps({"config": asdict(DistillConfig(steps=1000))}))
    data = ["--data", str(synthetic_npz), "--out", str(run), "--quiet"]
    cases = [(["teacher", "--teacher-epochs", "30"], "epochs=15", "--teacher-epochs 15"),
             (["pipeline", "--teacher-lr", "0.2"], "lr=0.1", "--teacher-lr 0.1"),
             (["distill", "--steps", "3000"], "steps=1000", "--steps 1000"),
             (["pipeline", "--seed", "1"], "seed=0", "--seed 0"),
             (["predictor", "sample", "--subset", "500"], "all training images", "drop --subset"),
             (["teacher", "--arch", "d1k3e3w75r-d1k3e3w75r-d1k3e3w75r-d1k3e3w75r-d1k3e3w75r"], "teacher is",
              "drop --arch")]
    for argv, was, fix in cases:
        assert main([*argv, *data]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and was in err and fix in err, err
