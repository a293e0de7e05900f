"""analyze and retrieval-heads end to end: real Prefect test server, real MLflow store, tiny model."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from flows.analyze import analyze
from flows.retrieval_heads import retrieval_heads
from infra.settings import settings
from tasks.plan import plan_request
from tests.flows.test_compare import task_states
from tests.helpers.threads import one_thread  # noqa: F401

SINK = {"n_samples": "4", "n_tokens": "16"}
DETECT = {"lengths": "20", "depths": "0,1", "n_per_cell": "1", "max_new_tokens": "4"}
TASKS = ["needle(lengths=20, depths=0;1, n_per_cell=1, max_new_tokens=6)", "kv_retrieval(n_examples=4)"]


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=settings().tracking_uri)


@pytest.fixture(scope="module")
def sink_run(tiny_llama_dir):
    state = analyze(model=str(tiny_llama_dir), analyzer="sink_metric", params=SINK, experiment="analyze-test",
                    progress=False, return_state=True)
    assert state.is_completed(), state
    return state


def test_analyze_logs_arrays_tables_heads_and_figures(sink_run, tmp_path):
    out = sink_run.result()
    run = client().get_run(out["run_id"])
    assert run.data.tags["attnflow.component"] == "sink_metric" and run.data.tags["attnflow.component_version"]
    assert run.data.params["n_tokens"] == "16" and "sink_1" in run.data.metrics
    assert run.data.metrics["sink_1"] == pytest.approx(out["metrics"]["sink_1"])
    local = client().download_artifacts(out["run_id"], "", str(tmp_path))
    alpha = np.load(f"{local}/arrays/alpha_first.npy")
    assert alpha.shape == (2, 4) and np.all((alpha > 0) & (alpha <= 1))
    for path in ("arrays/alpha_first.parquet", "tables/by_layer.parquet", "figures/attention_first.png",
                 "figures/sink_rate_by_key.png", "heads/sink_heads.json", "summary.json"):
        assert (tmp_path / path).is_file(), path
    assert json.loads((tmp_path / "heads/sink_heads.json").read_text()) == {"heads": out["heads"]["sink_heads"]}


def test_analyze_rerun_is_cached(sink_run, tiny_llama_dir):
    state = analyze(model=str(tiny_llama_dir), analyzer="sink_metric", params=SINK, experiment="analyze-test",
                    progress=False, return_state=True)
    states = task_states(state.state_details.flow_run_id)
    assert [s for n, s in states.items() if n.startswith("analyze")] == ["Cached"], states
    assert state.result()["metrics"] == sink_run.result()["metrics"]


def test_bad_analyzer_parameter_fails_before_model_load(tiny_llama_dir):
    state = analyze(model=str(tiny_llama_dir), analyzer="path_patching", params={"receivers": "7:0"},
                    experiment="analyze-test", progress=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="path_patching.receivers: 7:0 out of range"):
        state.result()
    assert not any(n.startswith("load") for n in task_states(state.state_details.flow_run_id))


def test_retrieval_heads_causal_test_end_to_end(tiny_llama_dir):
    state = retrieval_heads(model=str(tiny_llama_dir), detect=DETECT, top_k=2, n_random=2, tasks=TASKS,
                            experiment="retrieval-heads-test", progress=False, return_state=True)
    assert state.is_completed(), state
    out = state.result()
    sets, table = out["sets"], out["table"]
    assert sets["k"] == 2 and len(sets["random"]) == 2
    assert all(not set(map(tuple, d)) & set(map(tuple, sets["top"])) for d in sets["random"])
    assert table["rows"] == ["baseline", "mask top-2 retrieval heads", "mask 2 random heads"]
    assert table["cells"]["mask 2 random heads"]["kv_retrieval/accuracy"]["n"] == 2  # mean over the draws
    assert set(out["verdict"]["verdicts"]) == {"needle/accuracy", "kv_retrieval/accuracy"}
    runs = mlflow.search_runs(experiment_names=["retrieval-heads-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["run_id"]]
    assert len(children) == 1 + 4 * 2  # the detection run + 4 arms x 2 tasks
    arts = {a.path for a in client().list_artifacts(out["run_id"])}
    assert {"verdict.md", "comparison.md", "comparison.png", "heads"} <= arts
    # the head sets are usable as inputs of other runs
    plan = plan_request.fn(str(tiny_llama_dir), [f"head_mask(heads=mlflow:{out['run_id']}/heads/top.json)"],
                           ["kv_retrieval"])
    assert plan.components[0].text.startswith("head_mask@1.0.0(heads=" + ";".join(f"{a}:{b}" for a, b in sets["top"]))
