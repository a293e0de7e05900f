"""reproduce end to end on a tiny model: real Prefect test server, real MLflow store. Verdicts on a random tiny
model are whatever they are; the layout (parent + one nested run per claim, tags, table, figures) and finite
figures are asserted, not the verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest

from flows.reproduce import available_claims, reproduce
from infra.settings import settings
from tasks.claims_base import VERDICTS
from tasks.claims_core import CLAIMS as CORE_CLAIMS
from tests.flows.test_compare import task_states
from tests.helpers.threads import one_thread  # noqa: F401

OPTIONS = {"retrieval_heads": {"lengths": "20", "detect_depths": "0;1", "depths": "0;1", "max_new_tokens": 4},
           "head_importance": {"n_importance": 4, "n_eval": 4, "ppl_tokens": 200, "n_random": 2},
           "path_patching": {"n_prompts": 4, "n_random": 2}}


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=settings().tracking_uri)


@pytest.fixture(scope="module")
def run(tiny_llama_dir):
    options = {**OPTIONS, "sinks": {"n_samples": 4, "control_model": str(tiny_llama_dir)}}
    state = reproduce(model=str(tiny_llama_dir), seeds=[0, 1, 2], options=options, experiment="reproduce-test",
                      progress=False, return_state=True)
    assert state.is_completed(), state
    return state.result()


def test_parent_and_one_nested_run_per_claim(run, tmp_path):
    c = client()
    parent = c.get_run(run["run_id"])
    assert parent.data.tags["attnflow.kind"] == "reproduce" and parent.info.status == "FINISHED"
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run['run_id']}'")
    by_claim = {r.data.tags["attnflow.claim"]: r for r in children}
    assert set(by_claim) == set(available_claims()) and len(children) == len(by_claim)
    for name, child in by_claim.items():
        tags = child.data.tags
        assert tags["attnflow.verdict"] in VERDICTS and tags["attnflow.reason"] and tags["attnflow.paper"]
        assert parent.data.tags[f"attnflow.verdict.{name}"] == tags["attnflow.verdict"]
        assert child.data.params["seeds"] == "0,1,2" and child.data.params["criterion"]
        assert all(math.isfinite(v) for v in child.data.metrics.values())
        local = c.download_artifacts(child.info.run_id, "result.json", str(tmp_path / name))
        res = json.loads(Path(local).read_text())
        assert res["claim"] == name and res["verdict"] == tags["attnflow.verdict"]
    # claims that computed figures have 3 seeds, finite means and CIs with lo <= mean <= hi, and a per-seed figure
    computed = [r for r in run["results"] if r["per_seed"] and r["claim"] in CORE_CLAIMS]
    assert {"sinks", "head_importance", "path_patching"} <= {r["claim"] for r in computed}
    for res in computed:
        assert res["n_seeds"] == 3 and [r["seed"] for r in res["per_seed"]] == [0, 1, 2]
        effect = res["effect"]
        lo, hi = res["ci"][effect]
        assert math.isfinite(res["figures"][effect]) and lo <= res["figures"][effect] <= hi
        assert "figures/per_seed.png" in [a.path for a in c.list_artifacts(
            next(r for r in children if r.data.tags["attnflow.claim"] == res["claim"]).info.run_id, "figures")]
    sinks = next(r for r in run["results"] if r["claim"] == "sinks")
    assert sinks["figures"]["sink_1_model"] == sinks["figures"]["sink_1_control"]  # the same model as control


def test_parent_has_table_json_and_forest_plot(run, tmp_path):
    local = client().download_artifacts(run["run_id"], "", str(tmp_path))
    table = (tmp_path / "claims.md").read_text()
    for name in available_claims():
        assert f"| {name} |" in table
    rows = json.loads((tmp_path / "claims.json").read_text())["rows"]
    assert [r["claim"] for r in rows] == list(available_claims()) and local
    assert (tmp_path / "figures" / "claims.png").stat().st_size > 1000
    metrics = client().get_run(run["run_id"]).data.metrics
    assert sum(metrics[k] for k in ("n_held", "n_not_held", "n_inconclusive")) == len(rows)


def test_bad_claim_name_fails_before_model_load(tiny_llama_dir):
    state = reproduce(model=str(tiny_llama_dir), claims=["sinks", "nope"], experiment="reproduce-test",
                      progress=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="unknown claim.*nope.*claims: sinks"):
        state.result()
    assert not any(n.startswith("load") for n in task_states(state.state_details.flow_run_id))


def test_missing_dataset_is_inconclusive_without_compute(tiny_llama_dir, monkeypatch):
    from dataclasses import replace

    import tasks.claims_core as core

    needy = replace(core.SINKS, needs_data=("sst2",))
    monkeypatch.setattr(core, "CLAIMS", {**core.CLAIMS, "sinks": needy})
    state = reproduce(model=str(tiny_llama_dir), claims=["sinks"], experiment="reproduce-test", progress=False,
                      return_state=True)
    res = state.result()["results"][0]
    assert res["verdict"] == "inconclusive" and res["reason"] == "no sst2 dataset given" and not res["per_seed"]
    assert not any(n.startswith("analyze") for n in task_states(state.state_details.flow_run_id))
