"""End-to-end tier: the local stack (`attnflow up`'s machinery, infra/stack.py: Prefect server, process worker,
MLflow server on free ports of 127.0.0.1, deployments from prefect.yaml, its own ATTNFLOW_HOME) driven as a user
would, through the two UIs in headless Chromium (Debian's `chromium` package; `make e2e-deps`, run by `make test`,
installs it when missing and possible, and without it the tier is skipped) with Playwright for Python. Playwright
never downloads a browser: it launches the `chromium` on PATH. The tier runs on one xdist worker (tests/conftest.py),
so the stack starts once per session.

Screenshots go to ATTNFLOW_E2E_ARTIFACTS when set, else to a pytest temp directory; the directory is printed at the
end of the run. Everything started is stopped by PID (`attnflow down`'s machinery) when the tier ends, also on
failure; a whole-tier time limit (ATTNFLOW_E2E_TIMEOUT seconds, default 1200) turns a hang into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from infra import stack

# The flags that keep Chromium quiet on a machine without network (no background connections, no updates).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
TIER_TIMEOUT = float(os.environ.get("ATTNFLOW_E2E_TIMEOUT", "1200"))
_artifacts: list[Path] = []  # where this run's screenshots went (printed in the terminal summary)


def pytest_terminal_summary(terminalreporter):
    for path in _artifacts:
        if path.is_dir() and any(path.iterdir()):
            terminalreporter.write_line(f"e2e screenshots: {path}")


# ------------------------------------------------------------------------------------------ the browser


def _chromium() -> str:
    """Debian's Chromium on PATH, else the test is skipped naming how to install it (nothing is installed here)."""
    found = shutil.which("chromium")
    if not found:
        pytest.skip("Chromium is not installed: run `make e2e-deps` (as root: apt-get install -y chromium) to enable "
                    "the end-to-end UI tests")
    return found


@pytest.fixture(scope="package")
def browser():
    from playwright.sync_api import sync_playwright  # pinned in requirements.txt; a missing one is an error

    executable = _chromium()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=120_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(90_000)  # a busy 2-core machine renders the UIs slowly
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    env = os.environ.get("ATTNFLOW_E2E_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.mktemp("e2e-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    _artifacts.append(path)
    return path


def shot(page, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# ------------------------------------------------------------------------------------------ the stack


class TierTimeout(Exception):
    """The e2e tier ran past ATTNFLOW_E2E_TIMEOUT."""


def _on_alarm(signum, frame):
    raise TierTimeout(f"the end-to-end test ran past {TIER_TIMEOUT:.0f} s (ATTNFLOW_E2E_TIMEOUT); stopping the stack")


@pytest.fixture(scope="package")
def e2e_stack(browser, tmp_path_factory):
    """`attnflow up` on free ports with its own home (after the browser: no stack without one), shared by the
    tier's test modules; `attnflow down` afterwards, then no process of that home may be left."""
    home = tmp_path_factory.mktemp("e2e-home")
    prefect_port = stack.free_port()
    mlflow_port = stack.free_port()
    while mlflow_port == prefect_port:
        mlflow_port = stack.free_port()
    cfg = stack.StackConfig(home=home, prefect_port=prefect_port, mlflow_port=mlflow_port, timeout=600)
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(TIER_TIMEOUT))
    try:
        stack.up(cfg)
        yield cfg
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        stack.down(home)
        leftovers = _processes_of(home)
        for p in leftovers:
            p.kill()
        assert not leftovers, f"processes left running after `down`: {[(p.pid, p.cmdline()[:4]) for p in leftovers]}"


def _processes_of(home: Path) -> list:
    """Processes whose environment points at this home (everything the stack and its flow runs started)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("ATTNFLOW_HOME") == str(home) and p.status() != "zombie":
                found.append(p)
        except psutil.Error:
            continue
    return found


def _request(url: str, body: dict | None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def api(cfg: stack.StackConfig, path: str, body: dict | None = None):
    """Prefect REST API of the stack (GET without body, POST with)."""
    return _request(cfg.api_url + path, body)


def mlflow_api(cfg: stack.StackConfig, path: str, body: dict):
    """MLflow REST API of the stack's tracking server."""
    return _request(f"{cfg.mlflow_url}/api/2.0/mlflow/{path}", body)


def wait_for_state(cfg: stack.StackConfig, flow_run_id: str, timeout: float = 900) -> dict:
    """The flow run once it is in a final state (or the last seen state after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    run = api(cfg, f"/flow_runs/{flow_run_id}")
    while run["state_type"] not in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} and time.monotonic() < deadline:
        time.sleep(1)
        run = api(cfg, f"/flow_runs/{flow_run_id}")
    return run


def task_run_states(cfg: stack.StackConfig, flow_run_id: str) -> dict[str, str]:
    runs = api(cfg, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return {r["name"]: r["state_name"] for r in runs}
