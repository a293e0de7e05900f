"""Worker processes for study sweeps: a spawned pool whose processes run one study action each, with one
BLAS / torch thread per process (tiny ops are fastest single-threaded, and the pool is the parallelism).

This module imports nothing heavy, so a spawned worker sets its thread limits before numpy or torch load.
Workers never start Prefect: the Prefect task runs in the flow's process and waits on the worker's result.
"""

from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from typing import Any, Iterator

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_executor: Any = None


def _init_worker() -> None:
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


def run_action(module: str, qualname: str, params: dict[str, Any], action: str, inputs: dict[str, Any]) -> Any:
    """Build the study from its parameters and run one of its actions (in whatever process this is)."""
    cls = getattr(importlib.import_module(module), qualname)
    if action not in cls.actions:
        raise ValueError(f"{cls.component_name} has no action {action!r}; actions: {', '.join(cls.actions)}")
    return getattr(cls.from_params(params), action)(**inputs)


@contextmanager
def worker_pool(workers: int) -> Iterator[None]:
    """Inside the block, :func:`submit` runs actions on ``workers`` spawned processes (in-process when <= 1)."""
    global _executor
    if workers <= 1 or _executor is not None:
        yield
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    _executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_init_worker)
    try:
        yield
    finally:
        executor, _executor = _executor, None
        executor.shutdown(wait=True, cancel_futures=True)


def submit(module: str, qualname: str, params: dict[str, Any], action: str, inputs: dict[str, Any]) -> Any:
    """Run an action on the pool when one is open, else here; returns its result."""
    if _executor is None:
        return run_action(module, qualname, params, action, inputs)
    return _executor.submit(run_action, module, qualname, params, action, inputs).result()
