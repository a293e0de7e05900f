"""Thin tasks of the kv-sweep flow: press specs per ratio, one cached evaluation per point, curves to MLflow."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from registry.specs import ResolvedSpec, SpecError, parse_list, resolved
from tasks.data import load_data
from tasks.integrity import CHECKED, content_key
from tasks.models import LoadedModel
from tasks.retry import transient


@task(cache_policy=NO_CACHE, task_run_name="validate presses")
def plan_presses(presses: list[str], ratios: list[float]) -> list[ResolvedSpec]:
    """One resolved press per (press, ratio), ratio set on each; raises naming a bad spec or ratio before compute."""
    bad = [r for r in ratios if not 0.0 <= r < 1.0]
    if bad or not ratios:
        raise SpecError(f"ratios must lie in [0, 1) and not be empty; got {ratios}")
    out = []
    for spec in (s for item in presses for s in parse_list(item)):
        if "ratio" in spec.params or "budget" in spec.params:
            raise SpecError(f"{spec.text()}: the sweep sets the ratio; leave ratio/budget out of the press spec")
        press = spec.create("press")
        out += [ResolvedSpec.of(press.with_ratio(float(r))) for r in ratios]
    if not out:
        raise SpecError("no presses given")
    return out


@task(cache_policy=NO_CACHE, task_run_name="validate kv-sweep modes")
def check_sweep_modes(benchmarks: list[ResolvedSpec], query_aware: bool, patch: ResolvedSpec | None) -> None:
    """Query-agnostic scoring needs benchmarks whose prompts split into context + question; a patch must need
    neither fitting nor per-prompt inputs. Raises naming the problem before compute."""
    if not query_aware:
        bad = [b.label for b in benchmarks if not b.component.query_split]
        if bad:
            raise SpecError(f"{', '.join(bad)}: no context/question split, so they cannot be scored query-agnostic; "
                            "pass --query-aware or leave them out")
    if patch is not None:
        comp = patch.component
        if comp.needs_fit or getattr(comp, "needs_inputs", False):
            raise SpecError(f"{patch.label}: kv-sweep applies patches that need neither fitting nor prompt inputs")


def _point_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same weights + press code/params (ratio included) + benchmark code/params/data content + mode + patch code and
    params -> same point."""
    loaded: LoadedModel = parameters["loaded"]
    press, bench = resolved(parameters["press"], "press"), resolved(parameters["benchmark"], "benchmark")
    patch = parameters.get("patch")
    patch_key = None if patch is None else [resolved(patch, "patch").fingerprint,
                                            resolved(patch, "patch").code_fingerprint]
    key = [loaded.fingerprint, press.fingerprint, press.code_fingerprint, bench.fingerprint, bench.code_fingerprint,
           content_key(parameters["data_path"]), parameters.get("batch_size"), bool(parameters.get("query_aware")),
           patch_key]
    return "kvpoint2-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]


