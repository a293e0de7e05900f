"""The local stack behind ``attnflow up | status | down``, on 127.0.0.1 only.

``up`` starts, under ``ATTNFLOW_HOME``:

    prefect-server   ``prefect server start`` (its database in ATTNFLOW_HOME/prefect), UI + API on one port
    mlflow-server    ``mlflow server --workers 1``: the SQLite store ATTNFLOW_HOME/mlflow.db (the same one
                     attnflow uses without a server) and artifacts under ATTNFLOW_HOME/mlartifacts
    (``--database postgresql://...``: both servers keep their data in PostgreSQL instead, see infra/database.py)
    worker           ``prefect worker start`` on the process work pool ``attnflow-local``; the flows it runs
                     log to the stack's MLflow server and keep their caches and results under ATTNFLOW_HOME

then deploys ``prefect.yaml`` (``prefect --no-prompt deploy --all`` with ATTNFLOW_PROJECT_DIR set). PIDs, ports
and logs live in ATTNFLOW_HOME/stack (``stack.json``, ``logs/*.log``). ``up`` on a running stack is a no-op; a
service that died is restarted, and ``prefect.yaml`` is deployed again when it changed. ``down`` stops exactly the
processes recorded there (checked by PID and start time), the worker first, then the servers, each with its
process tree (the worker needs a second SIGINT; MLflow's children are killed if they outlive their parent).

This module imports only the standard library at import time: ``infra.settings`` calls
:func:`running_endpoints` whenever a flow module is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HOST = "127.0.0.1"
POOL = "attnflow-local"
REPO = Path(__file__).resolve().parents[1]
SERVICES = ("prefect-server", "mlflow-server", "worker")  # start order; stopped in reverse
STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says which and where its log is."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it uses."""

    home: Path
    prefect_port: int = 4200
    mlflow_port: int = 5000
    project_dir: Path = REPO
    worker_poll_seconds: float = 2.0  # how often the worker asks for scheduled runs (Prefect's default is 10 s)
    timeout: float = 600.0  # per health check; a first start on a busy 2-core machine can take minutes
    extra_env: dict[str, str] = field(default_factory=dict)  # added to the worker's environment (and its flows)
    database: str | None = field(default=None, repr=False)  # postgresql://... (infra/database.py); None: SQLite

    @property
    def stack_dir(self) -> Path:
        return self.home / "stack"

    @property
    def prefect_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"


# --------------------------------------------------------------------------------------------- state and probes


def _state_path(home: Path) -> Path:
    return Path(home) / "stack" / STATE_FILE


def load_state(home: Path) -> dict[str, Any]:
    path = _state_path(home)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(home: Path, state: dict[str, Any]) -> None:
    path = _state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _alive(rec: dict[str, Any] | None) -> bool:
    """The recorded process still runs (same PID *and* start time, so a reused PID does not count)."""
    from infra.processes import process_alive

    return bool(rec) and process_alive(rec["pid"], rec["create_time"], tolerance=1.0)


