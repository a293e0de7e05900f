"""The demo model: find it (or train it), and register it in MLflow once."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from components import modeling
from tasks import tracking
from tasks.lm import register_lm
from tasks.model_registry import find_version
from tasks.retry import transient

DEMO_NAME = "attnflow.demo-lm"


@task(cache_policy=NO_CACHE, task_run_name="find demo model")
def find_demo() -> str | None:
    """Directory of the demo model, or None when it has to be trained."""
    try:
        return modeling.resolve(modeling.DEMO).location
    except modeling.ModelNotFoundError:
        return None


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=transient, cache_policy=NO_CACHE,
      task_run_name="register demo model")
def ensure_registered(model_dir: str) -> str:
    """Register the demo directory as ``attnflow.demo-lm`` (alias champion) unless these weights already are."""
    fp = modeling.model_fingerprint(model_dir)
    if (version := find_version(DEMO_NAME, fp)) is not None:
        return version
    info_file = Path(model_dir) / "training.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    tags = {"attnflow.model_fingerprint": fp, "attnflow.data_fingerprint": str(info.get("data_fingerprint", "")),
            "attnflow.command": str(info.get("command", ""))}
    tags.update({tracking.metric_key(f"metric.{k}"): f"{v:.4f}" for k, v in info.get("metrics", {}).items()})
    return register_lm.fn(None, model_dir, DEMO_NAME, "champion", tags)