@task(cache_key_fn=_point_key, result_serializer=CHECKED, retries=0, task_run_name="{press} on {benchmark}")
def press_point(loaded: LoadedModel, press: ResolvedSpec | str, benchmark: ResolvedSpec | str, data_path: str,
                batch_size: int = 8, progress: bool = False, query_aware: bool = False,
                patch: ResolvedSpec | str | None = None) -> dict[str, Any]:
    """Score ``benchmark`` with ``press`` compressing every prefill; returns the metrics, measured cache bytes
    (summed over the prefills) and seconds. Query-agnostic (default): each prompt's context is prefilled and
    compressed alone, the question and answer run on the compressed cache; ``query_aware``: the whole prompt
    (question included) is compressed. ``patch``: an attention patch applied inside the press scope."""
    from components.presses._query import query_agnostic

    p, b = resolved(press, "press"), resolved(benchmark, "benchmark")
    rows = load_data(data_path)
    splits = {} if query_aware else {r["prompt"]: b.component.question_start(r) for r in rows}
    mode = contextlib.nullcontext() if query_aware else query_agnostic(splits)
    start = time.perf_counter()
    with p.component.applied(loaded.model) as state, contextlib.ExitStack() as stack:
        session = stack.enter_context(resolved(patch, "patch").component.applied(loaded.model)) if patch else None
        with mode:
            result = b.component.evaluate(loaded.model, loaded.tokenizer, rows, session=session,
                                          batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    ratio = state.total_kept_bytes / state.total_full_bytes if state.total_full_bytes else 1.0
    print(f"{p.label} on {b.label}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
          + f", cache bytes kept {ratio:.3f} ({seconds:.1f}s)")
    return {
        "component": p.record(), "benchmark": b.record(), "metrics": result.metrics,
        "higher_is_better": {k: b.component.metrics.get(k, True) for k in result.metrics},
        "primary_metric": b.component.primary_metric, "examples": result.examples,
        "breakdowns": result.breakdowns, "figures": {k: list(v) for k, v in b.component.figures.items()},
        "fit": {}, "seconds": seconds, "model": loaded.name, "model_fingerprint": loaded.fingerprint,
        "data_fingerprint": (content_key(data_path) or "")[:16],
        "press": p.component.component_name, "ratio": float(p.component.ratio),
        "cache_full_bytes": state.total_full_bytes, "cache_kept_bytes": state.total_kept_bytes,
        "cache_bytes_ratio": ratio, "query_aware": bool(query_aware),
        "patch": resolved(patch, "patch").label if patch else "",
    }


def curve_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point: task, press, ratio, primary metric, cache bytes ratio, seconds."""
    return [{"task": pt["benchmark"]["label"], "press": pt["press"], "ratio": pt["ratio"],
             "metric": pt["primary_metric"], "value": float(pt["metrics"][pt["primary_metric"]]),
             "cache_bytes_ratio": pt["cache_bytes_ratio"], "seconds": pt["seconds"]} for pt in points]


def curves_markdown(rows: list[dict[str, Any]]) -> str:
    """Per task: a press x ratio table of the primary metric (cache bytes ratio in brackets)."""
    out = []
    for t in dict.fromkeys(r["task"] for r in rows):
        sub = [r for r in rows if r["task"] == t]
        ratios = sorted({r["ratio"] for r in sub})
        out += [f"### {t} ({sub[0]['metric']})", "", "| press | " + " | ".join(f"{x:g}" for x in ratios) + " |",
                "|---|" + "---|" * len(ratios)]
        for p in dict.fromkeys(r["press"] for r in sub):
            cells = {r["ratio"]: f"{r['value']:.3f} ({r['cache_bytes_ratio']:.2f})" for r in sub if r["press"] == p}
            out.append(f"| {p} | " + " | ".join(cells.get(x, "") for x in ratios) + " |")
        out.append("")
    return "\n".join(out)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=transient, task_run_name="log kv curves")
def log_kv_curves(run_id: str, points: list[dict[str, Any]], child_runs: list[str]) -> str:
    """Per-point metrics on the child runs; on the parent: one accuracy-vs-ratio figure per task (a line per
    press), the table as Markdown and JSON."""
    from mlflow.entities import Metric

    from tasks import plots
    from tasks.tracking import client

    c = client()
    for rid, pt in zip(child_runs, points):
        c.log_batch(rid, metrics=[Metric("kv/cache_bytes_ratio", pt["cache_bytes_ratio"], 0, 0),
                                  Metric("kv/cache_kept_bytes", float(pt["cache_kept_bytes"]), 0, 0),
                                  Metric("kv/ratio", pt["ratio"], 0, 0)])
    rows = curve_rows(points)
    for t in dict.fromkeys(r["task"] for r in rows):
        sub = [r for r in rows if r["task"] == t]
        fig = plots.ratio_curves(sub, f"{t}: {sub[0]['metric']} vs compression ratio")
        c.log_figure(run_id, fig, f"curves/{plots.safe_name(t)}.png")
        plots.close(fig)
    md = curves_markdown(rows)
    c.log_text(run_id, md, "kv_sweep.md")
    c.log_dict(run_id, rows, "kv_sweep.json")
    return md
