"""Every cached task that is reused across runs persists checksummed results (tasks.integrity), so a corrupted
cached result is detected (tests/flows/test_cache_integrity.py runs that end to end). No Prefect server needed."""

from __future__ import annotations

import importlib
import pkgutil

from prefect import Task

import tasks
from tasks import integrity


def test_every_cached_task_persists_checksummed_results():
    found = []
    for mod in pkgutil.iter_modules(tasks.__path__, prefix="tasks."):
        module = importlib.import_module(mod.name)
        for obj in vars(module).values():
            if not isinstance(obj, Task) or obj.__module__ != module.__name__:
                continue
            policy = repr(obj.cache_policy)
            if obj.cache_key_fn is not None or ("Inputs" in policy and "RunId" not in policy):  # reused across runs
                found.append(obj.name)
                assert isinstance(obj.result_serializer, (integrity.ChecksummedJSONSerializer,
                                                          integrity.ChecksummedPickleSerializer)), obj.name
    assert {"evaluate", "prepare_data", "run_analysis", "score_candidate", "train_point"} <= set(found)
