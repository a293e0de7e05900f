"""Is a recorded process still the one that was recorded? One answer for the model store's stale temp dirs, the run
owner check of tasks/runs.py and the stack records of ``attnflow up`` (the watchdog script of infra/ephemeral.py keeps
its own copy: it runs as a bare ``python -c`` without this package)."""

from __future__ import annotations

import psutil


def process_alive(pid: int, started: float | None = None, tolerance: float = 2.0) -> bool:
    """``pid`` runs and is not a zombie; when ``started`` (its ``create_time``, seconds since the epoch) is given,
    it must also have started then (within ``tolerance`` seconds), so a reused PID does not count. A process this
    user may not inspect counts as alive: it exists."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(p.create_time() - started) < tolerance
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied
        return True
