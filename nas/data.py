"""Image classification data: the CIFAR-10 NumPy archive, CIFAR-10 folders, Fashion-MNIST IDX files,
and ImageFolder trees. Train/val split fixed by seed; ``subset`` for quick runs.

Small datasets live in memory as uint8 tensors and are augmented per batch with tensor ops (random
crop with 4-pixel padding, horizontal flip), which is several times faster on a CPU than per-image PIL
transforms. ImageFolder trees (ImageNet-style) go through torchvision's loader.
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _key(seed: int, *parts: int) -> int:
    key = seed
    for p in parts:
        key = (key * 1_000_003 + p) % (2**63 - 1)
    return key


class _ResumableBatches:
    """What TensorLoader and FolderLoader share. The order of an epoch and the augmentation of a batch depend
    only on (seed, epoch, batch), so the loader's whole state is (epoch, position) and a resumed run sees
    exactly the batches it would have. Subclasses give ``num_samples`` and ``_batches(start)``."""

    batch_size: int
    train: bool
    drop_last: bool
    seed: int
    epoch: int
    position: int

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self.num_samples // self.batch_size
        return n if self.drop_last or self.num_samples % self.batch_size == 0 else n + 1

    def reseed(self, seed: int) -> None:
        self.seed, self.epoch, self.position = int(seed), 0, 0

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, s: dict) -> None:
        self.seed, self.epoch, self.position = int(s["seed"]), int(s["epoch"]), int(s["position"])

    def _order(self) -> torch.Tensor:
        """This epoch's order of the samples (training: shuffled by (seed, epoch); evaluation: as stored)."""
        if self.train:
            return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(_key(self.seed, self.epoch)))
        return torch.arange(self.num_samples)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training: continues the current epoch from ``position``. Evaluation: always every batch, in order."""
        if not self.train:
            yield from self._batches(0)
            return
        if len(self) == 0:  # a training loop would wait forever for its first batch
            raise UserError("training data", f"{self.num_samples} training images make no full batch of "
                            f"{self.batch_size}", "use more images (or a larger --subset) or a smaller batch")
        if self.position >= len(self):  # the previous pass stopped right after its last batch
            self.epoch, self.position = self.epoch + 1, 0
        for b in self._batches(self.position):
            self.position += 1  # before the batch is handed out: a checkpoint taken while it trains counts it
            yield b
        self.epoch, self.position = self.epoch + 1, 0


class TensorLoader(_ResumableBatches):
    """Batches of an in-memory uint8 NHWC image tensor, normalised (and augmented when training)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, train: bool, seed: int = 0,
                 mean=CIFAR_MEAN, std=CIFAR_STD, pad: int = 4, drop_last: Optional[bool] = None,
                 device: str | torch.device = "cpu"):
        self.x, self.y = x, y.long()
        self.batch_size, self.train, self.pad = batch_size, train, pad
        self.drop_last = train if drop_last is None else drop_last
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.reseed(seed)

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()  # once per pass, not once per batch
        for i in range(start, len(self)):
            yield self._batch(order, i)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of the current epoch (random access; training batches are augmented)."""
        return self._batch(self._order(), i)

    def _batch(self, order: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[i * self.batch_size:(i + 1) * self.batch_size]
        xb = self.x[idx].to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if self.train:
            xb = self._augment(xb, torch.Generator().manual_seed(_key(self.seed, self.epoch, i + 1)))
        xb = ((xb - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return xb, self.y[idx].to(self.device, non_blocking=True)

    def _augment(self, xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = xb.shape
        p = self.pad
        padded = F.pad(xb, (p, p, p, p), mode="reflect")
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).to(xb.device)
        cols = (dx.view(b, 1) + torch.arange(w).view(1, w)).to(xb.device)
        bi = torch.arange(b, device=xb.device).view(b, 1, 1)
        out = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)
        flip = (torch.rand(b, generator=gen) < 0.5).to(xb.device)
        return torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)


@dataclass
class Splits:
    """train / val (held out from the training set by seed) / test, plus what they are."""

    train: object
    val: object
    test: object
    num_classes: int
    input_size: int
    name: str

    def describe(self) -> str:
        sizes = [s.num_samples for s in (self.train, self.val, self.test)]
        return f"{self.name}: train {sizes[0]}, val {sizes[1]}, test {sizes[2]} ({self.num_classes} classes)"


# ---------------------------------------------------------------------- raw arrays
def load_npz_archive(path: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """The shared CIFAR-10 archive: x_train, y_train, x_test, y_test (uint8 NHWC)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = tuple(z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except KeyError as e:
        raise UserError(path, f"archive lacks array {e}", "expected x_train, y_train, x_test, y_test") from None
    except (ValueError, OSError) as e:
        raise UserError(path, f"cannot read archive: {e}",
                        "check the path: a CIFAR-10 archive like ../shared/data/cifar10.npz") from None
    x_train, _, x_test, _ = arrays
    if x_train.ndim != 4 or x_train.shape[-1] != 3 or x_train.dtype != np.uint8:
        raise UserError(path, f"x_train has shape {x_train.shape} {x_train.dtype}", "expected (N, H, W, 3) uint8")
    return arrays


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Reads CIFAR's python batches while refusing every global but numpy's array reconstruction."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar_folder(root: str | os.PathLike) -> tuple[np.ndarray, ...]:
    """CIFAR-10 as torchvision downloads it: ``cifar-10-batches-py`` (restricted unpickling) or ``-bin``."""
    root = Path(root)
    for sub in ("cifar-10-batches-py", "."):
        d = root / sub
        if (d / "data_batch_1").exists() and (d / "test_batch").exists():
            def read(name: str):
                with open(d / name, "rb") as f:
                    try:
                        obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
                    except pickle.UnpicklingError as e:
                        raise UserError(d / name, f"unsafe or malformed batch file: {e}",
                                        "use the original CIFAR-10 python batches") from None
                x = np.asarray(obj["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                return x, np.asarray(obj["labels"], dtype=np.uint8)
            parts = [read(f"data_batch_{i}") for i in range(1, 6) if (d / f"data_batch_{i}").exists()]
            xt, yt = read("test_batch")
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt
    for sub in ("cifar-10-batches-bin", "."):
        d = root / sub
        if (d / "data_batch_1.bin").exists() and (d / "test_batch.bin").exists():
            def read_bin(name: str):
                raw = np.fromfile(d / name, dtype=np.uint8).reshape(-1, 3073)
                return raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), raw[:, 0].copy()
            parts = [read_bin(f"data_batch_{i}.bin") for i in range(1, 6) if (d / f"data_batch_{i}.bin").exists()]
            xt, yt = read_bin("test_batch.bin")
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt
    raise UserError(root, "no CIFAR-10 batches found", "expected cifar-10-batches-py/ or cifar-10-batches-bin/")


def load_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    def raw(p: Path) -> bytes:
        data = p.read_bytes()
        return gzip.decompress(data) if p.suffix == ".gz" else data

    img, lab = raw(images), raw(labels)
    n, h, w = int.from_bytes(img[4:8], "big"), int.from_bytes(img[8:12], "big"), int.from_bytes(img[12:16], "big")
    return np.frombuffer(img, np.uint8, offset=16).reshape(n, h, w), np.frombuffer(lab, np.uint8, offset=8)


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_fashion_mnist(root: str | os.PathLike = FASHION_DIR, size: int = 32) -> tuple[np.ndarray, ...]:
    """Fashion-MNIST IDX files, resized to ``size`` and repeated to 3 channels (uint8 NHWC)."""
    root = Path(root)

    def find(stem: str) -> Path:
        for cand in (root / f"{stem}.gz", root / stem):
            if cand.exists():
                return cand
        raise UserError(root, f"{stem} not found", "install Debian's dataset-fashion-mnist or point at the IDX files")

    out = []
    for split in ("train", "t10k"):
        x, y = load_idx_pair(find(f"{split}-images-idx3-ubyte"), find(f"{split}-labels-idx1-ubyte"))
        t = torch.from_numpy(x.copy()).float().unsqueeze(1)
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255)
        out += [t.to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy(), y.copy()]
    return tuple(out)


def split_train_val(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return perm[val_size:], perm[:val_size]


# ---------------------------------------------------------------------- public entry
def detect_kind(path: str | os.PathLike) -> str:
    p = Path(path)
    if p.suffix == ".npz":
        return "npz"
    if p.name == "fashion-mnist" or (p / "train-images-idx3-ubyte.gz").exists() or (p / "train-images-idx3-ubyte").exists():
        return "fashion-mnist"
    if any((p / s).exists() for s in ("cifar-10-batches-py", "cifar-10-batches-bin", "data_batch_1", "data_batch_1.bin")):
        return "cifar-folder"
    if p.is_dir():
        return "imagefolder"
    raise UserError(path, "dataset not found", "give cifar10.npz, a CIFAR-10 folder, fashion-mnist IDX folder "
                    "or an ImageFolder tree")


def dataset_name(path: str | os.PathLike) -> str:
    """What a predictor made on this data records as its dataset: ``cifar10`` (archive or folder),
    ``fashion-mnist``, or an ImageFolder tree's folder name. Reads no images."""
    kind = detect_kind(path)
    return {"npz": "cifar10", "cifar-folder": "cifar10", "fashion-mnist": "fashion-mnist"}.get(kind, Path(path).name)


def load_data(path: str | os.PathLike, batch_size: int = 128, val_size: Optional[int] = None, seed: int = 0,
              subset: Optional[int] = None, eval_batch_size: int = 512, input_size: Optional[int] = None,
              device: str = "cpu") -> Splits:
    """Train/val/test loaders for any supported dataset. ``val`` comes out of the training set by ``seed``
    (default: 5,000 images, at most a quarter of the training set). Batches arrive on ``device``."""
    kind = detect_kind(path)
    if kind == "imagefolder":
        return _imagefolder(Path(path), batch_size, val_size or 5000, seed, subset, eval_batch_size,
                            input_size or 224, device)
    if kind == "npz":
        xtr, ytr, xte, yte = load_npz_archive(path)
        mean, std = CIFAR_MEAN, CIFAR_STD
    elif kind == "cifar-folder":
        xtr, ytr, xte, yte = load_cifar_folder(path)
        mean, std = CIFAR_MEAN, CIFAR_STD
    else:
        xtr, ytr, xte, yte = load_fashion_mnist(path, input_size or 32)
        mean, std = (0.2860,) * 3, (0.3530,) * 3
    name = dataset_name(path)
    if input_size and xtr.shape[1] != input_size:  # CIFAR-10 comes at 32 px only: never train at the wrong size
        raise UserError(path, f"images are {xtr.shape[1]}px, the space expects {input_size}px",
                        f"use a space with input_size {xtr.shape[1]}, or an ImageFolder tree (resized as it loads)")
    val_size = min(5000, len(xtr) // 4) if val_size is None else val_size
    if val_size >= len(xtr):
        raise UserError("--val-size", f"{val_size} leaves no training images (train has {len(xtr)})", "lower it")
    tr_idx, va_idx = split_train_val(len(xtr), val_size, seed)
    if subset:
        tr_idx = tr_idx[:subset]
        va_idx = va_idx[: max(1, min(len(va_idx), subset // 4))]
        te_n = max(1, min(len(xte), subset // 4))
        xte, yte = xte[:te_n], yte[:te_n]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    common = dict(mean=mean, std=std, device=device)
    return Splits(
        train=TensorLoader(t(xtr[tr_idx]), t(ytr[tr_idx]), batch_size, True, seed, **common),
        val=TensorLoader(t(xtr[va_idx]), t(ytr[va_idx]), eval_batch_size, False, **common),
        test=TensorLoader(t(xte), t(yte), eval_batch_size, False, **common),
        num_classes=int(max(ytr.max(), yte.max())) + 1, input_size=int(xtr.shape[1]), name=name)


def archive_loader(path: str | os.PathLike, batch_size: int = 512, device: str = "cpu") -> TensorLoader:
    """Every image of an archive (its train and test arrays) as evaluation batches: held-out images that
    neither training nor validation uses, for scoring on more images than one split holds."""
    xtr, ytr, xte, yte = load_npz_archive(path)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return TensorLoader(t(np.concatenate([xtr, xte])), t(np.concatenate([ytr, yte])), batch_size, False,
                        device=device)


class _SeededItems(torch.utils.data.Dataset):
    """``dataset[j]`` for items ``(j, key)``, with torch's RNG seeded by ``key`` for that one item: the random
    crops and flips of torchvision transforms then depend on the key alone, not on workers or resumes."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        j, key = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key)
            return self.dataset[j]


class FolderLoader(_ResumableBatches):
    """Batches of images decoded on the fly (an ImageFolder tree) by ``workers`` DataLoader processes, with
    TensorLoader's contract: reseedable, resumable to the batch (augmentation included), random access by
    ``batch(i)``, labels in ``y``, batches on ``device``."""

    def __init__(self, dataset, indices, batch_size: int, train: bool, seed: int = 0,
                 device: str | torch.device = "cpu", workers: int = 0):
        self.items = _SeededItems(dataset)
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.y = torch.as_tensor(np.asarray(dataset.targets, dtype=np.int64))[self.indices]
        self.batch_size, self.train, self.drop_last = batch_size, train, train
        self.device, self.workers = torch.device(device), workers
        self.reseed(seed)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def _items(self, order: torch.Tensor, i: int) -> list[tuple[int, int]]:
        pos = order[i * self.batch_size:(i + 1) * self.batch_size]
        return [(int(self.indices[p]), _key(self.seed, self.epoch, i + 1, k) if self.train else 0)
                for k, p in enumerate(pos)]

    def _to_device(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = xb.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return xb, yb.to(self.device, non_blocking=True)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of the current epoch, decoded here (random access)."""
        xs, ys = zip(*(self.items[item] for item in self._items(self._order(), i)))
        return self._to_device(torch.stack(xs), torch.as_tensor(ys))

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from torch.utils.data import DataLoader

        order = self._order()
        plan = [self._items(order, i) for i in range(start, len(self))]
        for xb, yb in DataLoader(self.items, batch_sampler=plan, num_workers=self.workers,
                                 pin_memory=self.device.type == "cuda"):
            yield self._to_device(xb, yb)


def _imagefolder(root: Path, batch_size: int, val_size: int, seed: int, subset: Optional[int],
                 eval_batch_size: int, size: int, device: str = "cpu") -> Splits:
    from torchvision import datasets, transforms

    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
                                  transforms.ToTensor(), norm])
    train_root = root / "train" if (root / "train").is_dir() else root
    try:
        full_train = datasets.ImageFolder(train_root, transform=train_tf)
        full_eval = datasets.ImageFolder(train_root, transform=eval_tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(root, f"not an ImageFolder tree: {str(e).splitlines()[0]}",
                        "expected one folder of images per class") from None
    n = len(full_train)
    v = min(val_size, max(1, n // 10))
    tr_idx, va_idx = split_train_val(n, v, seed)
    if subset:
        tr_idx = tr_idx[:subset]
    test_root = root / "val" if (root / "val").is_dir() else None
    test, test_idx = (datasets.ImageFolder(test_root, transform=eval_tf), None) if test_root else (full_eval, va_idx)
    opts = dict(device=device, workers=min(4, os.cpu_count() or 1))
    return Splits(
        train=FolderLoader(full_train, tr_idx, batch_size, True, seed, **opts),
        val=FolderLoader(full_eval, va_idx, eval_batch_size, False, **opts),
        test=FolderLoader(test, np.arange(len(test)) if test_idx is None else test_idx, eval_batch_size, False,
                          **opts),
        num_classes=len(full_train.classes), input_size=size, name=root.name)


def save_cifar_folder_py(root: Path, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> Path:
    """Write arrays in torchvision's python layout (used to test the folder loader on real data)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(len(x)), 5)
    for i, idx in enumerate(chunks, 1):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1), "labels": y[idx].tolist()}, f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": xt.transpose(0, 3, 1, 2).reshape(len(xt), -1), "labels": yt.tolist()}, f)
    return root
