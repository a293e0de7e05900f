"""Settings in one place: the project home, MLflow and Prefect environment.

Everything attnflow writes lives under ``ATTNFLOW_HOME`` (default ``~/.attnflow``):

    mlflow.db          MLflow tracking store (SQLite) unless MLFLOW_TRACKING_URI is set
    mlartifacts/       MLflow artifacts of experiments created by attnflow
    data/              prepared datasets (Parquet), content-addressed
    cache/             feature caches and other derived files
    models/            models trained by attnflow (the demo model once trained locally)
    prefect/           PREFECT_HOME (ephemeral API database) unless PREFECT_API_URL or PREFECT_HOME is set
    prefect-results/   persisted Prefect task results (task caching across runs)
    stack/             pid files and logs of `attnflow up`

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


def configure() -> Settings:
    """Create the home folders and set environment defaults for Prefect (idempotent)."""
    s = Settings(home=home())
    for d in (s.home, s.artifact_root, s.data_dir, s.cache_dir, s.models_dir, s.results_dir):
        d.mkdir(parents=True, exist_ok=True)
    env = os.environ
    env.setdefault("ATTNFLOW_HOME", str(s.home))
    if "PREFECT_API_URL" not in env:
        env.setdefault("PREFECT_HOME", str(s.home / "prefect"))
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(s.results_dir))
    env.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    env.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.5")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return s


def settings() -> Settings:
    """Current settings (reads ATTNFLOW_HOME each call, so tests can point it elsewhere)."""
    return Settings(home=home())


configure()
