"""MLflow unreachable mid-flow: logging tasks retry, the flow fails with a clear message, nothing computed is lost
(the re-run takes the evaluations from Prefect's result store and logs them)."""

from __future__ import annotations

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

import flows.compare as compare_module
from flows.compare import compare
from infra.settings import settings
from infra.stack import free_port
from tasks import tracking
from tests.flows.test_compare import task_states

KW = dict(components=["baseline", "zerotuning(gamma=7)"], tasks=["kv_retrieval(n_examples=6)"], seeds=[0],
          experiment="reliability-test", progress=False)


def _run_counts(flow_run_id) -> dict[str, int]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.run_count for r in runs}


def test_mlflow_down_after_evaluation_then_relogged_from_cache(tiny_llama_dir, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    original = compare_module.map_calls

    def evaluate_then_lose_mlflow(task, calls):
        out = original(task, calls)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)  # the tracking server goes away after the evaluations
        return out

    monkeypatch.setattr(compare_module, "map_calls", evaluate_then_lose_mlflow)
    monkeypatch.setattr(tracking.log_evaluation, "retry_delay_seconds", [0.2, 0.2, 0.2])  # 2, 5, 15 s in production
    failed = compare(model=str(tiny_llama_dir), **KW, return_state=True)
    assert failed.is_failed()
    with pytest.raises(tracking.TrackingUnavailable, match=r"not reachable.*Nothing computed is lost.*re-run"):
        failed.result()
    states = task_states(failed.state_details.flow_run_id)
    assert [s for n, s in states.items() if n.startswith("evaluate")] == ["Completed", "Completed"], states
    counts = _run_counts(failed.state_details.flow_run_id)
    assert [c for n, c in counts.items() if n.startswith("log ")] == [4], counts  # 1 try + 3 retries, then stop

    monkeypatch.setattr(compare_module, "map_calls", original)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # back
    again = compare(model=str(tiny_llama_dir), **KW, return_state=True)
    assert again.is_completed(), again
    states = task_states(again.state_details.flow_run_id)
    assert [s for n, s in states.items() if n.startswith("evaluate")] == ["Cached", "Cached"], states
    mlflow.set_tracking_uri(settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["reliability-test"], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{again.result()['run_id']}'")
    assert len(runs) == 2 and all("kv_retrieval/accuracy" in r.data.metrics for r in runs)
    assert again.result()["table"]["cells"]  # the same evaluations, now logged
    # the failed flow's parent run could not be ended while MLflow was down: it is FAILED now, not RUNNING
    [lost] = mlflow.search_runs(experiment_names=["reliability-test"], output_format="list",
                                filter_string="tags.attnflow.prefect_flow_run_id = "
                                              f"'{failed.state_details.flow_run_id}'")
    assert lost.info.status == "FAILED" and "not reachable" in lost.data.tags["attnflow.end_reason"]


def test_missing_data_file_fails_once_not_retried(tmp_path):
    """A deterministic error (here perplexity(source=...) naming a missing file) is not retried: one task run, the
    message intact (prepare_data has retries=2 for transient I/O errors)."""
    from prefect import flow

    import registry
    from components.data import DataSourceError
    from tasks.data import prepare_data

    bench = registry.get("perplexity", family="benchmark").create({"source": str(tmp_path / "missing.txt")})

    @flow(name="missing-data-test")
    def prepare_missing():
        return prepare_data(bench.ref, bench.params(), "eval", "missing")

    state = prepare_missing(return_state=True)
    assert state.is_failed()
    with pytest.raises(DataSourceError, match="missing.txt' does not exist"):
        state.result()
    counts = _run_counts(state.state_details.flow_run_id)
    assert list(counts.values()) == [1], counts
