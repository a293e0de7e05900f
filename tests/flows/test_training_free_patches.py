"""compare with the training-free patches: PASTA reads the prompt texts, soft injection is fitted on the train
split first (its fitted state is fingerprinted on the run and drawn as a heatmap)."""

from __future__ import annotations

import mlflow
import pytest

from flows.compare import compare
from infra.settings import settings

COMPONENTS = ["baseline", "pasta(alpha=0.5, spans=-12:)",
              "soft_injection(n_shots=1, n_prompts=2, steps=2, valid_every=1)"]


def test_compare_runs_every_patch_and_fits_soft_injection(tiny_llama_dir):
    out = compare(model=str(tiny_llama_dir), components=COMPONENTS, tasks=["icl_classification(n_examples=6)"],
                  experiment="patches-test", progress=False)
    assert len(out["table"]["rows"]) == 3
    mlflow.set_tracking_uri(settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["patches-test"], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{out['run_id']}'")
    si = [r for r in runs if r.data.tags["attnflow.component"] == "soft_injection"][0]
    assert len(si.data.tags["attnflow.fit.fingerprint"]) == 16 and si.data.tags["attnflow.fit.n_train"] == "5"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(si.info.run_id, "figures")}
    assert "figures/fit.png" in arts
    others = [r for r in runs if r.data.tags["attnflow.component"] != "soft_injection"]
    assert not any(k.startswith("attnflow.fit.") for r in others for k in r.data.tags)


def test_fitted_component_on_a_task_without_train_split_fails_early(tiny_llama_dir):
    state = compare(model=str(tiny_llama_dir), components=["soft_injection"], tasks=["perplexity"],
                    experiment="patches-test", progress=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="soft_injection is fitted on a benchmark's train split, and perplexity"):
        state.result()
