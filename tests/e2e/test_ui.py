"""A user's path through the UIs: trigger the `compare` deployment from the Prefect UI with changed parameters (a
tiny model built from a config, a small task list, an own experiment), watch it complete, then find its parent run,
its evaluation runs and their metrics in the MLflow UI. A screenshot at every step."""

from __future__ import annotations

import re
import time

import pytest

from infra import stack
from tests.e2e.conftest import api, mlflow_api, shot, task_run_states, wait_for_state

pytestmark = pytest.mark.e2e

TASKS = ["kv_retrieval(n_examples=8)", "perplexity(max_tokens=300)"]
EXPERIMENT = "e2e-ui"
CHILD = "zerotuning | perplexity(max_tokens=300)"  # one evaluation run opened in the MLflow UI


def _field(page, name: str):
    """The form block of one flow parameter in Prefect's run form."""
    label = page.locator(".schema-form-property__label", has_text=re.compile(rf"^{re.escape(name)} "))
    return page.locator(".schema-form-property").filter(has=label)


def _metric_cells(row_text: str) -> tuple[str, float]:
    name, value = [c.strip() for c in row_text.split("\n") if c.strip()][:2]
    return name, float(value.replace(",", ""))


def _submit(page, cfg, by_deployment: dict, before: set, screenshots) -> list[dict]:
    """Click Submit and wait for the new flow run. The UI first validates the form (POST .../schemas/validate),
    then creates the run (POST .../create_flow_run). A click the UI swallowed (no create request within 20 s, no
    validation message shown) is clicked once more, as a user would; a failure names what the UI and the API said."""
    create_requests: list[str] = []
    api_errors: list[str] = []
    console: list[str] = []
    page.on("request", lambda r: create_requests.append(r.url) if "create_flow_run" in r.url else None)
    page.on("response", lambda r: api_errors.append(f"{r.status} {r.request.method} {r.url}")
            if "/api/" in r.url and r.status >= 400 else None)
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    clicks, clicked_at = 0, 0.0
    new: list[dict] = []
    deadline = time.monotonic() + 120
    while not new and time.monotonic() < deadline:
        if clicks == 0 or (clicks == 1 and not create_requests and time.monotonic() > clicked_at + 20
                           and not page.locator(".p-label__message--failed, .p-toast__card").count()):
            page.get_by_role("button", name="Submit").click()
            clicks, clicked_at = clicks + 1, time.monotonic()
        new = [r for r in api(cfg, "/flow_runs/filter", by_deployment) if r["id"] not in before]
        time.sleep(0.5)
    if not new:
        shot(page, screenshots, "02b-prefect-submit-failed")
        shown = page.locator(".p-label__message--failed, .p-toast__card").all_inner_texts()
        pytest.fail(f"submitting the form created no flow run after {clicks} click(s); create requests: "
                    f"{create_requests}; API errors: {api_errors}; console errors: {console[-5:]}; "
                    f"messages on the page: {shown}; page: {page.url}")
    return new


