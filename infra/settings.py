"""Settings in one place: the project home, MLflow and Prefect environment.

Everything attnflow writes lives under ``ATTNFLOW_HOME`` (default ``~/.attnflow``):

    mlflow.db          MLflow tracking store (SQLite) unless MLFLOW_TRACKING_URI is set
    mlartifacts/       MLflow artifacts of experiments created by attnflow
    data/              prepared datasets (Parquet), content-addressed
    cache/             feature caches and other derived files
    models/            models trained by attnflow (the demo model once trained locally)
    prefect/           PREFECT_HOME (ephemeral API database) unless PREFECT_API_URL or PREFECT_HOME is set
    prefect-results/   persisted Prefect task results (task caching across runs)
    stack/             state (PIDs, ports), logs of `attnflow up`

A user's own ``MLFLOW_TRACKING_URI`` / ``PREFECT_API_URL`` / ``PREFECT_HOME`` always win. Prefect's ephemeral
server gets a longer startup timeout (its first start on a fresh database takes ~20 s on 2 cores) and analytics
off. ``configure()`` only sets defaults (``os.environ.setdefault``) and is idempotent; this module calls it on
import so that it runs before Prefect reads its settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path

    @property
    def task_runner(self) -> str:
        """Task runner of the sweeps: ``thread`` (default), ``dask`` (a LocalCluster) or ``dask://<scheduler>``."""
        return os.environ.get("ATTNFLOW_TASK_RUNNER", "thread").strip() or "thread"

    @property
    def dask_workers(self) -> int:
        """Worker processes of the local Dask cluster (one torch thread each)."""
        return int(os.environ.get("ATTNFLOW_DASK_WORKERS", "2"))

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def uses_local_mlflow(self) -> bool:
        """True when MLflow writes to attnflow's own SQLite store (so attnflow picks artifact locations)."""
        return "MLFLOW_TRACKING_URI" not in os.environ or os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:")

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def stack_dir(self) -> Path:
        return self.home / "stack"

    @property
    def results_dir(self) -> Path:
        return self.home / "prefect-results"


def home() -> Path:
    return Path(os.environ.get("ATTNFLOW_HOME", Path.home() / ".attnflow")).expanduser().resolve()


def defaults(home: Path) -> dict[str, str]:
    """Environment defaults for attnflow processes with this home (flows, and the local stack's services)."""
    return {
        "ATTNFLOW_HOME": str(home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect-results"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # Logging tasks retry with backoff themselves (tasks/tracking.py); MLflow's own HTTP retries (default 7,
        # backoff factor 2: minutes per call) would hide an unreachable server for a long time.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    }


def configure() -> Settings:
    """Create the home folders and set environment defaults for Prefect (idempotent).

    When ``attnflow up`` runs a local stack for this home and the user set no ``PREFECT_API_URL`` /
    ``MLFLOW_TRACKING_URI``, flows started from this process use the stack's servers.
    """
    s = Settings(home=home())
    for d in (s.home, s.artifact_root, s.data_dir, s.cache_dir, s.models_dir, s.results_dir):
        d.mkdir(parents=True, exist_ok=True)
    env = os.environ
    if "PREFECT_API_URL" not in env:
        from infra.stack import running_endpoints

        for key, value in running_endpoints(s.home).items():
            env.setdefault(key, value)
    if "PREFECT_API_URL" not in env:
        env.setdefault("PREFECT_HOME", str(s.home / "prefect"))
    for key, value in defaults(s.home).items():
        env.setdefault(key, value)
    return s


def settings() -> Settings:
    """Current settings (reads ATTNFLOW_HOME each call, so tests can point it elsewhere)."""
    return Settings(home=home())


configure()
