"""compare end to end: real Prefect test server, real MLflow SQLite store, tiny model built from a config."""

from __future__ import annotations

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

import registry
from flows.compare import compare
from infra.settings import settings

COMPONENTS = ["baseline", "zerotuning(gamma=3)", "head_mask(heads=0:1;1:*)"]
TASKS = ["kv_retrieval(n_examples=8)", "perplexity(max_tokens=600)"]


def task_states(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


@pytest.fixture(scope="module")
def first_run(tiny_llama_dir):
    state = compare(model=str(tiny_llama_dir), components=COMPONENTS, tasks=TASKS, seeds=[0, 1],
                    experiment="compare-test", progress=False, return_state=True)
    assert state.is_completed(), state
    return state


def test_compare_logs_runs_tags_params_metrics(first_run, tiny_llama_dir):
    out = first_run.result()
    table = out["table"]
    assert table["rows"] == ["baseline", "zerotuning(gamma=3.0)", "head_mask(heads=0:1,1:*)"]
    assert {"kv_retrieval/accuracy", "perplexity/ppl"} <= set(table["columns"])
    assert table["cells"]["baseline"]["kv_retrieval/accuracy"]["n"] == 2  # two seeds

    mlflow.set_tracking_uri(settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["compare-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["run_id"]]
    assert len(children) == 3 * 4  # 3 components x 2 tasks x 2 seeds (the built-in perplexity text is seeded)
    zt = [r for r in children if r.data.tags["attnflow.component"] == "zerotuning"]
    tags = zt[0].data.tags
    for key in ("attnflow.component_version", "attnflow.fingerprint", "attnflow.model", "attnflow.task",
                "attnflow.git_commit", "attnflow.registry_version", "attnflow.prefect_flow_run_id"):
        assert tags.get(key), key
    assert tags["attnflow.component_version"] == "1.0.0"
    assert zt[0].data.params["gamma"] == "3.0" and zt[0].data.params["heads"] == "all"
    kv = [r for r in zt if r.data.tags["attnflow.task"] == "kv_retrieval"]
    assert {r.data.tags["attnflow.seed"] for r in kv} == {"0", "1"}
    assert "kv_retrieval/accuracy" in kv[0].data.metrics

    parent = mlflow.get_run(out["run_id"])
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(out["run_id"])}
    assert {"comparison.md", "comparison.png", "comparison.json", "comparison_table.json"} <= arts
    assert parent.info.status == "FINISHED"
    child_arts = {a.path for a in mlflow.MlflowClient().list_artifacts(kv[0].info.run_id, "figures")}
    assert "figures/by_depth.png" in child_arts


def test_components_published_once_with_versions(first_run):
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    for name in ("zerotuning", "head_mask", "baseline", "kv_retrieval", "perplexity"):
        versions = client.search_model_versions(f"name='attnflow.{name}'")
        assert len(versions) == 1, name
        assert versions[0].tags["attnflow.component_version"] == registry.get(name).version
        assert versions[0].tags["attnflow.code_fingerprint"]
    zt = client.search_model_versions("name='attnflow.zerotuning'")[0]
    assert zt.tags["attnflow.paper"] == "arXiv:2505.11739"
    src_files = {a.path for a in client.list_artifacts(zt.run_id, "component")}
    assert "component/components__patches__zerotuning.py" in src_files


def test_rerun_skips_data_prep_and_evaluation(first_run, tiny_llama_dir):
    state = compare(model=str(tiny_llama_dir), components=COMPONENTS, tasks=TASKS, seeds=[0, 1],
                    experiment="compare-test", progress=False, return_state=True)
    assert state.is_completed()
    states = task_states(state.state_details.flow_run_id)
    prep = [s for n, s in states.items() if n.startswith("prepare")]
    evals = [s for n, s in states.items() if n.startswith("evaluate")]
    assert prep and all(s == "Cached" for s in prep), states
    assert evals and all(s == "Cached" for s in evals), states
    # the cached results are the same numbers
    assert state.result()["table"]["cells"] == first_run.result()["table"]["cells"]


def test_bad_component_fails_before_model_load(tiny_llama_dir):
    state = compare(model=str(tiny_llama_dir), components=["baseline", "zerotuning(gamma=-2)"], tasks=TASKS,
                    experiment="compare-test", progress=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"gamma=-2.0 is out of range"):
        state.result()
    states = task_states(state.state_details.flow_run_id)
    assert not any(n.startswith("load") for n in states), states
