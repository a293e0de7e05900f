"""Tasks of the reproduce flow: collect the claims, run one, log it as a nested MLflow run, and the summary table
(Markdown + JSON) and forest plot on the parent run."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import plots, tracking
from tasks.claims_base import HELD, INCONCLUSIVE, NOT_HELD, Claim, check_seeds, inconclusive, missing_data
from tasks.models import check_model
from tasks.runs import ended

COLORS = {HELD: "tab:green", NOT_HELD: "tab:red", INCONCLUSIVE: "tab:gray"}
#: keys of ``data`` that name models, not datasets (checked as models)
MODEL_KEYS = ("control_model",)


def collect(modules: tuple[str, ...]) -> dict[str, Claim]:
    """Every claim of the given modules (each exports ``CLAIMS``); a name defined twice is an error."""
    out: dict[str, Claim] = {}
    for name in modules:
        for key, claim in importlib.import_module(name).CLAIMS.items():
            if key in out:
                raise ValueError(f"claim {key!r} is defined twice (again in {name})")
            out[key] = claim
    return out


@task(cache_policy=NO_CACHE, task_run_name="validate claims")
def plan_claims(available: dict[str, Claim], model: str, claims: list[str], seeds: list[int], data: dict[str, str],
                options: dict[str, dict[str, Any]]) -> list[str]:
    """Check claim names, seeds, data paths, per-claim options and the model before any compute."""
    names = list(dict.fromkeys(claims)) or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown claim(s) {', '.join(unknown)}; claims: {', '.join(available)}")
    check_seeds(seeds)
    for key, path in data.items():
        if not path:
            raise ValueError(f"data {key!r}: empty path")
        if key in MODEL_KEYS:
            check_model(path)
        elif not path.startswith(("hf:", "builtin:")) and not Path(path).exists():
            raise FileNotFoundError(f"data {key!r}: {path} does not exist")
    for name, opts in options.items():
        if name not in names:
            raise ValueError(f"options for {name!r}, which is not among the claims run ({', '.join(names)})")
        try:
            inspect.signature(available[name].run).bind(model, seeds=seeds, data=data, dtype="float32",
                                                         progress=False, **opts)
        except TypeError as e:
            raise ValueError(f"options of claim {name}: {e}") from None
    check_model(model)
    return names


@task(cache_policy=NO_CACHE, task_run_name="claim {name}")
def run_claim(claim: Claim, name: str, model: str, seeds: list[int], data: dict[str, str], dtype: str,
              progress: bool, options: dict[str, Any]) -> dict[str, Any]:
    """One claim's ClaimResult; missing data -> inconclusive without compute; an error -> inconclusive with the
    error recorded (``error`` key), so the other claims still run."""
    started = time.perf_counter()
    why = missing_data(claim, data)
    if why:
        return inconclusive(claim, model, why, started)
    try:
        return claim.run(model, seeds=seeds, data=data, dtype=dtype, progress=progress, **options)
    except Exception as e:  # noqa: BLE001 - recorded on the claim's run and re-raised by the flow at the end
        traceback.print_exc()
        return inconclusive(claim, model, f"failed: {type(e).__name__}: {e}", started, error=repr(e))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def per_seed_figure(res: dict[str, Any]) -> Any:
    """The deciding figure (and the other CI'd figures) per seed: dots, mean and 95% CI bar, threshold line."""
    plt = plots.plt
    keys = [k for k in res["ci"] if all(_finite(r.get(k)) for r in res["per_seed"])][:8]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(2.2 * max(1, len(keys)) + 1, 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        vals = [r[key] for r in res["per_seed"]]
        lo, hi = res["ci"][key]
        ax.scatter(range(len(vals)), vals, color="black", s=12, zorder=3)
        ax.axhspan(lo, hi, color=COLORS[res["verdict"]] if key == res.get("effect") else "tab:blue", alpha=0.2)
        ax.axhline(res["figures"][key], color="black", lw=1)
        if key == res.get("effect") and res.get("threshold") is not None:
            ax.axhline(res["threshold"], color="tab:red", ls="--", lw=1)
        ax.set_title(key, fontsize=8)
        ax.set_xticks(range(len(vals)), [str(r["seed"]) for r in res["per_seed"]], fontsize=7)
        ax.set_xlabel("seed", fontsize=7)
    fig.suptitle(f"{res['claim']} ({res['paper']}): {res['verdict']}", fontsize=9)
    fig.tight_layout()
    return fig


def forest_figure(results: list[dict[str, Any]], model: str) -> Any:
    """One row per claim: its deciding effect's mean and 95% CI, the threshold, coloured by verdict."""
    plt = plots.plt
    fig, axes = plt.subplots(len(results), 1, figsize=(7, 0.9 + 0.8 * len(results)), squeeze=False)
    for ax, res in zip(axes[:, 0], results):
        key = res.get("effect") or next(iter(res["ci"]), None)
        color = COLORS.get(res["verdict"], "tab:gray")
        if key and key in res["ci"] and all(map(_finite, res["ci"][key])):
            lo, hi = res["ci"][key]
            mean = res["figures"][key]
            ax.errorbar([mean], [0], xerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=4)
            if res.get("threshold") is not None:
                ax.axvline(res["threshold"], color="black", ls="--", lw=1)
            label = f"{res['claim']}: {key}"
        else:
            ax.text(0.5, 0, "no figures", ha="center", va="center", transform=ax.get_yaxis_transform())
            label = res["claim"]
        ax.set_yticks([0], [label], fontsize=8)
        ax.set_title(f"{res['verdict']}: {res['reason'][:110]}", fontsize=7, loc="left", color=color)
    fig.suptitle(f"claims on {model} (95% CI over seeds; dashed: threshold)", fontsize=9)
    fig.tight_layout()
    return fig


def table_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        key = r.get("effect") or next(iter(r["ci"]), "")
        ci = r["ci"].get(key)
        rows.append({"claim": r["claim"], "paper": r["paper"], "verdict": r["verdict"], "effect": key,
                     "value": r["figures"].get(key), "ci": ci, "threshold": r.get("threshold"),
                     "n_seeds": r["n_seeds"], "wall_s": round(r["wall_s"], 1), "reason": r["reason"]})
    return rows


def markdown_table(results: list[dict[str, Any]], model: str) -> str:
    def num(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"

    lines = [f"Claims on {model} (95% t CI over seeds)", "",
             "| claim | paper | verdict | deciding figure | mean | 95% CI | threshold | seeds | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table_rows(results):
        ci = f"[{num(r['ci'][0])}, {num(r['ci'][1])}]" if r["ci"] else "-"
        lines.append(f"| {r['claim']} | {r['paper']} | **{r['verdict']}** | {r['effect'] or '-'} | {num(r['value'])} "
                     f"| {ci} | {num(r['threshold'])} | {r['n_seeds']} | {r['wall_s']:.0f} |")
    lines += [""] + [f"- {r['claim']}: {r['reason']}" for r in table_rows(results)]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


@task(**tracking.RETRY, task_run_name="log claim {res[claim]}")
def log_claim(res: dict[str, Any], experiment: str, parent_run_id: str, options: dict[str, Any],
              seeds: list[int]) -> str:
    """One nested run: params, figures (means) and CI bounds as metrics, verdict tags, result.json, per-seed plot."""
    c = tracking.client()
    tags = {**tracking._flow_tags(), "mlflow.parentRunId": parent_run_id, "attnflow.kind": "claim",
            "attnflow.claim": res["claim"], "attnflow.paper": res["paper"], "attnflow.verdict": res["verdict"],
            "attnflow.reason": res["reason"][:5000], "attnflow.model": res["model"]}
    run = c.create_run(tracking.experiment_id(experiment), run_name=f"{res['claim']} | {res['verdict']}", tags=tags)
    rid = run.info.run_id
    with ended(rid, finish=False):  # an error while logging ends the run FAILED, not RUNNING
        metrics = [Metric(tracking.metric_key(k), float(v), 0, 0) for k, v in res["figures"].items() if _finite(v)]
        for k, (lo, hi) in res["ci"].items():
            metrics += [Metric(tracking.metric_key(f"{k}_ci_{s}"), float(v), 0, 0)
                        for s, v in (("lo", lo), ("hi", hi)) if _finite(v)]
        metrics.append(Metric("claim_seconds", float(res["wall_s"]), 0, 0))
        params = [Param("seeds", ",".join(map(str, seeds))), Param("criterion", res["criterion"][:6000])]
        params += [Param(k, str(v)[:6000]) for k, v in options.items()]
        c.log_batch(rid, metrics=metrics, params=params)
        c.log_dict(rid, _jsonable(res), "result.json")
        if res["per_seed"]:
            fig = per_seed_figure(res)
            c.log_figure(rid, fig, "figures/per_seed.png")
            plots.close(fig)
        c.set_terminated(rid, status="FAILED" if res.get("error") else "FINISHED")
    return rid


@task(**tracking.RETRY, task_run_name="log claims summary")
def log_summary(run_id: str, results: list[dict[str, Any]], model: str) -> str:
    """claims.md, claims.json, figures/claims.png and verdict tags/counts on the parent run; returns the Markdown."""
    c = tracking.client()
    text = markdown_table(results, model)
    c.log_text(run_id, text, "claims.md")
    c.log_dict(run_id, _jsonable({"model": model, "rows": table_rows(results), "results": results}), "claims.json")
    fig = forest_figure(results, model)
    c.log_figure(run_id, fig, "figures/claims.png")
    plots.close(fig)
    for r in results:
        c.set_tag(run_id, tracking.metric_key(f"attnflow.verdict.{r['claim']}"), r["verdict"])
    counts = [Metric(f"n_{v.replace(' ', '_')}", float(sum(r["verdict"] == v for r in results)), 0, 0)
              for v in (HELD, NOT_HELD, INCONCLUSIVE)]
    c.log_batch(run_id, metrics=counts)
    return text
