"""Ray set-up shared by search, distillation and sampling: a local Ray, or an existing cluster."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional

from .errors import UserError


@contextlib.contextmanager
def ray_session(workers: int, address: Optional[str] = None) -> Iterator[None]:
    """Start a local Ray with ``workers`` CPUs (no dashboard), or join ``address``; shut down what we started."""
    import ray

    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        kwargs = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        try:
            if address:
                # a cluster's workers start in their own folders (a `ray start` in / gives them /): make them
                # work in this folder, so that the relative paths tasks get (--out, --data) mean the same there
                runtime_env = {"env_vars": {DRIVER_CWD: os.getcwd()},
                               "worker_process_setup_hook": "nas.parallel.enter_driver_cwd"}
                ray.init(address=address, runtime_env=runtime_env, **kwargs)
            else:
                ray.init(num_cpus=max(1, workers), **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"--ray-address {address}" if address else "--workers"
            fix = ("check the address; a cluster with Ray's token authentication also needs its token here "
                   "(RAY_AUTH_TOKEN or ~/.ray/auth_token); or use --workers 0 to run in-process") if address else \
                "use --workers 0 to run in-process"
            raise UserError(where, f"cannot start or reach Ray: {str(e).splitlines()[0]}", fix) from None
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


DRIVER_CWD = "HWNAS_DRIVER_CWD"


def enter_driver_cwd() -> None:
    """Ray worker set-up on a joined cluster: work in the driver's folder, where this node has it (a shared
    file system mounted at the same path); elsewhere stay put, and a missing file is reported by path."""
    folder = os.environ.get(DRIVER_CWD)
    if folder and os.path.isdir(folder):
        os.chdir(folder)


def training_task_options(device: str, workers: int) -> dict[str, float]:
    """Ray resources of one training task: a CPU, and on CUDA a 1/``workers`` share of a GPU, so that Ray
    places ``workers`` tasks on each GPU and points each at its GPU (inside the task it is ``cuda``)."""
    if device.startswith("cuda"):
        return {"num_cpus": 1, "num_gpus": 1.0 / max(1, workers)}
    return {"num_cpus": 1}


def device_in_task(device: str) -> str:
    """The device a Ray task names: Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned, so ``cuda:N`` -> ``cuda``."""
    return "cuda" if device.startswith("cuda") else device
