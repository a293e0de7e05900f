"""Publish component versions to the MLflow model registry, once each.

Each component is a registered model ``attnflow.<name>``; each (component version, code fingerprint) is one
model version whose tags carry the semantic version, family, paper, code fingerprint and source path, and whose
artifacts hold the component's source files. Publishing is idempotent: an existing version with the same
semantic version and code fingerprint is returned as is. A changed source under an unchanged version is
published as a new model version tagged ``attnflow.unbumped=true`` so the change stays visible.
"""

from __future__ import annotations

import importlib
import inspect
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from registry import ComponentInfo, _source_modules

PUBLISH_EXPERIMENT = "attnflow-components"


def registered_name(info: ComponentInfo) -> str:
    return f"attnflow.{info.name}"


def _experiment_id(client: MlflowClient, artifact_root: str | None) -> str:
    exp = client.get_experiment_by_name(PUBLISH_EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    location = f"{artifact_root.rstrip('/')}/{PUBLISH_EXPERIMENT}" if artifact_root else None
    try:
        return client.create_experiment(PUBLISH_EXPERIMENT, artifact_location=location)
    except MlflowException:  # created concurrently
        return client.get_experiment_by_name(PUBLISH_EXPERIMENT).experiment_id


def publish(info: ComponentInfo, client: MlflowClient, artifact_root: str | None = None) -> ModelVersion:
    """Return the registry version for this component version, creating it on first use."""
    name = registered_name(info)
    code_fp = info.code_fingerprint()
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name,
                tags={"attnflow.family": info.family, "attnflow.paper": info.paper or ""},
                description=f"{info.summary}\n\nPaper: {info.paper_url or info.paper or '-'}",
            )
        except MlflowException:
            pass  # created concurrently
    same_version = []
    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.tags.get("attnflow.component_version") == info.version:
            if mv.tags.get("attnflow.code_fingerprint") == code_fp:
                return mv
            same_version.append(mv)

    run = client.create_run(_experiment_id(client, artifact_root), run_name=f"publish {info.ref}",
                            tags={"attnflow.component": info.name, "attnflow.component_version": info.version})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "component"
            root.mkdir()
            for mod in _source_modules(info.cls):
                src = Path(inspect.getfile(importlib.import_module(mod)))
                (root / (mod.replace(".", "__") + ".py")).write_text(src.read_text())
            client.log_artifacts(run.info.run_id, str(root), artifact_path="component")
    except BaseException as e:  # never left RUNNING (tasks/runs.py): FAILED, or KILLED on a signal
        client.set_terminated(run.info.run_id, status="FAILED" if isinstance(e, Exception) else "KILLED")
        raise
    client.set_terminated(run.info.run_id)
    tags = {
        "attnflow.component": info.name,
        "attnflow.component_version": info.version,
        "attnflow.family": info.family,
        "attnflow.paper": info.paper or "",
        "attnflow.code_fingerprint": code_fp,
        "attnflow.source_file": info.source_file.name,
    }
    if same_version:
        tags["attnflow.unbumped"] = "true"
    return client.create_model_version(
        name, source=f"{run.info.artifact_uri}/component", run_id=run.info.run_id, tags=tags,
        description=f"{info.ref}: {info.summary}",
    )
