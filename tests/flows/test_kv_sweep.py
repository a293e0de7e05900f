"""kv-sweep end to end: real Prefect test server, real MLflow store, tiny Llama built from a config."""

from __future__ import annotations

import mlflow
import pytest

from flows.kv_sweep import kv_sweep
from infra.settings import settings
from registry.specs import SpecError
from tasks.kv_sweep import plan_presses

PRESSES = ["streaming_llm(n_sink=2)", "knorm"]
RATIOS = [0.0, 0.5]
TASKS = ["kv_retrieval(n_examples=4)"]


def test_bad_requests_fail_before_compute():
    with pytest.raises(SpecError, match="ratios"):
        plan_presses.fn(["knorm"], [1.0])
    with pytest.raises(SpecError, match="sets the ratio"):
        plan_presses.fn(["knorm(ratio=0.5)"], [0.5])
    with pytest.raises(Exception, match="nope"):
        plan_presses.fn(["nope"], [0.5])


def test_kv_sweep_logs_points_and_curves(tiny_llama_dir):
    state = kv_sweep(model=str(tiny_llama_dir), presses=PRESSES, ratios=RATIOS, tasks=TASKS,
                     experiment="kv-sweep-test", return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert out["points"] == 4
    assert "| streaming_llm |" in out["table"] and "| knorm |" in out["table"]
    mlflow.set_tracking_uri(settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["kv-sweep-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["run_id"]]
    assert len(children) == 4
    by_ratio = {float(r.data.metrics["kv/ratio"]): r.data.metrics["kv/cache_bytes_ratio"] for r in children}
    assert by_ratio[0.0] == 1.0 and abs(by_ratio[0.5] - 0.5) <= 0.05
    client = mlflow.MlflowClient()
    arts = [a.path for a in client.list_artifacts(out["run_id"], "curves")]
    assert len(arts) == 1 and arts[0].endswith(".png")
    # a second run is served from the cache (same points, same metrics)
    again = kv_sweep(model=str(tiny_llama_dir), presses=PRESSES, ratios=RATIOS, tasks=TASKS,
                     experiment="kv-sweep-test")
    assert again["table"] == out["table"]


def test_query_modes_and_patches_are_checked_before_compute(tiny_llama_dir):
    from tasks.kv_sweep import check_sweep_modes
    from tasks.plan import plan_request

    plan = plan_request.fn(str(tiny_llama_dir), ["baseline"], ["perplexity", "kv_retrieval"], [0])
    with pytest.raises(SpecError, match="perplexity.*cannot be scored query-agnostic"):
        check_sweep_modes.fn(plan.benchmarks, False, None)
    check_sweep_modes.fn(plan.benchmarks, True, None)  # query-aware: any benchmark
    pasta = plan_request.fn(str(tiny_llama_dir), ["pasta(spans=0:20)"], ["kv_retrieval"], [0]).components[0]
    with pytest.raises(SpecError, match="neither fitting nor prompt inputs"):
        check_sweep_modes.fn(plan.benchmarks[1:], False, pasta)


def test_kv_sweep_with_a_patch_query_aware(tiny_llama_dir):
    out = kv_sweep(model=str(tiny_llama_dir), presses=["knorm"], ratios=[0.5], tasks=["kv_retrieval(n_examples=2)"],
                   experiment="kv-sweep-test-patch", query_aware=True, patch="zerotuning(gamma=2.0)")
    assert out["points"] == 1 and "| knorm |" in out["table"]
    mlflow.set_tracking_uri(settings().tracking_uri)
    parent = mlflow.get_run(out["run_id"])
    assert parent.data.params["query_aware"] == "True" and parent.data.params["patch"].startswith("zerotuning@")
