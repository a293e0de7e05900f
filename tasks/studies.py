"""Tasks shared by the study flows: the sweep plan, one cached task per sweep point (run on worker processes),
the verdict, and the MLflow report (parent run with the verdict and figures, one child run per point)."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run

import registry
from components.base import ParamError
from tasks import _pool, integrity
from tasks.runs import ended, tracked_run
from tasks.tracking import RETRY, client, experiment_id, metric_key, process_tags

worker_pool = _pool.worker_pool


@task(cache_policy=NO_CACHE, task_run_name="plan {study}")
def plan_sweep(study: str, base: dict[str, Any], axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the ``axes`` values over ``base``, validated (a bad value fails here, before any
    compute, naming the parameter): ``[{"label": "k=v, ...", "params": canonical parameters}]`` in order."""
    info = registry.get(study, family="study")
    for name, values in axes.items():
        if not values:
            raise ParamError(f"{study}: the sweep over {name} is empty")
    configs: list[dict[str, Any]] = []
    for combo in itertools.product(*axes.values()):
        params = info.create({**base, **dict(zip(axes, combo))}).params()
        label = ", ".join(f"{k}={params[k]}" for k in axes) or info.name
        if all(c["params"] != params for c in configs):
            configs.append({"label": label, "params": params})
    return configs


@task(cache_policy=INPUTS + TASK_SOURCE, result_serializer=integrity.CHECKED, retries=0,
      task_run_name="{label}: {action}")
def study_point(study: str, params: dict[str, Any], action: str, inputs: dict[str, Any], label: str,
                code: str) -> Any:
    """One action (train / evaluate / simulate) of one study configuration, on the worker pool when one is open.
    Cached by its inputs and the study's code fingerprint ``code``: a sweep with one more point computes only
    that point, and a code change recomputes everything."""
    cls = registry.get(study, family="study").cls
    return _pool.submit(cls.__module__, cls.__qualname__, params, action, inputs)


def submit_point(study: str, config: dict[str, Any], action: str,
                 inputs: dict[str, Any] | None = None) -> PrefectFuture:
    """Submit :func:`study_point` for a planned config (futures inside ``inputs`` are resolved before it runs)."""
    info = registry.get(study, family="study")
    return study_point.submit(info.ref, config["params"], action, inputs or {}, config["label"],
                              registry.code_fingerprint(info.cls))


