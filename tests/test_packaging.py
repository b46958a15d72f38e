"""The wheel ships every table, predictor and space: setuptools only packs folders listed in pyproject.toml."""
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_folder_is_a_listed_package_with_its_files():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, package_data = set(config["packages"]), config["package-data"]
    for parent in ("latency_tables", "predictors"):
        for folder in sorted(p for p in (ROOT / parent).iterdir() if p.is_dir() and not p.name.startswith(".")):
            name = f"nas._shipped.{parent}.{folder.name}"
            assert name in packages, f"pyproject.toml: add {name!r} to [tool.setuptools] packages"
            patterns = package_data.get(name, [])
            for file in folder.iterdir():
                assert any(file.match(p) for p in patterns), \
                    f"pyproject.toml: {file.relative_to(ROOT)} matches no package-data pattern of {name}"
