import os
from pathlib import Path

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
