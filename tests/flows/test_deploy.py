"""prefect.yaml deploys against a real Prefect server (the test harness) with `prefect deploy --all`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_deploys_all():
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="attnflow-local", type="process"))
        except Exception:  # noqa: BLE001 - already exists from an earlier test
            pass
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "ATTNFLOW_PROJECT_DIR": str(REPO)}
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"nightly-demo", "compare", "evaluate", "head-search"} <= set(deployments)
    nightly = deployments["nightly-demo"]
    assert nightly.schedules and nightly.schedules[0].schedule.cron == "0 2 * * *"
    assert nightly.parameters["model"] == "demo" and nightly.parameters["seeds"] == [0, 1]
    # the project directory is resolved from ATTNFLOW_PROJECT_DIR when deploying
    assert nightly.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
    schema = deployments["compare"].parameter_openapi_schema["properties"]
    assert {"model", "components", "tasks", "seeds"} <= set(schema)
    assert "Hub id" in schema["model"].get("description", "")
    # typed parameters: the UI form gets choices and minimums
    assert schema["dtype"]["enum"] == ["float32", "bfloat16", "float16"] and schema["batch_size"]["minimum"] == 1
    # every user-facing flow on main has a deployment; retries, runners, schedules and limits as declared
    assert {"compare-sweep", "report", "train-lm", "quickstart"} <= set(deployments)
    assert nightly.job_variables["env"]["PREFECT_FLOWS_DEFAULT_RETRIES"] == "1"
    assert deployments["compare-sweep"].job_variables["env"]["ATTNFLOW_TASK_RUNNER"] == "dask"
    assert deployments["report"].schedules[0].schedule.cron == "0 3 * * *"
    limits = {name: (d.global_concurrency_limit.limit if d.global_concurrency_limit else None)
              for name, d in deployments.items()}
    assert limits["train-lm"] == 1 and limits["compare"] == 2, limits
