"""Task runners for sweeps, selected by the ``ATTNFLOW_TASK_RUNNER`` setting (see infra/settings.py).

    thread                 Prefect's ThreadPoolTaskRunner (default): sweeps run their cells one after the other
                           in the flow's process (a patched model is not shared between threads)
    dask                   prefect-dask's DaskTaskRunner on a LocalCluster of ATTNFLOW_DASK_WORKERS processes
                           (default 2), one thread each, bound to 127.0.0.1, no dashboard
    dask://<host>:<port>   the same runner on an existing Dask cluster (its scheduler address); the workers need
    tcp://<host>:<port>    this project importable and ATTNFLOW_HOME (data, caches, results) on a shared file system

Dask workers receive a model by reference (``tasks.models.LoadedModel`` pickles as its reference and is loaded
once per worker process), not as pickled weights. Ray is not wired in: prefect-ray is not part of the pinned stack.
"""

from __future__ import annotations

from typing import Any

from infra.settings import settings

THREAD = "thread"


def task_runner(spec: str | None = None) -> Any:
    """A Prefect task runner for ``spec`` (default: the ATTNFLOW_TASK_RUNNER setting)."""
    spec = (spec or settings().task_runner).strip()
    if spec in (THREAD, "threads", "default"):
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    if spec == "dask" or spec.startswith(("dask://", "tcp://")):
        from prefect_dask import DaskTaskRunner

        if spec == "dask":
            return DaskTaskRunner(cluster_kwargs=local_cluster_kwargs())
        address = spec if spec.startswith("tcp://") else "tcp://" + spec.removeprefix("dask://")
        return DaskTaskRunner(address=address)
    raise ValueError(f"ATTNFLOW_TASK_RUNNER={spec!r}: use 'thread', 'dask' (a local cluster) or "
                     "'dask://<scheduler host>:<port>'")


def local_cluster_kwargs(n_workers: int | None = None) -> dict[str, Any]:
    """LocalCluster arguments: worker processes with one thread each (torch then uses one thread: Dask's nanny
    sets OMP_NUM_THREADS=1), on 127.0.0.1, without the web dashboard."""
    n = settings().dask_workers if n_workers is None else n_workers
    if n < 1:
        raise ValueError(f"ATTNFLOW_DASK_WORKERS={n}: need at least 1 worker")
    return {"n_workers": n, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
            "dashboard_address": None}


def is_parallel(runner: Any) -> bool:
    """True when ``runner`` runs tasks in other processes (each with its own copy of the model)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    return runner is not None and not isinstance(runner, ThreadPoolTaskRunner)
