"""Registering model directories in MLflow once per set of weights (the demo model, pulled catalogue models)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from components import modeling
from tasks import runs, tracking
from tasks.retry import transient

PULLED_ALIAS = "pulled"
_CARD_FILES = ("model_card.json", "README.md", "config.json", "LICENSE")


def find_version(name: str, fingerprint: str) -> str | None:
    """The version of registered model ``name`` whose weights have this fingerprint, if any."""
    try:
        for mv in tracking.client().search_model_versions(f"name='{name}'"):
            if mv.tags.get("attnflow.model_fingerprint") == fingerprint:
                return str(mv.version)
    except Exception:  # noqa: BLE001 - no registered model yet
        return None
    return None


def registered_name(model: str) -> str:
    return f"attnflow.{model}"


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=transient, cache_policy=NO_CACHE,
      task_run_name="register {model_dir}")
def register_pulled(model_dir: str, alias: str = PULLED_ALIAS) -> str:
    """Register a pulled catalogue model as ``attnflow.<name>`` (alias ``pulled``) unless these weights already are.

    The weights stay where they are (the version's source is the model directory, not a copy: Gemma-3 in float32
    is 1 GB); the run keeps the model card, config and licence as artifacts.
    """
    root = Path(model_dir)
    card = json.loads((root / "model_card.json").read_text())
    name, fp = registered_name(card["name"]), modeling.model_fingerprint(str(root))
    if (version := find_version(name, fp)) is not None:
        return version
    tags = {"attnflow.model_fingerprint": fp, "attnflow.source": ",".join(card["source"]["packages"]),
            "attnflow.gguf_sha256": card["source"]["gguf_sha256"], "attnflow.quantization": card["quantization_note"],
            "attnflow.licence": card["licence"]["name"], "attnflow.dtype": card["dtype"],
            "attnflow.card_ppl": f"{card['perplexity']['ppl']:.4f}"}
    c = tracking.client()
    with runs.tracked_run("models", f"pull {card['name']}", tags={"attnflow.kind": "pull", **tags},
                          params={"model_dir": str(root)}) as run_id:
        for f in _CARD_FILES:
            if (root / f).is_file():
                c.log_artifact(run_id, str(root / f), artifact_path="card")
        try:
            c.get_registered_model(name)
        except Exception:  # noqa: BLE001 - first version
            c.create_registered_model(name, description=f"{card['description']} ({card['quantization_note']})")
        mv = c.create_model_version(name, source=str(root), run_id=run_id, tags=tags)
        c.set_registered_model_alias(name, alias, mv.version)
    print(f"registered {name} version {mv.version} (alias {alias})")
    return str(mv.version)
