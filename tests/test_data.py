import gzip

import numpy as np
import pytest
import torch

from nas.data import TensorLoader, load_cifar_folder, load_data, load_npz_archive, save_cifar_folder_py
from nas.errors import UserError


def _arrays(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8))


def test_real_archive_loads_with_fixed_splits(cifar_archive):
    x, y, xt, yt = load_npz_archive(cifar_archive)
    assert x.shape == (20000, 32, 32, 3) and xt.shape == (10000, 32, 32, 3)
    a = load_data(cifar_archive, subset=2000, seed=3)
    b = load_data(cifar_archive, subset=2000, seed=3)
    assert a.train.num_samples == 2000 and a.val.num_samples == 500
    torch.testing.assert_close(a.val.x, b.val.x)
    xb, yb = next(iter(a.train))
    assert xb.shape == (128, 3, 32, 32) and yb.max() < 10
    assert abs(float(xb.mean())) < 0.3  # normalised


def test_cifar_folder_layouts_read_the_same_images(tmp_path):
    x, y = _arrays(50)
    xt, yt = _arrays(20, 1)
    save_cifar_folder_py(tmp_path / "py", x, y, xt, yt)
    got = load_cifar_folder(tmp_path / "py")
    np.testing.assert_array_equal(got[0], x)
    np.testing.assert_array_equal(got[1], y)
    np.testing.assert_array_equal(got[2], xt)
    d = tmp_path / "bin" / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for i, idx in enumerate(np.array_split(np.arange(50), 5), 1):
        rows = np.concatenate([y[idx, None], x[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1)], axis=1)
        rows.astype(np.uint8).tofile(d / f"data_batch_{i}.bin")
    np.concatenate([yt[:, None], xt.transpose(0, 3, 1, 2).reshape(20, -1)], 1).astype(np.uint8).tofile(
        d / "test_batch.bin")
    got_bin = load_cifar_folder(tmp_path / "bin")
    np.testing.assert_array_equal(got_bin[0], x)
    np.testing.assert_array_equal(got_bin[3], yt)


