"""Test-wide setup: a throw-away ATTNFLOW_HOME (MLflow SQLite store, Prefect home, caches) per test session.

Tiers, one directory each, and every test carries its tier's marker (``pytest -m "not e2e"``): tests/unit (no
models), tests/integration (tiny models built from configs), tests/flows (real Prefect test server + real MLflow
store), tests/db (a PostgreSQL server), tests/e2e (the local stack in headless Chromium), tests/real (a pulled
model). Only tests/real downloads anything.

Under pytest-xdist with ``--dist loadfile`` (``make test``) each test file runs whole on one worker, and the e2e
tier as a whole on one worker (``pytest_xdist_make_scheduler`` below), so its stack starts once per session.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="attnflow-test-home-"))
os.environ["ATTNFLOW_HOME"] = str(_HOME)
for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
    os.environ.pop(var, None)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models gain nothing from threads; avoids oversubscription
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import infra.settings  # noqa: E402,F401  (creates the home and Prefect defaults)
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def attnflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from tests.helpers.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_isolated():
    """``mlflow.set_tracking_uri`` (called by code under test) also sets ``MLFLOW_TRACKING_URI`` for the whole
    process; put back what the test started with, so a later test does not log to an earlier test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") == before:
        return
    import sys

    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(before)  # None unsets the variable too
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


TIERS = ("unit", "integration", "flows", "db", "e2e", "real")
#: tiers whose files share one xdist worker (their package-scoped fixtures start once per session)
ONE_WORKER_TIERS = ("e2e",)


def xdist_scope_of(nodeid: str) -> str:
    """The unit of work a test belongs to under ``--dist loadfile``: its tier directory for one-worker tiers
    (``tests/e2e``), else its file (xdist's own loadfile scope)."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "tests" and parts[1] in ONE_WORKER_TIERS:
        return "/".join(parts[:2])
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the one-worker tiers kept whole. (``xdist_group`` + ``--dist loadgroup`` would do
    this, but pytest-xdist 3.8 tags node ids through ``item._nodeid``, which pytest 9 no longer reads, so the groups
    are silently ignored there.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class TierScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope_of(nodeid)

    return TierScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Every test carries its tier's marker: the directory under tests/ it is in."""
    root = Path(__file__).resolve().parent
    for item in items:
        try:
            tier = Path(item.path).resolve().relative_to(root).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(tier)
