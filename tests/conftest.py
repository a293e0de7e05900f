"""Test-wide setup: a throw-away ATTNFLOW_HOME (MLflow SQLite store, Prefect home, caches) per test session.

Tiers: tests/unit (no models), tests/integration (tiny models built from configs), tests/flows (real Prefect
test server + real MLflow store). Nothing downloads anything.
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