def test_trigger_compare_from_prefect_ui_and_find_runs_in_mlflow(e2e_stack, page, tiny_llama_dir, screenshots):
    cfg = e2e_stack
    # 1. Prefect UI: the deployments page lists the compare deployment that `attnflow up` deployed (the UI shows
    # 10 per page, so the others are checked through the API; tests/flows/test_deploy.py checks their settings).
    deployed = set(stack.deployment_names(cfg.api_url))
    assert {"compare", "nightly-demo", "compare-sweep", "train-lm", "report"} <= deployed, deployed
    page.goto(f"{cfg.prefect_url}/deployments")
    page.get_by_role("link", name="compare", exact=True).first.wait_for()
    shot(page, screenshots, "01-prefect-deployments")

    # 2. The compare deployment -> Run -> Custom run: the typed parameter form, filled in with changed values.
    page.get_by_role("link", name="compare", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()
    _field(page, "model").locator("textarea").first.wait_for()
    assert "float32" in _field(page, "dtype").inner_text()  # a choice list, not free text
    _field(page, "model").locator("textarea").first.fill(str(tiny_llama_dir))
    _field(page, "experiment").locator("textarea, input").first.fill(EXPERIMENT)
    items = _field(page, "tasks").locator("textarea")
    assert items.count() == len(TASKS)
    for i, spec in enumerate(TASKS):
        items.nth(i).fill(spec)
    shot(page, screenshots, "02-prefect-custom-run-form")

    # 3. Submit: exactly one new run of the deployment, with the form's values; the worker runs it to Completed.
    deployment = next(d for d in api(cfg, "/deployments/filter", {}) if d["name"] == "compare")
    by_deployment = {"deployments": {"id": {"any_": [deployment["id"]]}}}
    before = {r["id"] for r in api(cfg, "/flow_runs/filter", by_deployment)}
    new = _submit(page, cfg, by_deployment, before, screenshots)
    assert len(new) == 1, f"submitting the form created {len(new)} flow runs"
    run = new[0]
    assert run["parameters"]["model"] == str(tiny_llama_dir) and run["parameters"]["experiment"] == EXPERIMENT
    assert run["parameters"]["tasks"] == TASKS
    page.goto(f"{cfg.prefect_url}/runs/flow-run/{run['id']}")
    done = wait_for_state(cfg, run["id"])
    assert done["state_name"] == "Completed", (done["state"], task_run_states(cfg, run["id"]))
    page.reload()
    page.get_by_text("Completed").first.wait_for()
    shot(page, screenshots, "03-prefect-flow-run-completed")

    # 4. What the flow logged (MLflow REST API): one parent run, one evaluation run per component x task.
    exp = mlflow_api(cfg, "experiments/search", {"filter": f"name = '{EXPERIMENT}'", "max_results": 1})["experiments"]
    assert exp, f"no MLflow experiment {EXPERIMENT!r}"
    exp_id = exp[0]["experiment_id"]
    runs = mlflow_api(cfg, "runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    parents = [r for r in runs if "mlflow.parentRunId" not in tags[r["info"]["run_id"]]]
    assert len(parents) == 1, [r["info"]["run_name"] for r in parents]
    parent = parents[0]
    assert tags[parent["info"]["run_id"]].get("attnflow.prefect_flow_run_id") == run["id"]
    children = [r for r in runs if r is not parent]
    components = {tags[r["info"]["run_id"]]["attnflow.component_label"] for r in children}
    assert len(children) == len(components) * len(TASKS) and len(components) >= 2
    assert CHILD in {r["info"]["run_name"] for r in children}

    # 5. MLflow UI: the experiment's runs table (model-training view) shows the parent; expanded, its evaluation runs.
    page.goto(f"{cfg.mlflow_url}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
    page.get_by_text(parent["info"]["run_name"], exact=True).first.wait_for()
    assistant = page.get_by_role("button", name="Close")
    if assistant.count():
        assistant.first.click()  # MLflow 3's assistant panel takes a third of the width
    row = page.get_by_role("row").filter(has_text=parent["info"]["run_name"]).first
    row.locator('button[data-component-id*="runnamecellrenderer"]').click()  # the expand (+) button
    for r in children:
        page.get_by_text(r["info"]["run_name"], exact=True).first.wait_for()
    shot(page, screenshots, "04-mlflow-runs")

    # 6. One evaluation run's page: every metric it logged, with the logged value, and the component version tag.
    page.get_by_text(CHILD, exact=True).first.click()
    child = next(r for r in children if r["info"]["run_name"] == CHILD)
    logged = {m["key"]: m["value"] for m in child["data"]["metrics"]}
    assert "perplexity/ppl" in logged
    for key, value in logged.items():
        metric_row = page.get_by_role("row").filter(has_text=key).first
        metric_row.wait_for()
        shown_key, shown = _metric_cells(metric_row.inner_text())
        assert shown_key == key and shown == pytest.approx(value, rel=1e-6), (key, metric_row.inner_text())
    page.get_by_text("attnflow.component_version").first.wait_for()
    shot(page, screenshots, "05-mlflow-evaluation-run")
