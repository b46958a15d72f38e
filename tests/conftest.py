import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HWNAS_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def cifar_space():
    from nas.space import SearchSpace

    return SearchSpace.load("mobilenetv3_cifar")


@pytest.fixture(scope="session")
def imagenet_space():
    from nas.space import SearchSpace

    return SearchSpace.load("mobilenetv3_imagenet")


@pytest.fixture(scope="session")
def tiny_space():
    """A two-stage space small enough to profile in seconds."""
    from nas.space import SearchSpace

    return SearchSpace.from_dict(TINY_SPACE, source="tiny.yaml")


TINY_SPACE = {
    "name": "tiny", "input_size": 16, "in_chans": 3, "num_classes": 4, "width_divisor": 4,
    "stem": {"channels": 8, "kernel": 3, "stride": 2, "act": "hswish"},
    "first_block": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu"},
    "head": {"channels": 16, "features": 32, "act": "hswish"},
    "defaults": {"depth": [1, 2], "kernel": [3, 5], "expansion": [2], "width": [0.5, 1.0], "se": [False, True],
                 "act": ["relu"]},
    "stages": [{"name": "s1", "base_width": 8, "stride": 1}, {"name": "s2", "base_width": 16, "stride": 2}],
}


@pytest.fixture
def cifar_archive():
    path = DATA / "cifar10.npz"
    if not path.exists():
        pytest.skip(f"CIFAR-10 archive not found at {path} (see shared/data/README.md)")
    return path


MINI = {
    "name": "mini_cifar", "input_size": 32, "in_chans": 3, "num_classes": 10, "width_divisor": 4,
    "stem": {"channels": 8, "kernel": 3, "stride": 2, "act": "hswish"},
    "first_block": {"channels": 8, "kernel": 3, "stride": 1, "act": "relu"},
    "head": {"channels": 32, "features": 64, "act": "hswish"},
    "defaults": {"depth": [1, 2], "kernel": [3, 5], "expansion": [2, 3], "width": [0.5, 1.0], "se": [False, True],
                 "act": ["relu", "hswish"]},
    "stages": [{"name": "s1", "base_width": 16, "stride": 2}, {"name": "s2", "base_width": 24, "stride": 2}],
}


@pytest.fixture(scope="session")
def mini_space(tmp_path_factory):
    """A two-stage cifar-sized space (32x32, 10 classes): trains in seconds."""
    import yaml

    from nas.space import SearchSpace

    path = tmp_path_factory.mktemp("space") / "mini_cifar.yaml"
    path.write_text(yaml.safe_dump(MINI))
    return SearchSpace.load(path)


@pytest.fixture(scope="session")
def synthetic_npz(tmp_path_factory):
    """A learnable 10-class image set in the archive's format: class = colour and position of a blob."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = 4 + 2 * (c % 5), 4 + 10 * (c // 5)
            x[i, r:r + 10, col:col + 10, c % 3] = 230
        return x, y

    (xtr, ytr), (xte, yte) = make(1200), make(300)
    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path
