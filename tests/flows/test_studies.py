"""The study flows end to end at seconds-long sizes: real Prefect test server, real MLflow store. Each flow logs a
verdict (tags, metrics, verdict.md), figures and child runs; a re-run with one more sweep point computes only that
point; bad input fails before any compute."""

from __future__ import annotations

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.homeostasis import homeostasis
from flows.icl_linear import icl_linear
from flows.icl_softmax import icl_softmax_heads
from infra.settings import settings

LSA = dict(d=[3], covariance=["identity"], steps=40, batch=256, test_lengths=[5, 10], shifts=["task", "covariate:2"],
           n_test=300, workers=1, experiment="icl-linear-test")


def task_states(state) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return {r.name: r.state.name for r in runs}


def parent_and_children(run_id: str):
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    arts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "figures")}
    return parent, children, arts


def test_icl_linear_logs_a_verdict_and_recomputes_only_new_points():
    state = icl_linear(n_prompt=[10], return_state=True, **LSA)
    assert state.is_completed(), state
    out = state.result()
    names = {c["name"] for c in out["checks"]}
    assert {"converges_to_gamma_inv", "error_follows_theory", "task_shift_tolerated",
            "covariate_shift_not_tolerated"} <= names
    parent, children, arts = parent_and_children(out["run_id"])
    assert parent.data.tags["attnflow.component"] == "lsa_icl"
    assert parent.data.tags["attnflow.verdict"] == f"{out['passed']}/{out['total']} passed"
    assert parent.data.tags["verdict.covariate_shift_not_tolerated"] in ("pass", "fail")
    assert "check/converges_to_gamma_inv" in parent.data.metrics and parent.data.params["n_prompt"] == "[10]"
    assert {"verdict.md", "results.json", "figures/error_vs_length.png", "figures/weights.png",
            "figures/shift_table.png"} <= arts
    assert len(children) == 1 and "error/M10" in children[0].data.metrics

    again = icl_linear(n_prompt=[10, 20], return_state=True, **LSA)  # one more sweep point
    assert again.is_completed()
    states = task_states(again)
    assert states["d=3, n_prompt=10, covariance=identity: train"] == "Cached"
    assert states["d=3, n_prompt=10, covariance=identity: evaluate"] == "Cached"
    assert states["d=3, n_prompt=20, covariance=identity: train"] == "Completed"


def test_icl_softmax_heads_smoke():
    state = icl_softmax_heads(heads=[1, 2], linear_heads=[2], d=3, context=8, steps=15, batch=32,
                              test_lengths=[8, 16], n_test=100, workers=1, experiment="icl-softmax-test",
                              return_state=True)
    assert state.is_completed(), state
    out = state.result()
    names = {c["name"] for c in out["checks"]}
    assert {"kq_diagonal_homogeneous", "ov_last_entry_only", "mu_sums_to_zero", "two_heads_match_debiased_gd",
            "multihead_beats_single_head", "linear_length_generalisation"} <= names
    parent, children, arts = parent_and_children(out["run_id"])
    assert {"figures/kq_heatmaps.png", "figures/ov_heatmaps.png", "figures/mse_vs_length.png",
            "figures/dynamics.png"} <= arts
    assert sorted(c.data.tags["attnflow.label"] for c in children) == ["linear H=2", "softmax H=1", "softmax H=2"]


def test_homeostasis_on_worker_processes():
    state = homeostasis(swaps_per_epoch=[0, 5, 10], seeds=[0, 1], epochs=1, n_train=200, n_val=50, features=8,
                        hidden1=10, hidden2=8, workers=2, experiment="homeostasis-test", return_state=True)
    assert state.is_completed(), state
    out = state.result()
    names = {c["name"] for c in out["checks"]}
    assert {"lrh_beats_lrc_at_5", "lrh_beats_lrr_at_10", "advantage_largest_at_highest_rate",
            "lrr_gain_is_larger_eta"} <= names
    parent, children, arts = parent_and_children(out["run_id"])
    assert len(children) == 4 * 3
    assert {"figures/accuracy_vs_shift_rate.png", "figures/eta_trajectories.png", "verdict.md"} <= arts
    assert "acc/lrh/swaps5" in parent.data.metrics


@pytest.mark.parametrize("flow_fn, params, message", [
    (icl_linear, {**LSA, "n_prompt": [10], "shifts": ["covariate:-1"]}, "must be > 0"),
    (icl_linear, {**LSA, "n_prompt": [0]}, "lsa_icl.n_prompt=0 is out of range"),
    (homeostasis, {"dataset": "/nonexistent/data.parquet"}, "does not exist"),
    (homeostasis, {"methods": ["lrc", "lrc_matched"]}, "needs lrr"),
])
def test_bad_input_fails_before_any_compute(flow_fn, params, message):
    state = flow_fn(**params, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=message):
        state.result()
    assert not any(n.endswith((": train", ": simulate")) for n in task_states(state))
