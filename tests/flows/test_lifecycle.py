"""Run and process lifecycle: no MLflow run stays RUNNING (success, failure, Ctrl-C, SIGTERM, SIGKILL), a cached
re-run marks the runs it logs again, and a killed CLI leaves no temporary Prefect server behind.

In-process flows run against the session's Prefect test server; the CLI tests start ``attnflow compare`` as a
real subprocess (its own temporary Prefect server, the session's MLflow store) stalled inside its parent run,
then signal it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

import flows.compare as compare_module
from flows.compare import compare
from infra.settings import settings
from tasks import runs
from tasks.lm import register_lm

REPO = Path(__file__).resolve().parents[2]
KW = dict(components=["baseline", "zerotuning(gamma=5)"], tasks=["kv_retrieval(n_examples=4)"], seeds=[0],
          progress=False)


def _client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=settings().tracking_uri)


def _runs(experiment: str, filter_string: str = "") -> list:
    c = _client()
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string) if exp else []


def _parents(experiment: str) -> list:
    return [r for r in _runs(experiment) if "mlflow.parentRunId" not in r.data.tags]


# ------------------------------------------------------------------------------------------- in-process endings


def test_register_without_a_run_ends_its_own_run(tiny_llama_dir, monkeypatch):
    """The quickstart's "register attnflow.demo-lm" path (register_lm with no run): FINISHED, and FAILED when
    registering fails, never RUNNING."""
    version = register_lm.fn(None, str(tiny_llama_dir), "attnflow.lifecycle-lm", "champion", {"attnflow.x": "1"},
                             experiment="lifecycle-register")
    assert version == "1"

    def refuse(*args, **kwargs):
        raise RuntimeError("registry refused")

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", refuse)
    with pytest.raises(RuntimeError, match="registry refused"):
        register_lm.fn(None, str(tiny_llama_dir), "attnflow.lifecycle-lm", "champion", {},
                       experiment="lifecycle-register")
    statuses = sorted(r.info.status for r in _runs("lifecycle-register"))
    assert statuses == ["FAILED", "FINISHED"], statuses


def test_failed_and_interrupted_flows_end_their_parent_runs(tiny_llama_dir, monkeypatch):
    def boom(task, calls):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(compare_module, "map_calls", boom)
    state = compare(model=str(tiny_llama_dir), experiment="lifecycle-fail", **KW, return_state=True)
    assert state.is_failed()
    [parent] = _parents("lifecycle-fail")
    assert parent.info.status == "FAILED"
    assert "evaluation exploded" in parent.data.tags["attnflow.end_reason"]
    assert parent.data.tags["attnflow.pid"] == str(os.getpid()) and parent.data.tags["attnflow.host"]
    assert parent.data.tags["attnflow.prefect_flow_run_id"] == str(state.state_details.flow_run_id)

    def ctrl_c(task, calls):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "map_calls", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        compare(model=str(tiny_llama_dir), experiment="lifecycle-interrupt", **KW)
    [parent] = _parents("lifecycle-interrupt")
    assert parent.info.status == "KILLED"


def test_cached_rerun_tags_the_runs_it_logs_again(tiny_llama_dir):
    first = compare(model=str(tiny_llama_dir), experiment="lifecycle-cached", **KW)
    second = compare(model=str(tiny_llama_dir), experiment="lifecycle-cached", **KW)
    before = _runs("lifecycle-cached", f"tags.mlflow.parentRunId = '{first['run_id']}'")
    again = _runs("lifecycle-cached", f"tags.mlflow.parentRunId = '{second['run_id']}'")
    assert len(before) == len(again) == 2
    assert {r.data.tags["attnflow.cached"] for r in before} == {"false"}
    assert {r.data.tags["attnflow.cached"] for r in again} == {"true"}
    assert {r.data.tags["attnflow.cached_from"] for r in again} == {r.info.run_id for r in before}
    assert {r.info.status for r in before + again} == {"FINISHED"}


# ------------------------------------------------------------------------------------------- the CLI, signalled


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """The CLI's environment: the MLflow store this test reads (``mlflow.set_tracking_uri`` exports
    MLFLOW_TRACKING_URI, so an earlier test may have moved it off the session home), a Prefect home of its own (its
    temporary server), no PREFECT_API_URL."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(ATTNFLOW_HOME=str(settings().home), MLFLOW_TRACKING_URI=settings().tracking_uri,
               PREFECT_HOME=str(tmp_path_factory.mktemp("cli-prefect")),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p))
    return env