def _pid_runs(pid: int, needle: str) -> bool:
    """Cheap liveness check without psutil (used on every flow import): PID alive and its command mentions needle."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return needle in cmdline


def running_endpoints(home: Path) -> dict[str, str]:
    """PREFECT_API_URL / MLFLOW_TRACKING_URI of the stack ``attnflow up`` runs for this home, if it runs."""
    state = load_state(home)
    svc = state.get("services", {})
    out = {}
    prefect, mlflow = svc.get("prefect-server"), svc.get("mlflow-server")
    if prefect and _pid_runs(prefect["pid"], "prefect"):
        out["PREFECT_API_URL"] = f"http://{HOST}:{prefect['port']}/api"
        if mlflow and _pid_runs(mlflow["pid"], "mlflow"):
            out["MLFLOW_TRACKING_URI"] = f"http://{HOST}:{mlflow['port']}"
    return out


def _get(url: str, timeout: float = 3.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http://127.0.0.1 only
            return r.read().decode()
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - http://127.0.0.1 only
            return json.loads(r.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthy(name: str, port: int) -> bool:
    if name == "prefect-server":
        return (_get(f"http://{HOST}:{port}/api/health") or "").strip() == "true"
    if name == "mlflow-server":
        return (_get(f"http://{HOST}:{port}/health") or "").strip() == "OK"
    raise ValueError(name)


def worker_online(api_url: str, pool: str = POOL, since: float = 0.0) -> bool:
    """A worker of ``pool`` is ONLINE with a heartbeat after ``since`` (epoch seconds; a restarted worker reuses
    its name, and the API keeps the old record ONLINE for a while)."""
    from datetime import datetime

    for w in _post_json(f"{api_url}/work_pools/{pool}/workers/filter", {}) or []:
        if not isinstance(w, dict) or w.get("status") != "ONLINE":
            continue
        try:
            beat = datetime.fromisoformat(w["last_heartbeat_time"]).timestamp()
        except (KeyError, TypeError, ValueError):
            continue
        if beat >= since:
            return True
    return False


def deployment_names(api_url: str) -> list[str]:
    found = _post_json(f"{api_url}/deployments/filter", {"limit": 200}) or []
    return sorted(d["name"] for d in found if isinstance(d, dict) and "name" in d)


def _port_user(port: int) -> str:
    """Who listens on 127.0.0.1:port, as 'pid N: command' when psutil can tell."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                cmd = " ".join(psutil.Process(conn.pid).cmdline())[:120]
                return f"pid {conn.pid}: {cmd}"
    except Exception:  # noqa: BLE001 - best effort
        pass
    return "another program"


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port: the probe binds and listens as the servers do (SO_REUSEADDR, set by
    uvicorn and gunicorn), so a socket left in TIME_WAIT by a crashed server does not count as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            s.listen(1)
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (for tests and `--*-port 0`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _log_tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------------------------- commands and env


def _bin(name: str) -> str:
    """The console script next to this interpreter (the venv's prefect / mlflow)."""
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def _base_env(cfg: StackConfig) -> dict[str, str]:
    from infra.settings import defaults  # not at import time: infra.settings imports this module

    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_PROFILE")}
    env.update(defaults(cfg.home))
    env["PREFECT_HOME"] = str(cfg.home / "prefect")
    env["PREFECT_UI_URL"] = cfg.prefect_url
    return env


def _commands(cfg: StackConfig) -> dict[str, tuple[list[str], dict[str, str]]]:
    base = _base_env(cfg)
    server_env = {**base, "PREFECT_UI_API_URL": cfg.api_url, "PREFECT_SERVER_API_HOST": HOST,
                  "PREFECT_SERVER_API_PORT": str(cfg.prefect_port),
                  # SQLite serialises writers: on a busy machine a write can wait longer than Prefect's 10 s / 5 s
                  # defaults, and the UI then reports a failed request instead of a slow one
                  "PREFECT_SERVER_DATABASE_TIMEOUT": "60", "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30"}
    mlflow_env = {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner (7 busy processes)
    pythonpath = os.pathsep.join(p for p in (str(cfg.project_dir), os.environ.get("PYTHONPATH", "")) if p)
    worker_env = {**base, "PREFECT_API_URL": cfg.api_url, "MLFLOW_TRACKING_URI": cfg.mlflow_url,
                  "ATTNFLOW_PROJECT_DIR": str(cfg.project_dir), "PYTHONPATH": pythonpath,
                  "PREFECT_WORKER_QUERY_SECONDS": str(cfg.worker_poll_seconds), **cfg.extra_env}
    artifacts = (cfg.home / "mlartifacts").as_uri()
    backend = ["--backend-store-uri", f"sqlite:///{cfg.home / 'mlflow.db'}"]
    if cfg.database:  # URLs with credentials go through the environment, never the command line or stack.json
        from infra.database import parse

        db = parse(cfg.database)
        server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = db.prefect_url
        mlflow_env["MLFLOW_BACKEND_STORE_URI"] = db.mlflow_url
        backend = []
    return {
        "prefect-server": ([_bin("prefect"), "server", "start", "--host", HOST, "--port", str(cfg.prefect_port)],
                           server_env),
        "mlflow-server": ([_bin("mlflow"), "server", "--host", HOST, "--port", str(cfg.mlflow_port), "--workers", "1",
                           *backend, "--default-artifact-root", artifacts], mlflow_env),
        "worker": ([_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process",
                    "--name", f"attnflow-worker-{cfg.prefect_port}"], worker_env),
    }


def deploy_env(cfg: StackConfig) -> dict[str, str]:
    return {**_base_env(cfg), "PREFECT_API_URL": cfg.api_url, "ATTNFLOW_PROJECT_DIR": str(cfg.project_dir)}


def _prefect_yaml_hash(cfg: StackConfig) -> str:
    try:
        return hashlib.sha256((cfg.project_dir / "prefect.yaml").read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------- up


def _spawn(cfg: StackConfig, name: str) -> dict[str, Any]:
    import psutil

    cmd, env = _commands(cfg)[name]
    log = cfg.stack_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(cfg.project_dir), start_new_session=True)
    port = {"prefect-server": cfg.prefect_port, "mlflow-server": cfg.mlflow_port}.get(name)
    return {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "port": port,
            "log": str(log), "cmd": cmd}


def _wait(cfg: StackConfig, name: str, rec: dict[str, Any], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + cfg.timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not _alive(rec):
            raise StackError(f"{name} exited during start-up; its log ({rec['log']}) ends with:\n"
                             f"{_log_tail(Path(rec['log']))}")
        time.sleep(0.5)
    raise StackError(f"{name} was not healthy after {cfg.timeout:.0f} s; log: {rec['log']}\n"
                     f"{_log_tail(Path(rec['log']))}")


def _deploy(cfg: StackConfig) -> list[str]:
    log = cfg.stack_dir / "logs" / "deploy.log"
    with open(log, "ab") as out:
        proc = subprocess.run([_bin("prefect"), "--no-prompt", "deploy", "--all"], cwd=str(cfg.project_dir),
                              env=deploy_env(cfg), stdout=out, stderr=subprocess.STDOUT, timeout=cfg.timeout)
    if proc.returncode != 0:
        raise StackError(f"`prefect deploy --all` failed (exit {proc.returncode}); log: {log}\n{_log_tail(log)}")
    return deployment_names(cfg.api_url)


def up(cfg: StackConfig, deploy: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Start what is not running, wait for health, deploy prefect.yaml; returns the recorded state."""
    from infra.database import DatabaseError, parse, prepare

    try:
        shown = parse(cfg.database).shown if cfg.database else "sqlite"
    except DatabaseError as e:
        raise StackError(str(e)) from None
    cfg.stack_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(cfg.home)
    services: dict[str, Any] = {k: v for k, v in state.get("services", {}).items() if _alive(v)}
    running_db = state.get("database") or "sqlite"
    if any(s in services for s in ("prefect-server", "mlflow-server")) and running_db != shown:
        raise StackError(f"the stack already runs on database {running_db} (asked: {shown}); run `attnflow down` "
                         "first to change databases")
    for name, port in (("prefect-server", cfg.prefect_port), ("mlflow-server", cfg.mlflow_port)):
        if name in services and services[name]["port"] != port:
            raise StackError(f"the stack already runs with {name} on port {services[name]['port']} (asked: {port}); "
                             "run `attnflow down` first to change ports")
    missing = [s for s in SERVICES if s not in services]
    for name in missing:
        port = {"prefect-server": cfg.prefect_port, "mlflow-server": cfg.mlflow_port}.get(name)
        if port is not None and not port_free(port):
            flag = "--prefect-port" if name == "prefect-server" else "--mlflow-port"
            raise StackError(f"port {port} on {HOST} is already in use by {_port_user(port)}; stop it or choose "
                             f"another port: attnflow up {flag} <port>")
    yaml_hash = _prefect_yaml_hash(cfg)
    if not missing and (not deploy or state.get("deployed") == yaml_hash):
        echo("attnflow stack already up (nothing to do)")
        return state
    if cfg.database and any(s in missing for s in ("prefect-server", "mlflow-server")):
        try:  # before anything starts: the server answers, NAME_prefect / NAME_mlflow exist (created if missing)
            db = prepare(cfg.database)
        except DatabaseError as e:
            raise StackError(str(e)) from None
        echo(f"database {shown}: Prefect in {db.prefect_db}, MLflow in {db.mlflow_db}")
    state = {"home": str(cfg.home), "project_dir": str(cfg.project_dir), "services": services, "database": shown,
             "prefect_url": cfg.prefect_url, "mlflow_url": cfg.mlflow_url,
             "deployed": state.get("deployed") if "prefect-server" in services else None}
    started: list[str] = []
    try:
        # 1. Both servers at once (each takes 10-90 s on 2 busy cores), then wait for their health checks.
        for name in ("prefect-server", "mlflow-server"):
            if name in missing:
                echo(f"starting {name} on {HOST}:{cfg.prefect_port if name == 'prefect-server' else cfg.mlflow_port}")
                services[name] = _spawn(cfg, name)
                started.append(name)
                _save_state(cfg.home, state)
        with ThreadPoolExecutor(2) as pool:
            waits = [pool.submit(_wait, cfg, name, services[name],
                                 lambda n=name: _healthy(n, services[n]["port"])) for name in started]
            for w in waits:
                w.result()
        # 2. The worker (it creates the process work pool on first start).
        if "worker" in missing:
            echo(f"starting worker on work pool {POOL}")
            services["worker"] = _spawn(cfg, "worker")
            started.append("worker")
            _save_state(cfg.home, state)
            _wait(cfg, "worker", services["worker"],
                  lambda: worker_online(cfg.api_url, since=services["worker"]["create_time"]))
        # 3. Deployments (again when prefect.yaml changed or the server is new).
        if deploy and state.get("deployed") != yaml_hash:
            echo("deploying prefect.yaml (prefect deploy --all)")
            names = _deploy(cfg)
            state["deployed"] = yaml_hash
            state["deployments"] = names
            _save_state(cfg.home, state)
    except BaseException:
        if started:
            echo(f"start-up failed: stopping what this call started ({', '.join(started)})")
            _stop_services(cfg.home, state, started, echo)
        raise
    _save_state(cfg.home, state)
    return state


# --------------------------------------------------------------------------------------------- down and status


def _tree(rec: dict[str, Any]) -> list[Any]:
    """The recorded process and all its descendants (psutil.Process objects)."""
    import psutil

    if not _alive(rec):
        return []
    p = psutil.Process(rec["pid"])
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return [p]


def _reap(procs: list[Any]) -> None:
    for p in procs:
        try:
            os.waitpid(p.pid, os.WNOHANG)  # only our own children can be reaped; others raise
        except (ChildProcessError, OSError):
            pass


def _stop(name: str, rec: dict[str, Any], grace: float = 20.0) -> list[int]:
    """Stop one service and its process tree; returns the PIDs that were running."""
    import psutil

    procs = _tree(rec)
    if not procs:
        return []
    main, children = procs[0], procs[1:]
    if name == "worker" and children:
        # Flow runs first, while the worker still watches them: on SIGTERM Prefect's engine reports the run as
        # Crashed (and the worker sees its process exit), so nothing is left "Running" in the UI.
        for c in children:
            _signal(c, signal.SIGTERM)
        psutil.wait_procs(children, timeout=grace)
    if name == "worker":
        # The worker answers a first SIGINT by stopping its loop and needs a second one to exit (STACK.md 3.9).
        _signal(main, signal.SIGINT)
        _, alive = psutil.wait_procs([main], timeout=5)
        if alive:
            _signal(main, signal.SIGINT)
    else:
        _signal(main, signal.SIGTERM)
    gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    _reap(procs)
    return [p.pid for p in procs]


def _signal(p: Any, sig: int) -> None:
    try:
        p.send_signal(sig)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _stop_services(home: Path, state: dict[str, Any], names: list[str], echo: Callable[[str], None]) -> None:
    services = state.get("services", {})
    for name in reversed(SERVICES):
        if name in names and name in services:
            pids = _stop(name, services[name])
            echo(f"stopped {name} (pids {', '.join(map(str, pids))})" if pids else f"{name} was not running")
            services.pop(name)
            _save_state(home, state)


def down(home: Path, echo: Callable[[str], None] = print) -> list[str]:
    """Stop the recorded services (worker, then servers); returns the names that were running."""
    state = load_state(home)
    services = state.get("services", {})
    if not services:
        echo("no attnflow stack recorded for this home (nothing to stop)")
        return []
    running = [n for n in SERVICES if n in services and _alive(services[n])]
    _stop_services(home, state, list(services), echo)
    _state_path(home).unlink(missing_ok=True)
    return running


@dataclass
class ServiceStatus:
    name: str
    state: str  # running | starting | stopped
    pid: int | None
    url: str
    log: str


def status(home: Path) -> list[ServiceStatus]:
    state = load_state(home)
    services = state.get("services", {})
    api = f"{state.get('prefect_url', '')}/api"
    out = []
    for name in SERVICES:
        rec = services.get(name)
        if not rec or not _alive(rec):
            out.append(ServiceStatus(name, "stopped", rec and rec.get("pid"), "", rec.get("log", "") if rec else ""))
            continue
        ok = worker_online(api, since=rec["create_time"]) if name == "worker" else _healthy(name, rec["port"])
        url = f"{POOL} -> {api}" if name == "worker" else f"http://{HOST}:{rec['port']}"
        out.append(ServiceStatus(name, "running" if ok else "starting", rec["pid"], url, rec["log"]))
    return out
