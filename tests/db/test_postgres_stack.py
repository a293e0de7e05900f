"""The local stack on PostgreSQL (`attnflow up --database postgresql://...`), and the database dying mid-flow.

`compare` runs through the stack (the `attnflow` CLI with the stack's ATTNFLOW_HOME, so Prefect's API and MLflow's
tracking server are the stack's, both on the test's PostgreSQL). As soon as the first evaluation result is
persisted in Prefect's result store, the whole database server is SIGKILLed (postmaster and backends), left down for
a few seconds, then restarted on the same data. The run either rides out the outage (Prefect's client retries
503s, MLflow's engine pings its pooled connections) or fails with a clear message; either way nothing computed is
lost: a re-run takes every evaluation persisted before the kill from the cache (state "Cached", the evaluation not
executed again), completes, and MLflow, on PostgreSQL, holds the comparison's runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from infra import stack
from infra.stack import REPO
from tests.db.conftest import PASSWORD

pytestmark = pytest.mark.db

# One evaluation per component, each ~1 s of compute on the tiny model, so the kill lands between first and last.
COMPONENTS = ["baseline", "zerotuning(gamma=0.5)", "zerotuning(gamma=2)", "zerotuning(gamma=4)", "head_mask(heads=0:0)",
              "head_mask(heads=1:1)"]
TASK = "kv_retrieval(n_pairs=32, n_examples=48)"
EXPERIMENT = "db-outage"
DOWN_SECONDS = 4.0  # how long the database stays dead


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def _cli_env(home: Path) -> dict[str, str]:
    """The test session's environment without its Prefect/MLflow settings (they name the session's own home):
    the CLI then finds the stack of ``home`` by itself (infra/settings.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(ATTNFLOW_HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


def _compare(home: Path, model: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "attnflow", "--verbose", "compare", "--model", str(model),
           "--components", ",".join(COMPONENTS), "--tasks", TASK, "--experiment", EXPERIMENT]
    return subprocess.Popen(cmd, cwd=REPO, env=_cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _evaluated(output: str) -> int:
    """Evaluations actually executed in a run: tasks/evaluate.py prints '<component> on <task>: ... (N.Ns)' (on the
    console with --verbose)."""
    return sum(1 for line in output.splitlines() if " on kv_retrieval" in line and "accuracy=" in line)


def _eval_results(home: Path) -> dict[str, float]:
    """Persisted evaluation results (Prefect's result store; file name = the evaluation's cache key,
    ``eval<key version>-...``) -> mtime."""
    return {p.name: p.stat().st_mtime for p in (home / "prefect-results").glob("eval*-*")}


def _flow_runs(cfg: stack.StackConfig) -> list[dict]:
    runs = _post(f"{cfg.api_url}/flow_runs/filter", {"flows": {"name": {"any_": ["compare"]}}})
    return sorted(runs, key=lambda r: r["created"])


def _evaluation_states(cfg: stack.StackConfig, flow_run_id: str, n: int, timeout: float = 90) -> dict[str, str]:
    """Final states of the run's evaluate tasks (recorded from events, so polled until all ``n`` are final)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = _post(f"{cfg.api_url}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        states = {r["name"]: r["state_name"] for r in runs if r["name"].startswith("evaluate ")}
        if (len(states) == n and all(s in ("Completed", "Cached", "Failed") for s in states.values())) \
                or time.monotonic() > deadline:
            return states
        time.sleep(1)


def test_compare_survives_database_kill_and_rerun_uses_cache(postgres, pg_stack, tiny_llama_dir):
    cfg, home = pg_stack, pg_stack.home
    state_text = (home / "stack" / stack.STATE_FILE).read_text()
    assert PASSWORD not in state_text and json.loads(state_text)["database"].startswith("postgresql://attnflow:***@")
    t0 = time.monotonic()

    # 1. compare through the stack; SIGKILL the database once the first evaluation result is persisted.
    first = _compare(home, tiny_llama_dir)
    try:
        while not _eval_results(home):
            assert first.poll() is None, f"compare ended before any evaluation was persisted:\n{first.stdout.read()}"
            assert time.monotonic() - t0 < 300, "no evaluation persisted after 300 s"
            time.sleep(0.05)
        postgres.kill()
        persisted = _eval_results(home)
        assert len(persisted) < len(COMPONENTS), "all evaluations finished before the kill"
        time.sleep(DOWN_SECONDS)
        postgres.start()
        out1, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    print(f"killed the database after {len(persisted)} of {len(COMPONENTS)} evaluations; first run exit "
          f"{first.returncode} after {time.monotonic() - t0:.0f} s")

    # 2. The first run noticed the outage (its logs to Prefect's API failed, or a call was retried) and either rode
    #    it out or failed with a clear message.
    noticed = [m for m in ("Error logging to API", "will start", "Retrying", "503") if m in out1]
    print(f"the first run saw: {noticed}")
    assert noticed or first.returncode != 0, out1[-3000:]
    if first.returncode == 0:
        assert _evaluated(out1) == len(COMPONENTS), out1[-3000:]
    else:
        assert "failed" in out1.lower() or "crash" in out1.lower(), out1[-3000:]
    for name, mtime in persisted.items():  # results persisted before the kill are still there, untouched
        assert _eval_results(home).get(name) == mtime, name

    # 3. The re-run takes what was persisted from the cache, computes at most the rest, and completes.
    second = _compare(home, tiny_llama_dir)
    try:
        out2, _ = second.communicate(timeout=600)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, out2[-3000:]
    assert _evaluated(out2) <= len(COMPONENTS) - len(persisted), out2[-3000:]
    for name, mtime in persisted.items():
        assert _eval_results(home)[name] == mtime, f"{name} was recomputed"
    runs = _flow_runs(cfg)
    recorded = Counter(_evaluation_states(cfg, runs[0]["id"], len(COMPONENTS), timeout=0).values())
    print(f"the first run as Prefect recorded it: {runs[0]['state_name']}, evaluations {dict(recorded)}")
    assert len(runs) == 2 and runs[1]["state_name"] == "Completed", [(r["name"], r["state_name"]) for r in runs]
    states = _evaluation_states(cfg, runs[1]["id"], len(COMPONENTS))
    cached = [n for n, s in states.items() if s == "Cached"]
    assert len(states) == len(COMPONENTS) and len(cached) >= len(persisted), states
    if first.returncode == 0:
        assert len(cached) == len(COMPONENTS), states

    # 4. MLflow (its server on PostgreSQL) holds each completed run's parent run with one run per evaluation.
    exp = _post(f"{cfg.mlflow_url}/api/2.0/mlflow/experiments/search",
                {"filter": f"name = '{EXPERIMENT}'", "max_results": 1})["experiments"]
    found = _post(f"{cfg.mlflow_url}/api/2.0/mlflow/runs/search",
                  {"experiment_ids": [exp[0]["experiment_id"]], "max_results": 200})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in found}
    for run in runs if first.returncode == 0 else runs[1:]:
        parent = [rid for rid, t in tags.items()
                  if t.get("attnflow.prefect_flow_run_id") == run["id"] and "mlflow.parentRunId" not in t]
        assert len(parent) == 1, tags
        children = [r for r in found if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent[0]]
        assert len(children) == len(COMPONENTS) and all(r["data"].get("metrics") for r in children), children

    # 5. It all lives in PostgreSQL: both flow runs in NAME_prefect, the runs in NAME_mlflow.
    assert postgres.query("attnflow_prefect", "SELECT count(*) FROM flow_run")[0][0] == 2
    assert postgres.query("attnflow_mlflow", "SELECT count(*) FROM runs")[0][0] >= 1 + len(COMPONENTS)
    print(f"database tier: {time.monotonic() - t0:.0f} s after the stack was up")
