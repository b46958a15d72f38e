"""Cut a CIFAR-10 archive (the layout of ``../shared/data/cifar10.npz``) into a smaller archive for quick
benchmark runs, and optionally the images left over into a second one (never trained on, e.g. for
``pooling_mixture.py --score-extra``). The cut is the archive's first images, in its stored (already
shuffled, class-balanced by construction) order, so anyone with the same archive gets the same files; the
sha256 printed here is what the benchmarks record as ``data_sha256``.

    python benchmarks/make_subset.py --train 14000 --test 5000 --out .devdata/cifar_sub.npz \
        --rest .devdata/cifar_unused.npz
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import ROOT, data_sha256

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def cut(archive: Path, n_train: int, n_test: int) -> tuple[dict, dict]:
    """The first ``n_train``/``n_test`` images, and the rest: all of the rest lands in ``x_test`` of the second,
    since it only ever serves as further held-out images."""
    with np.load(archive) as d:
        a = {k: d[k] for k in ARRAYS}
    if n_train > len(a["x_train"]) or n_test > len(a["x_test"]):
        raise SystemExit(f"error: {archive}: has {len(a['x_train'])} training and {len(a['x_test'])} test images, "
                         f"fewer than --train {n_train} / --test {n_test} (ask for fewer)")
    sub = {"x_train": a["x_train"][:n_train], "y_train": a["y_train"][:n_train],
           "x_test": a["x_test"][:n_test], "y_test": a["y_test"][:n_test]}
    rest_x = np.concatenate([a["x_train"][n_train:], a["x_test"][n_test:]])
    rest_y = np.concatenate([a["y_train"][n_train:], a["y_test"][n_test:]])
    rest = {"x_train": rest_x[:0], "y_train": rest_y[:0], "x_test": rest_x, "y_test": rest_y}
    return sub, rest


def save(arrays: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    print(f"wrote {path}: {len(arrays['x_train'])} training, {len(arrays['x_test'])} test images, "
          f"data_sha256 {data_sha256(path)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    ap.add_argument("--train", type=int, required=True, help="training images to keep (the first N)")
    ap.add_argument("--test", type=int, required=True, help="test images to keep (the first N)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rest", help="also write the images left over (as test images) here")
    a = ap.parse_args()
    sub, rest = cut(Path(a.archive), a.train, a.test)
    save(sub, Path(a.out))
    if a.rest:
        save(rest, Path(a.rest))


if __name__ == "__main__":
    main()
