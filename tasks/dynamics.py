"""Tasks of the training-dynamics flows (sink-emergence, instability-proxies, arch-compare).

- ``check_points``: validate every sweep point (model spec, kernel, data) before any training.
- ``train_point``: one training run, cached by (point, code version): a sweep extended by one point trains only
  that point; an interrupted point resumes from its last checkpoint.
- ``run_sweep``: submit every point to the flow's task runner (thread pool by default, Dask when configured) and
  collect the results in order.
- ``log_study``: one MLflow parent run per flow run (verdict tags and metrics, ``verdict.md``, figures,
  ``results.json``) and one child run per point (its curves).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

import registry
from components.lm import claims
from components.lm.dynamics import check_point, run_point
from infra.settings import settings
from tasks import integrity, plots, runs, tracking
from tasks.retry import transient

CODE_MODULES = ("components.lm.dynamics", "components.lm.probes", "components.lm.synthetic", "components.lm.trainer",
                "components.lm.model", "components.lm.preset", "components.kernels.base")


def code_version(kernels: list[str]) -> str:
    """Fingerprint of everything that decides a point's result: the dynamics code and the kernels' code."""
    h = hashlib.sha256()
    for mod in CODE_MODULES:
        h.update(Path(inspect.getfile(importlib.import_module(mod))).read_bytes())
    for ref in sorted(set(kernels)):
        h.update(registry.code_fingerprint(registry.get(ref, family="kernel").cls).encode())
    return h.hexdigest()[:16]


def kernel_names(points: list[dict[str, Any]]) -> list[str]:
    """Registered kernels the points use (for publishing and the code version)."""
    from registry.specs import parse

    names = set()
    for p in points:
        attention = str(p["model"].get("attention", "sdpa"))
        names.add("softmax" if attention in ("sdpa", "eager") else parse(attention).name)
    return sorted(names)


@task(cache_policy=NO_CACHE, task_run_name="check {name} points")
def check_points(name: str, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate every point (raises with a message naming the bad value) and reject duplicate labels."""
    labels = [p["label"] for p in points]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"{name}: duplicate sweep points {', '.join(dupes)}")
    seen: set[str] = set()
    for p in points:
        key = json.dumps({k: p[k] for k in ("model", "data")}, sort_keys=True)
        if key not in seen:
            check_point(p)
            seen.add(key)
    print(f"{name}: {len(points)} sweep points")
    return points


def point_key(point: dict[str, Any], code: str) -> str:
    body = {k: v for k, v in point.items() if k != "label"}
    return hashlib.sha256(json.dumps([body, code], sort_keys=True).encode()).hexdigest()[:16]


@task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True, result_serializer=integrity.CHECKED_PICKLE, retries=1,
      retry_delay_seconds=2, retry_condition_fn=transient, task_run_name="train {point[label]}")
def train_point(point: dict[str, Any], code: str) -> dict[str, Any]:
    """Train one sweep point (resumable; cached by the point and the code version)."""
    result = run_point(point, settings().cache_dir / "dynamics" / point_key(point, code))
    f = result["final"]
    print(f"{point['label']}: " + ", ".join(f"{k}={v:.4g}" for k, v in f.items() if isinstance(v, float))
          + f" ({result['seconds']:.0f} s)")
    return result


def run_sweep(points: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    """Submit every point to the flow's task runner; results in the order of ``points``."""
    futures = [train_point.submit({k: v for k, v in p.items() if k != "tags"}, code) for p in points]
    return [f.result() for f in futures]


# -------------------------------------------------------------------------------------------------------------------
# MLflow
# -------------------------------------------------------------------------------------------------------------------


def verdict_markdown(title: str, checks: list[dict[str, Any]], verdict: str, table: list[dict[str, Any]],
                     notes: str = "") -> str:
    lines = [f"# {title}", "", f"**Verdict: the paper's claim {verdict} at this scale.**", ""]
    for c in checks:
        lines.append(f"- **{c['verdict']}**: {c['claim']}. {c['evidence']}.")
    if notes:
        lines += ["", notes]
    if table:
        cols = list(table[0])
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in table:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "diverged" if math.isinf(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@task(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=transient, cache_policy=NO_CACHE,
      task_run_name="log {name}")
def log_study(name: str, experiment: str, params: dict[str, Any], results: list[dict[str, Any]],
              checks: list[dict[str, Any]], verdict: str, table: list[dict[str, Any]], figures: dict[str, Any],
              notes: str = "") -> str:
    """Parent run (verdict, figures, table) + one child run per point (curves); returns the parent run id."""
    c = tracking.client()
    versions = tracking.publish_components.fn(kernel_names([r["point"] for r in results]))
    with runs.tracked_run(experiment, name, tags={"attnflow.kind": name, "attnflow.verdict": verdict},
                          params={**params, "kernel_versions": json.dumps(versions)}) as parent:
        tags = [RunTag(tracking.metric_key(f"attnflow.claim.{i}"), f"{ck['verdict']}: {ck['claim']}"[:5000])
                for i, ck in enumerate(checks)]
        metrics = [Metric("verdict_held", float(verdict == claims.HELD), 0, 0)]
        for i, ck in enumerate(checks):
            metrics.append(Metric(f"claim_{i}_held", float(ck["verdict"] == claims.HELD), 0, 0))
            metrics += [Metric(tracking.metric_key(f"claim_{i}/{k}"), float(v), 0, 0)
                        for k, v in ck["numbers"].items() if _finite(v)]
        c.log_batch(parent, metrics=metrics, tags=tags)
        c.log_text(parent, verdict_markdown(name, checks, verdict, table, notes), "verdict.md")
        c.log_dict(parent, {"checks": checks, "verdict": verdict, "table": table}, "verdict.json")
        c.log_dict(parent, json.loads(json.dumps(results, default=str)), "results.json")
        for fname, fig in figures.items():
            c.log_figure(parent, fig, f"figures/{fname}.png")
            plots.close(fig)
        for r in results:
            _log_point(c, experiment, parent, name, r)
    print(verdict_markdown(name, checks, verdict, []).strip())
    from tasks.report import log_run_link

    log_run_link(parent, experiment)
    return parent


def _log_point(c: Any, experiment: str, parent: str, kind: str, r: dict[str, Any]) -> None:
    p = r["point"]
    run = c.create_run(tracking.experiment_id(experiment), run_name=r["label"],
                       tags={"mlflow.parentRunId": parent, "attnflow.kind": f"{kind}/point",
                             "attnflow.kernel": str(p["model"].get("attention", "sdpa")), **tracking.process_tags()})
    with runs.ended(run.info.run_id) as rid:
        _log_point_body(c, rid, r)


def _log_point_body(c: Any, rid: str, r: dict[str, Any]) -> None:
    p = r["point"]
    params = [Param(f"{section}.{k}", str(v)[:6000]) for section in ("model", "train", "data", "probe")
              for k, v in p.get(section, {}).items()]
    metrics = [Metric("train_loss", float(v), 0, int(s)) for s, v in r["train_loss"] if _finite(v)]
    for row in r["probes"]:
        metrics += [Metric("val_loss" if k == "loss" else k, float(v), 0, int(row["step"]))
                    for k, v in row.items() if k != "step" and _finite(v)]
    metrics += [Metric("n_params", float(r["n_params"]), 0, 0), Metric("train_seconds", float(r["seconds"]), 0, 0)]
    if r["diverged_at"] is not None:
        metrics.append(Metric("diverged_at", float(r["diverged_at"]), 0, 0))
    for i in range(0, len(metrics), 900):
        c.log_batch(rid, metrics=metrics[i:i + 900], params=params if i == 0 else [])

