"""MLflow run lifecycle: every run attnflow opens ends FINISHED, FAILED or KILLED, never stays RUNNING.

- :func:`tracked_run` opens a (parent) run and always ends it: FINISHED when the block completes, FAILED when it
  raises an exception, KILLED on KeyboardInterrupt, SystemExit or Prefect's TerminationSignal (SIGINT/SIGTERM;
  the CLI turns SIGTERM into an exception too, see ``attnflow/cli.py``).
- :func:`ended` does the same for a run opened elsewhere (child runs, runs handed from one task to the next).
- Every run carries the process that owns it (``attnflow.host``, ``attnflow.pid``, ``attnflow.pid_started``, and
  the Prefect flow run id, see ``tasks.tracking.process_tags``). A process killed with SIGKILL cannot end its
  runs, so :func:`settle`, called whenever a run is opened, marks RUNNING runs of this host whose process is gone
  as KILLED (tag ``attnflow.end_reason``).
- A status that could not be written (MLflow down) is kept and written by the next :func:`settle` of the process.
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from infra.processes import process_alive
from tasks import tracking

_LOCK = threading.Lock()
_PENDING: dict[str, tuple[str, str]] = {}  # run id -> (status, reason) not written yet (MLflow was down)
_OUTCOME: dict[str, str] = {}  # run id -> status to end with when its block completes (default FINISHED)


def status_for(exc: BaseException | None) -> str:
    """FINISHED without an exception, FAILED for an Exception, KILLED for a signal or an exit (BaseException)."""
    if exc is None:
        return "FINISHED"
    return "FAILED" if isinstance(exc, Exception) else "KILLED"


def set_outcome(run_id: str, status: str) -> None:
    """End ``run_id`` with ``status`` (e.g. FAILED when a claim failed) when its block completes."""
    _OUTCOME[run_id] = status


def end(run_id: str, status: str, reason: str = "") -> bool:
    """Write the final status now (no retries: it may run during a crash); kept for later when MLflow is down."""
    try:
        c = tracking.client()
        if reason:
            c.set_tag(run_id, "attnflow.end_reason", reason[:5000])
        c.set_terminated(run_id, status=status)
    except Exception:  # noqa: BLE001 - MLflow unreachable: the next settle() of this process writes it
        with _LOCK:
            _PENDING[run_id] = (status, reason)
        return False
    with _LOCK:
        _PENDING.pop(run_id, None)
    return True


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None and TaskRunContext.get() is None


@contextmanager
def ended(run_id: str, finish: bool = True) -> Iterator[str]:
    """End ``run_id`` when the block raises (FAILED, or KILLED for a signal); when it completes, end it FINISHED
    (or the status given to :func:`set_outcome`) unless ``finish`` is False (someone else ends it later)."""
    try:
        yield run_id
    except BaseException as e:
        _OUTCOME.pop(run_id, None)
        end(run_id, status_for(e), _reason(e))
        raise
    if finish:
        status = _OUTCOME.pop(run_id, "FINISHED")
        try:  # a flow's finish is a retried task (MLflow may be briefly away), elsewhere a plain call
            (tracking.finish_run if _in_prefect_run() else tracking.finish_run.fn)(run_id, status=status)
        except BaseException as e:
            end(run_id, status_for(e) if status == "FINISHED" else status, f"could not be ended: {_reason(e)}")
            raise


@contextmanager
def tracked_run(experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[str]:
    """Open a run (see :func:`start`), yield its id, and end it as :func:`ended` does."""
    with ended(start(experiment, run_name, tags, params)) as run_id:
        yield run_id


def start(experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """:func:`settle`, then open a run (a retried task in a flow, a plain call in a task); end it with
    :func:`ended` or :func:`end`."""
    settle()
    start_run = tracking.start_run if _in_prefect_run() else tracking.start_run.fn
    return start_run(experiment, run_name, tags=tags, params=params)


def settle() -> list[str]:
    """Write the statuses kept while MLflow was down, then mark orphaned runs KILLED; best effort, returns the ids
    of the runs it ended."""
    done = []
    with _LOCK:
        pending = dict(_PENDING)
    for run_id, (status, reason) in pending.items():
        if end(run_id, status, reason or "ended after MLflow was back"):
            done.append(run_id)
    try:
        done += mark_orphans()
    except Exception:  # noqa: BLE001 - never block opening a run; the next start tries again
        pass
    return done


def mark_orphans(client: Any = None) -> list[str]:
    """Mark RUNNING runs of this host whose owning process is gone as KILLED; returns their ids."""
    c = client or tracking.client()
    host = socket.gethostname()
    exp_ids = [e.experiment_id for e in c.search_experiments()]
    killed = []
    for i in range(0, len(exp_ids), 100):
        runs = c.search_runs(exp_ids[i:i + 100], max_results=5000,
                             filter_string=f"attributes.status = 'RUNNING' and tags.`attnflow.host` = '{host}'")
        for run in runs:
            tags = run.data.tags
            try:
                pid = int(tags["attnflow.pid"])
                started = float(tags["attnflow.pid_started"]) if tags.get("attnflow.pid_started") else None
            except (KeyError, ValueError):
                continue
            if process_alive(pid, started):
                continue
            flow_run = tags.get("attnflow.prefect_flow_run_id")
            reason = f"orphaned: process {pid} on {host} is gone" + (f" (Prefect flow run {flow_run})"
                                                                     if flow_run else "")
            c.set_tag(run.info.run_id, "attnflow.end_reason", reason)
            c.set_terminated(run.info.run_id, status="KILLED")
            print(f"marked MLflow run {run.info.run_id} ({run.info.run_name}) KILLED: {reason}")
            killed.append(run.info.run_id)
    return killed
