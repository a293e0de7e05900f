"""Reliability: the process that executes a flow run dies mid-flow (SIGKILL of the worker's flow-run process, as
when a machine runs out of memory). The worker reports the run as Crashed, and a re-run of the same deployment with
the same parameters takes the evaluations that finished before the crash from the cache (state "Cached") and
completes the whole comparison. Everything through the stack's Prefect and MLflow APIs, no browser."""

from __future__ import annotations

import time
import urllib.error

import psutil
import pytest

from tests.e2e.conftest import api, mlflow_api, task_run_states, wait_for_state

pytestmark = pytest.mark.e2e

# One evaluation per component, each long enough (~1 s of compute) that the kill lands between the first and the last.
COMPONENTS = ["baseline", "zerotuning(gamma=0.5)", "zerotuning(gamma=2)", "zerotuning(gamma=3)", "zerotuning(gamma=4)",
              "zerotuning(gamma=6)", "head_mask(heads=0:0)", "head_mask(heads=0:1)", "head_mask(heads=1:0)",
              "head_mask(heads=1:1)"]
TASK = "kv_retrieval(n_pairs=32, n_examples=48)"
EXPERIMENT = "e2e-crash"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _api(cfg, path: str, body: dict | None = None, attempts: int = 6):
    """The Prefect API, retried a few times when a loaded server answers 5xx or times out."""
    for i in range(attempts):
        try:
            return api(cfg, path, body)
        except (urllib.error.HTTPError, urllib.error.URLError, TimeoutError) as e:
            if (isinstance(e, urllib.error.HTTPError) and e.code < 500) or i == attempts - 1:
                raise
            time.sleep(2 * (i + 1))


def _start(cfg, params: dict) -> str:
    deployment = next(d for d in _api(cfg, "/deployments/filter", {}) if d["name"] == "compare")
    return _api(cfg, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": params})["id"]


def _evaluations(states: dict[str, str], state: str) -> set[str]:
    return {n for n, s in states.items() if n.startswith("evaluate ") and s == state}


def _flow_run_processes(flow_run_id: str) -> list:
    """The processes executing this flow run: the worker starts them with PREFECT__FLOW_RUN_ID in their
    environment (the worker itself has none)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id and p.status() != "zombie":
                found.append(p)
        except psutil.Error:
            continue
    return found


def _poll(what: str, check, timeout: float, interval: float = 0.25):
    """``check()`` until it returns something truthy (returned) or raises; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)


def test_flow_run_process_killed_mid_flow_is_crashed_and_rerun_reuses_cache(e2e_stack, tiny_llama_dir):
    cfg = e2e_stack
    params = {"model": str(tiny_llama_dir), "components": COMPONENTS, "tasks": [TASK], "seeds": [0],
              "experiment": EXPERIMENT, "progress": False}
    first = _start(cfg, params)

    # 1. The worker picks the run up and starts its process; found before any evaluation ends, so the kill is instant.
    def running_processes():
        run = _api(cfg, f"/flow_runs/{first}")
        assert run["state_type"] not in FINAL, f"first run ended before the kill: {run['state']}"
        return _flow_run_processes(first) if run["state_type"] == "RUNNING" else []

    procs = _poll("the first run's process", running_processes, timeout=600)

    # 2. As soon as one evaluation is Completed (and before all are), SIGKILL the flow-run process tree.
    def some_evaluation_done():
        run = _api(cfg, f"/flow_runs/{first}")
        assert run["state_type"] not in FINAL, f"first run ended before the kill: {run['state']}"
        return _evaluations(task_run_states(cfg, first), "Completed")

    _poll("a completed evaluation in the first run", some_evaluation_done, timeout=900, interval=0.1)
    for p in procs:
        p.kill()
    _, alive = psutil.wait_procs(procs, timeout=120)
    assert not alive, alive

    # 3. The worker sees its flow-run process exit non-zero and marks the run Crashed.
    crashed = _poll("the first run to end", lambda: (r := _api(cfg, f"/flow_runs/{first}"))["state_type"] in FINAL
                    and r, timeout=300, interval=1)
    assert crashed["state_type"] == "CRASHED", crashed["state"]
    states = task_run_states(cfg, first)
    done_before = _evaluations(states, "Completed")
    assert not _evaluations(states, "Cached"), states  # the first run computed what it has: no earlier cache
    assert done_before and len(done_before) < len(COMPONENTS), states  # killed in the middle
    print(f"killed after {len(done_before)} of {len(COMPONENTS)} evaluations: {crashed['state']['message']}")

    # 4. The same deployment, same parameters again: the evaluations done before the crash come from the cache
    #    (the others are computed), and the run completes the whole comparison.
    second = _start(cfg, params)
    finished = wait_for_state(cfg, second, timeout=900)
    states2 = task_run_states(cfg, second)
    assert finished["state_name"] == "Completed", (finished["state"], states2)
    cached, computed = _evaluations(states2, "Cached"), _evaluations(states2, "Completed")
    assert done_before <= cached, (done_before, states2)
    assert len(cached | computed) == len(COMPONENTS), states2

    # 5. MLflow: the second run's parent run holds one evaluation run per component, each with its metrics.
    exp = mlflow_api(cfg, "experiments/search", {"filter": f"name = '{EXPERIMENT}'", "max_results": 1})["experiments"]
    runs = mlflow_api(cfg, "runs/search", {"experiment_ids": [exp[0]["experiment_id"]], "max_results": 200})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parent = [rid for rid, t in tags.items() if t.get("attnflow.prefect_flow_run_id") == second
              and "mlflow.parentRunId" not in t]
    assert len(parent) == 1, tags
    children = [r for r in runs if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent[0]]
    assert len(children) == len(COMPONENTS), [r["info"]["run_name"] for r in children]
    assert all(r["data"].get("metrics") for r in children)
    # 6. The killed run's parent MLflow run, left RUNNING by the SIGKILL, was marked KILLED when the second run
    #    started (its process was gone); no run of the experiment is left RUNNING.
    status = {r["info"]["run_id"]: r["info"]["status"] for r in runs}
    killed = [rid for rid, t in tags.items() if t.get("attnflow.prefect_flow_run_id") == first
              and "mlflow.parentRunId" not in t]
    assert len(killed) == 1 and status[killed[0]] == "KILLED", (killed, status)
    assert "orphaned: process" in tags[killed[0]]["attnflow.end_reason"]
    assert "RUNNING" not in status.values(), status
