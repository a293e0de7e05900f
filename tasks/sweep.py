"""Sweeps: run one task over many inputs, in parallel when the flow's task runner allows it (infra/runners.py)."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.context import FlowRunContext

from infra.runners import is_parallel


def map_calls(task: Task, calls: list[dict[str, Any]]) -> list[Any]:
    """``task(**kw)`` for each ``kw`` in ``calls``; results in the order of ``calls``.

    On the default thread runner the calls run one after the other in the flow's process (patches change the shared
    model in place, so two cells must not run at once on it). On a process runner (Dask) every call is submitted at
    once and the runner spreads them over its workers; a failed call raises when its result is read.
    """
    ctx = FlowRunContext.get()
    if ctx is None or not is_parallel(ctx.task_runner):
        return [task(**kw) for kw in calls]
    futures = [task.submit(**kw) for kw in calls]
    return [f.result() for f in futures]
