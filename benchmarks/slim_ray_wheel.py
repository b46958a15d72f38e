"""Shrink a Ray wheel to what `--workers N` needs, for a GPU machine that has PyTorch but no Ray and no network.

Ray's wheel is about 80 MB, half of it the Java jar; this toolkit uses only Ray core (tasks, actors,
resources). Dropped: the Java jar, the dashboard's web client, RLlib, Serve, the LLM, Data, Train and Tune
libraries (about 40 MB left). The wheel's RECORD loses their lines, so pip installs the rest as usual.

    pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \\
        -d wheels "ray==2.60.0" jsonschema referencing rpds-py jsonschema-specifications
    python benchmarks/slim_ray_wheel.py wheels/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl slim/
    # there: pip install --no-index --no-deps --target /tmp/site slim/*.whl wheels/<the others>; PYTHONPATH=/tmp/site

(`benchmarks/ray_gpu_sharing.py` ran on an H100 this way.)
"""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

DROP = ("ray/jars/", "ray/dashboard/client/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/data/", "ray/train/",
        "ray/tune/")


def slim(wheel: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name  # the same name: pip reads version and platform from it
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if item.filename.startswith(DROP):
                continue
            data = zin.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"\n".join(line for line in data.split(b"\n") if not line.decode().startswith(DROP))
            zout.writestr(item, data)
    tmp.replace(target)
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("out_dir", type=Path)
    a = p.parse_args()
    target = slim(a.wheel, a.out_dir)
    print(f"{a.wheel.stat().st_size / 1e6:.0f} MB -> {target} ({target.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
