"""head-search end to end: cached per candidate (an extended search recomputes nothing done), heads.json + heatmap
in MLflow, and a later run accepts the head set as heads=mlflow:<run_id>/heads.json."""

from __future__ import annotations

import json
import time

import mlflow
import pytest

from flows.evaluate import evaluate
from flows.head_search import head_search
from infra.settings import settings

TASK = "icl_classification(n_examples=6, n_demos=4)"


def task_runs(state):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))


def scores(state, expect: int) -> dict[str, str]:
    """Final states of the candidate tasks; task-run states reach the API asynchronously, so poll briefly."""
    out: dict[str, str] = {}
    for _ in range(60):
        out = {r.name: r.state.name for r in task_runs(state) if r.name.startswith("score ") and r.state}
        if len(out) == expect and all(s in ("Completed", "Cached") for s in out.values()):
            break
        time.sleep(0.5)
    return out


def test_act_search_cached_per_head_then_used_by_reference(tiny_llama_dir):
    kw = dict(model=str(tiny_llama_dir), method="act", task=TASK, params={"tau": "0.05"}, workers=2,
              min_gain=-1.0, top_k=2, experiment="head-search-test")
    first = head_search(layers="0:*", return_state=True, **kw)
    assert first.is_completed(), first
    assert set(scores(first, 5).values()) == {"Completed"}
    # extending the search to every layer recomputes nothing already done: baseline and layer 0 come from cache
    wider = head_search(layers="all", return_state=True, **kw)
    states = scores(wider, 9)
    assert all(s == ("Cached" if "heads=0:" in n or n.startswith("score baseline") else "Completed")
               for n, s in states.items()), states
    out = wider.result()
    first_gains = [r["gain"] for r in first.result()["selection"]["gains"]]
    assert [r["gain"] for r in out["selection"]["gains"][:4]] == first_gains
    assert len(out["heads"]) == 2  # min_gain=-1 admits every head; top_k keeps the best two

    # a later run takes the head set by reference
    res = evaluate(model=str(tiny_llama_dir), component="act", params={"heads": out["ref"]},
                   task="icl_classification(n_examples=4, n_demos=4)", experiment="head-search-test", progress=False)
    runs = mlflow.search_runs(experiment_names=["head-search-test"], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{res['run_id']}'")
    assert runs and runs[0].data.params["heads"] == ",".join(f"{lay}:{h}" for lay, h in out["heads"])


def test_zerotuning_unsupervised_search_logs_heads_and_heatmap(tiny_llama_dir):
    out = head_search(model=str(tiny_llama_dir), method="zerotuning", task=TASK, layers="1:0-1", objective="entropy",
                      gammas=[2.0, 4.0], experiment="head-search-test")
    sel = out["selection"]
    assert sel["objective"] == "entropy" and sel["group"] in ("up", "down") and len(sel["gains"]) == 2
    assert {r["gamma"] for r in sel["gamma_grid"]} == ({2.0, 4.0} if sel["group"] == "up" else {0.5, 0.25})
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    assert {"heads.json", "gains_heatmap.png"} <= {a.path for a in client.list_artifacts(out["run_id"])}
    saved = json.loads(open(client.download_artifacts(out["run_id"], "heads.json")).read())
    assert saved["heads"] == out["heads"] and saved["gamma"] == out["gamma"]


def test_bad_search_fails_before_loading(tiny_llama_dir):
    state = head_search(model=str(tiny_llama_dir), method="act", task="perplexity", return_state=True,
                        experiment="head-search-test")
    assert state.is_failed()
    with pytest.raises(ValueError, match="perplexity has no train split"):
        state.result()
    assert not any(r.name.startswith("load") for r in task_runs(state))