def test_cifar_folder_refuses_unsafe_pickles(tmp_path):
    import pickle

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    for name in ["data_batch_1", "test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(UserError, match="refusing to load"):
        load_cifar_folder(tmp_path)


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    splits = load_data(tmp_path, batch_size=4, input_size=32)
    assert splits.num_classes == 2
    xb, yb = next(iter(splits.train))
    assert xb.shape == (4, 3, 32, 32)
    # on another device the images are still decoded on the CPU, and every batch arrives on that device
    # ("meta": a device every torch build has, standing in for a GPU)
    moved = load_data(tmp_path, batch_size=4, input_size=32, device="meta")
    assert len(moved.train) == len(splits.train) and len(moved.val) == len(splits.val)
    for loader in (moved.train, moved.val, moved.test):
        xb, yb = next(iter(loader))
        assert xb.device.type == "meta" and yb.device.type == "meta"
    assert xb.shape[1:] == (3, 32, 32)


def test_imagefolder_batches_resume_exactly_whatever_the_workers(tmp_path):
    """Random crops and flips depend on (seed, epoch, batch, item) only: the same batches with 0 or 2 decoding
    workers, after a resume from a saved position, and by random access; another seed, another order."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(14):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    load = lambda workers: _with_workers(load_data(tmp_path, batch_size=4, input_size=32).train, workers)  # noqa: E731
    full = list(load(2))
    assert len(full) == 6  # 28 images, 2 held out for validation: 26 to train, the last partial batch dropped
    interrupted = load(0)
    first = next(iter(interrupted))
    resumed = load(0)
    resumed.load_state_dict(interrupted.state_dict())
    for got, want in zip([first, *resumed], full, strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(load(0).batch(3)[0], full[3][0])
    reseeded = load(0)
    reseeded.reseed(1)
    assert not torch.equal(next(iter(reseeded))[0], full[0][0])


def test_training_set_smaller_than_a_batch_is_a_clear_error():
    x, y = torch.zeros(10, 32, 32, 3, dtype=torch.uint8), torch.zeros(10, dtype=torch.long)
    with pytest.raises(UserError, match="10 training images make no full batch of 16"):
        next(iter(TensorLoader(x, y, 16, train=True)))
    assert len(list(TensorLoader(x, y, 16, train=False))) == 1  # evaluation keeps the partial batch


def _with_workers(loader, workers):
    loader.workers = workers
    return loader


def test_fashion_mnist_idx(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        img = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        header = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + img.tobytes()))
        lab = rng.integers(0, 10, n).astype(np.uint8)
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + lab.tobytes()))
    splits = load_data(tmp_path, batch_size=5)
    assert splits.name == "fashion-mnist" and splits.input_size == 32
    xb, _ = next(iter(splits.train))
    assert xb.shape == (5, 3, 32, 32)


def test_loader_state_resumes_mid_epoch():
    x, y = _arrays(64)
    a = TensorLoader(torch.from_numpy(x), torch.from_numpy(y), 8, True, seed=5)
    it = iter(a)
    for _ in range(3):
        next(it)
    state = a.state_dict()
    rest = [b[0] for b in it]
    b = TensorLoader(torch.from_numpy(x), torch.from_numpy(y), 8, True, seed=0)
    b.load_state_dict(state)
    for want, got in zip(rest, (bb[0] for bb in b)):
        torch.testing.assert_close(want, got)


def test_a_pass_stopped_after_its_last_batch_still_starts_the_next_epoch():
    """A consumer that takes exactly one epoch from a generator and never resumes it must not leave the
    loader empty (BN recalibration after such a training loop once got no batches at all)."""
    x, y = _arrays(64)
    a = TensorLoader(torch.from_numpy(x), torch.from_numpy(y), 8, True, seed=5)
    it = iter(a)
    for _ in range(len(a)):
        next(it)
    again = [b for _, b in zip(range(3), a)]
    assert len(again) == 3 and a.epoch == 1
    b = TensorLoader(torch.from_numpy(x), torch.from_numpy(y), 8, True, seed=5)
    b.epoch = 1
    torch.testing.assert_close(again[0][0], b.batch(0)[0])


def test_bad_data_paths(tmp_path):
    with pytest.raises(UserError, match="dataset not found"):
        load_data(tmp_path / "nope.bin")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(UserError, match="lacks array"):
        load_data(bad)


def test_archive_at_another_input_size_is_a_clear_error(synthetic_npz):
    """CIFAR-10 archives hold 32 px images only; a space built for 224 px must not silently train on them."""
    assert load_data(synthetic_npz, input_size=32).input_size == 32
    with pytest.raises(UserError, match="images are 32px, the space expects 224px"):
        load_data(synthetic_npz, input_size=224)


def test_interrupted_training_continues_only_with_its_own_recipe(tmp_path):
    """An epoch-end checkpoint records the recipe: resumed under another one (e.g. more epochs) it would
    continue on a mixed learning-rate schedule, so that is refused."""
    from torch import nn

    from nas.train import TrainConfig, train_model

    x, y = (torch.from_numpy(a) for a in _arrays(64))
    loader = TensorLoader(x, y, 16, train=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    ckpt = tmp_path / "train.ckpt"
    train_model(model, loader, TrainConfig(epochs=1, lr=0.01), checkpoint=ckpt)
    assert ckpt.exists()
    with pytest.raises(UserError, match="epochs=1, not epochs=2"):
        train_model(model, loader, TrainConfig(epochs=2, lr=0.01), checkpoint=ckpt)
    assert train_model(model, loader, TrainConfig(epochs=1, lr=0.01), checkpoint=ckpt)["steps"] == 4
    (tmp_path / "damaged.ckpt").write_bytes(b"garbage")  # e.g. a disk that filled up: one line, no traceback
    with pytest.raises(UserError, match="damaged.ckpt: cannot read training checkpoint.*delete it"):
        train_model(model, loader, TrainConfig(epochs=1, lr=0.01), checkpoint=tmp_path / "damaged.ckpt")