def _start_stalled_cli(env: dict[str, str], model: Path, experiment: str, log: Path) -> tuple[subprocess.Popen, str]:
    """Start the CLI; return it and its RUNNING parent run once the flow stalls inside it."""
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "helpers" / "stalled_cli.py"), "compare",
                             "--model", str(model), "-c", "baseline", "-t", "kv_retrieval(n_examples=4)",
                             "--experiment", experiment], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline:
        running = [r for r in _parents(experiment) if r.info.status == "RUNNING"]
        if running and b"stalled inside the parent run" in log.read_bytes():
            return proc, running[0].info.run_id
        if proc.poll() is not None:
            break
        time.sleep(1)
    proc.kill()
    pytest.fail(f"the CLI never reached its parent run; its output:\n{log.read_text(errors='replace')[-3000:]}")


def _servers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The temporary Prefect server(s) the CLI started (uvicorn children)."""
    found = [p for p in psutil.Process(proc.pid).children(recursive=True)
             if "uvicorn" in " ".join(p.cmdline()) and "prefect.server" in " ".join(p.cmdline())]
    assert found, "the CLI runs no temporary Prefect server: nothing to check"
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signalled_cli_ends_its_run_killed_and_stops_its_server(cli_env, tiny_llama_dir, tmp_path, sig):
    experiment = f"lifecycle-cli-{sig.name.lower()}"
    proc, run_id = _start_stalled_cli(cli_env, tiny_llama_dir, experiment, tmp_path / "cli.log")
    servers = _servers(proc)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert code != 0
    _, alive = psutil.wait_procs(servers, timeout=30)
    assert not alive, f"temporary server(s) still running after {sig.name}: {[p.pid for p in alive]}"
    run = _client().get_run(run_id)
    assert run.info.status == "KILLED", (run.info.status, (tmp_path / "cli.log").read_text(errors="replace")[-3000:])


def test_sigkilled_cli_server_exits_and_its_run_is_killed_on_next_start(cli_env, tiny_llama_dir, tmp_path):
    proc, run_id = _start_stalled_cli(cli_env, tiny_llama_dir, "lifecycle-cli-sigkill", tmp_path / "cli.log")
    servers = _servers(proc)
    proc.kill()
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(servers, timeout=30)  # the watchdog stops the orphaned server
    assert not alive, f"temporary server(s) outlived the SIGKILLed CLI: {[p.pid for p in alive]}"
    assert _client().get_run(run_id).info.status == "RUNNING"  # nobody could end it ...
    compare(model=str(tiny_llama_dir), experiment="lifecycle-next-start", **KW)  # ... until the next start
    run = _client().get_run(run_id)
    assert run.info.status == "KILLED"
    assert f"process {proc.pid}" in run.data.tags["attnflow.end_reason"]
    assert runs.settle() == []  # nothing left to end


def test_a_child_run_whose_logging_fails_ends_failed(monkeypatch):
    """Nested runs logged by report tasks (here a claim's) end FAILED when logging raises, not RUNNING."""
    import tasks.claims_report as claims_report

    def broken_figure(res):
        raise RuntimeError("figure backend broke")

    monkeypatch.setattr(claims_report, "per_seed_figure", broken_figure)
    parent = _client().create_run(_client().create_experiment(f"child-fail-{os.getpid()}-{time.time_ns()}"))
    exp = parent.info.experiment_id
    res = {"claim": "sinks", "paper": "arXiv:0", "verdict": "held", "reason": "r", "model": "m", "criterion": "c",
           "figures": {"x": 1.0}, "ci": {"x": [0.5, 1.5]}, "per_seed": [{"seed": 0, "x": 1.0}], "wall_s": 1.0}
    with pytest.raises(RuntimeError, match="figure backend broke"):
        claims_report.log_claim.fn(res, _client().get_experiment(exp).name, parent.info.run_id, {}, [0, 1, 2])
    [child] = _client().search_runs([exp], "tags.`attnflow.kind` = 'claim'")
    assert child.info.status == "FAILED"