@task(cache_policy=NO_CACHE, task_run_name="collect {study}")
def collect_points(study: str, configs: list[dict[str, Any]], results: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Waits for every point: ``[{"label", "params", <result name>: result, ...}]`` in plan order."""
    return [{**config, **{name: values[i] for name, values in results.items()}} for i, config in enumerate(configs)]


def train_and_evaluate(study: str, configs: list[dict[str, Any]], evaluation: dict[str, Any],
                       workers: int) -> list[dict[str, Any]]:
    """Train every config, then evaluate its weights with ``evaluation``: one cached task per point and action,
    on ``workers`` processes. Returns ``[{"label", "params", "train", "eval"}]``."""
    with worker_pool(workers):
        trained = [submit_point(study, c, "train") for c in configs]
        evaluated = [submit_point(study, c, "evaluate", {"trained": t, **evaluation}) for c, t in zip(configs, trained)]
        return collect_points(study, configs, {"train": trained, "eval": evaluated})


@task(cache_policy=NO_CACHE, task_run_name="verdict {study}")
def study_verdict(study: str, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's claims checked on the sweep's results: [{name, claim, passed, value, criterion, detail}]."""
    return [c.to_dict() for c in registry.get(study, family="study").cls.verdict(points)]


def verdict_markdown(title: str, checks: list[dict[str, Any]]) -> str:
    """A table of the checks with the numbers they were judged on."""
    passed = sum(c["passed"] for c in checks)
    lines = [f"## {title}: {passed}/{len(checks)} claims held at this scale", "",
             "| check | claim | held | value | criterion | detail |", "|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| `{c['name']}` | {c['claim']} | {'PASS' if c['passed'] else 'FAIL'} | {c['value']:.4g} | "
                     f"{c['criterion']} | {c['detail']} |")
    return "\n".join(lines)


@task(**RETRY, task_run_name="log {run_name}")
def log_study(experiment: str, run_name: str, study: str, report: dict[str, Any], checks: list[dict[str, Any]],
              figures: dict[str, bytes], results: Any, versions: dict[str, str]) -> str:
    """Parent run: the flow's parameters, the verdict (tags ``verdict.<check>``, metrics ``check/<name>``,
    verdict.md / verdict.json), the report's key numbers, figures and raw results (results.json); one child run
    per sweep point with its parameters, metrics and curves. ``report``: {"markdown", "metrics", "points"}."""
    c = client()
    info = registry.get(study, family="study")
    passed = sum(ch["passed"] for ch in checks)
    tags = {"attnflow.kind": "study", "attnflow.component": info.name,
            "attnflow.component_version": info.version, "attnflow.paper": info.paper or "",
            "attnflow.code_fingerprint": registry.code_fingerprint(info.cls),
            "attnflow.registry_version": versions.get(info.ref, ""),
            "attnflow.verdict": f"{passed}/{len(checks)} passed",
            **{f"verdict.{ch['name']}": "pass" if ch["passed"] else "fail" for ch in checks}}
    with tracked_run(experiment, run_name, tags, dict(flow_run.parameters or {})) as rid:
        values = {**{f"check/{ch['name']}": float(ch["passed"]) for ch in checks},
                  **{f"check_value/{ch['name']}": float(ch["value"]) for ch in checks}, **report["metrics"],
                  "checks_passed": float(passed), "checks_total": float(len(checks))}
        metrics = [Metric(metric_key(k), float(v), 0, 0) for k, v in values.items() if _finite(v)]
        for lo in range(0, len(metrics), 1000):
            c.log_batch(rid, metrics=metrics[lo:lo + 1000])
        c.log_text(rid, report["markdown"], "verdict.md")
        c.log_dict(rid, checks, "verdict.json")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            path.write_text(json.dumps(results, default=str))
            c.log_artifact(rid, str(path))
            for name, png in figures.items():
                (Path(tmp) / "figures").mkdir(exist_ok=True)
                (Path(tmp) / "figures" / f"{name}.png").write_bytes(png)
            if figures:
                c.log_artifacts(rid, str(Path(tmp) / "figures"), artifact_path="figures")
        for point in report["points"]:
            _log_point(c, experiment, rid, info, point)
    return rid


def publish_report(experiment: str, run_name: str, study: str, report: dict[str, Any], checks: list[dict[str, Any]],
                   figures: dict[str, bytes], points: list[dict[str, Any]], versions: dict[str, str]) -> dict[str, Any]:
    """Log the report (:func:`log_study`), print it, and return the flow's result."""
    run_id = log_study(experiment, run_name, study, report, checks, figures, points, versions)
    from tasks.report import log_run_link

    print(f"\n{report['markdown']}")
    log_run_link(run_id, experiment)
    return {"run_id": run_id, "experiment": experiment, "checks": checks,
            "passed": sum(c["passed"] for c in checks), "total": len(checks)}


def _log_point(c: Any, experiment: str, parent: str, info: registry.ComponentInfo, point: dict[str, Any]) -> None:
    tags = {"mlflow.parentRunId": parent, "attnflow.kind": "study-point", "attnflow.component": info.name,
            "attnflow.component_version": info.version,
            "attnflow.fingerprint": info.create(point["params"]).fingerprint(), **process_tags()}
    run = c.create_run(experiment_id(experiment), run_name=point["label"], tags=tags)
    with ended(run.info.run_id):
        _log_point_body(c, run.info.run_id, point)


def _log_point_body(c: Any, run_id: str, point: dict[str, Any]) -> None:
    metrics = [Metric(metric_key(k), float(v), 0, 0) for k, v in point.get("metrics", {}).items() if _finite(v)]
    for name, curve in point.get("curves", {}).items():
        metrics += [Metric(metric_key(name), float(v), 0, int(step)) for step, v in curve if _finite(v)]
    params = [Param(k, str(v)[:6000]) for k, v in point["params"].items()]
    for lo in range(0, max(len(metrics), 1), 1000):
        c.log_batch(run_id, metrics=metrics[lo:lo + 1000], params=params if lo == 0 else [],
                    tags=[RunTag("attnflow.label", point["label"])] if lo == 0 else [])


def _finite(v: Any) -> bool:
    try:
        return float(v) == float(v) and abs(float(v)) != float("inf")
    except (TypeError, ValueError):
        return False

