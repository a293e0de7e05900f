"""The task-runner setting (ATTNFLOW_TASK_RUNNER) is validated; tests/flows/test_scale_out.py runs a Dask sweep."""

from __future__ import annotations

import pytest

from infra.runners import is_parallel, local_cluster_kwargs, task_runner


def test_runner_setting_is_validated(monkeypatch):
    monkeypatch.setenv("ATTNFLOW_TASK_RUNNER", "spark")
    with pytest.raises(ValueError, match="ATTNFLOW_TASK_RUNNER='spark'"):
        task_runner()
    monkeypatch.setenv("ATTNFLOW_TASK_RUNNER", "dask")
    assert is_parallel(task_runner())
    monkeypatch.setenv("ATTNFLOW_TASK_RUNNER", "thread")
    assert not is_parallel(task_runner())
    with pytest.raises(ValueError, match="at least 1"):
        local_cluster_kwargs(0)
