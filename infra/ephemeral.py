"""Prefect's temporary server (``Starting temporary server on http://127.0.0.1:8xxx``) never outlives its CLI.

Without ``attnflow up`` (no PREFECT_API_URL), a flow started in-process makes Prefect spawn ``uvicorn`` as a child
process (``prefect.server.api.server.SubprocessASGIServer``) and stop it from an ``atexit`` hook. A hook does not
run when the parent dies on a signal's default action, so the server stayed alive after ``kill`` (SIGTERM) or
``kill -9``. Two guards:

- :func:`exit_on_signals` turns SIGTERM and SIGHUP into ``SystemExit(128 + signum)`` (SIGINT already raises
  KeyboardInterrupt), so ``finally`` blocks end the MLflow runs (KILLED) and the ``atexit`` hook stops the server.
  During a flow run Prefect's own SIGTERM bridge raises first and hands the signal on to this handler afterwards.
- :func:`guard_temporary_server` starts, next to each temporary server, a small watchdog process that stops the
  server (SIGTERM, then SIGKILL) as soon as its parent is gone, e.g. after SIGKILL, which no handler sees.

This module imports only the standard library at import time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

#: the watchdog: argv = parent PID, server PID; polls twice a second, exits when the server is gone
WATCHDOG = r"""
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True

while alive(server):
    if os.getppid() != parent:  # the CLI is gone (this process was re-parented)
        os.kill(server, signal.SIGTERM)
        for _ in range(100):
            time.sleep(0.1)
            if not alive(server):
                break
        else:
            os.kill(server, signal.SIGKILL)
        break
    time.sleep(0.5)
"""

_SIGNALS = ("SIGTERM", "SIGHUP")


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def exit_on_signals() -> None:
    """SIGTERM / SIGHUP raise SystemExit in the main thread, so cleanup code runs (call once, from the CLI)."""
    for name in _SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit)


def start_watchdog(server_pid: int) -> subprocess.Popen[bytes]:
    """A process that stops ``server_pid`` once this process is gone (in its own session: a Ctrl-C sent to the
    terminal's process group does not reach it)."""
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(server_pid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def guard_temporary_server() -> None:
    """Give every temporary Prefect server this process starts a watchdog (idempotent; no-op with a server URL)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api.server import SubprocessASGIServer

    run = SubprocessASGIServer._run_uvicorn_command
    if getattr(run, "_attnflow_guarded", False):
        return

    def guarded(self: Any) -> subprocess.Popen[Any]:
        proc = run(self)
        start_watchdog(proc.pid)
        return proc

    guarded._attnflow_guarded = True  # type: ignore[attr-defined]
    SubprocessASGIServer._run_uvicorn_command = guarded  # type: ignore[method-assign]
