"""uncertainty end to end: real Prefect test server, real MLflow file store, tiny Llama built from a config."""

from __future__ import annotations

import json

import mlflow
import pytest

from flows.uncertainty import uncertainty
from infra.settings import settings
from registry.specs import SpecError
from tasks.uncertainty import plan_methods

SMALL = dict(n_samples=2, max_new_tokens=4, shard_size=2, batch_size=2, n_bootstrap=50, template="Q: {question}\nA:")


def _qa(path):
    rows = [{"q": f"what is abc:{i:03d}?", "refs": f"xyz:{i * 7:03d}|abc:{i:03d} xyz"} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_bad_methods_fail_before_compute():
    with pytest.raises(SpecError, match="empty component list"):
        plan_methods.fn([""])
    with pytest.raises(Exception, match="unknown uncertainty component 'nope'"):
        plan_methods.fn(["nope"])


def test_uncertainty_flow_logs_metrics_and_plot(tiny_llama_dir, tmp_path):
    data = _qa(tmp_path / "qa.jsonl")
    args = dict(data=str(data), model=str(tiny_llama_dir), question_field="q", answers_field="refs", separator="|",
                experiment="uncertainty-test", **SMALL)
    state = uncertainty(**args, return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert "| sar |" in out["table"] and "| semantic_entropy |" in out["table"]
    mlflow.set_tracking_uri(settings().tracking_uri)
    run = mlflow.get_run(out["run_id"])
    assert {"sar/auprc", "predictive_entropy/auprc", "accuracy", "cache/score_seconds"} <= set(run.data.metrics)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(out["run_id"])}
    assert {"auroc.png", "uncertainty.md", "uncertainty.json", "scores.json"} <= arts
    # a second run reuses both caches (same directories, nothing computed) and scores the same
    again = uncertainty(**args)
    assert again["generations_dir"] == out["generations_dir"] and again["table"] == out["table"]
    # a bad field fails before any model work
    with pytest.raises(Exception, match="no field 'question'"):
        uncertainty(**{**args, "question_field": "question"})
