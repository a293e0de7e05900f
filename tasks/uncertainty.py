"""Thin tasks of the uncertainty flow: method specs, scoring from the caches, correctness labels, AUROC / AUPRC with
bootstrap CIs, and the MLflow record (metrics per method, a table, an AUROC bar chart with CIs)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.uncertainty import _eval
from registry.specs import ResolvedSpec, SpecError, parse_list, resolved
from tasks.retry import transient
from tasks.similarity_cache import load_samples


@task(cache_policy=NO_CACHE, task_run_name="validate methods")
def plan_methods(methods: list[str]) -> list[ResolvedSpec]:
    """Resolved uncertainty method specs; raises naming a bad spec before compute."""
    out = [spec.resolve("uncertainty") for item in methods for spec in parse_list(item)]
    if not out:
        raise SpecError("no uncertainty methods given")
    return out


def needs_similarity(methods: list[ResolvedSpec]) -> bool:
    return any(m.component.needs for m in methods)


def score_all(methods: list[ResolvedSpec | str], generations_dir: str, similarity_dir: str | None
              ) -> dict[str, Any]:
    """Read the caches once and score every method; nothing is generated. Returns scores by label, the per-question
    data the evaluation needs, and the seconds spent reading and scoring."""
    t0 = time.perf_counter()
    data = load_samples(generations_dir, similarity_dir)
    t1 = time.perf_counter()
    scores = {}
    for m in methods:
        spec = resolved(m, "uncertainty")
        scores[spec.label] = spec.component.score(data["questions"])
    t2 = time.perf_counter()
    return {"scores": scores, "greedy": data["greedy"], "references": data["references"], "ids": data["ids"],
            "load_seconds": t1 - t0, "score_seconds": t2 - t1}


def correctness(greedy: list[str], references: list[list[str]], metric: str = "rouge_l", threshold: float = 0.5
                ) -> np.ndarray:
    """1 where the greedy answer matches a reference (:func:`components.uncertainty._eval.correct`), else 0."""
    return np.array([int(_eval.correct(g, r, metric, threshold)) for g, r in zip(greedy, references)])


@task(cache_policy=NO_CACHE, retries=0, task_run_name="score uncertainty")
def score_methods(methods: list[ResolvedSpec], generations_dir: str, similarity_dir: str | None,
                  correctness_metric: str = "rouge_l", threshold: float = 0.5, n_bootstrap: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """Scores of every method, the correctness labels, and AUROC / AUPRC (errors positive) with bootstrap CIs."""
    out = score_all(methods, generations_dir, similarity_dir)
    correct = correctness(out["greedy"], out["references"], correctness_metric, threshold)
    errors = 1 - correct
    rows = _eval.summary(out["scores"], errors, n_bootstrap, seed)
    accuracy = float(correct.mean())
    print(f"scored {len(methods)} method(s) on {len(correct)} questions from the cache in "
          f"{out['load_seconds'] + out['score_seconds']:.2f}s; accuracy of the greedy answer {accuracy:.3f}")
    if correct.all() or not correct.any():
        print("warning: every greedy answer is " + ("correct" if correct.all() else "wrong")
              + "; AUROC / AUPRC are undefined (NaN)")
    return {**out, "scores": {k: v.tolist() for k, v in out["scores"].items()}, "correct": correct.tolist(),
            "accuracy": accuracy, "rows": rows}


def table_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """A method table: AUROC and AUPRC with their CIs."""
    f = lambda v: "nan" if v != v else f"{v:.3f}"  # noqa: E731
    lines = [f"### {title}", "", "| method | AUROC | 95% CI | AUPRC | 95% CI |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {f(r['auroc'])} | [{f(r['auroc_lo'])}, {f(r['auroc_hi'])}] | {f(r['auprc'])} | "
              f"[{f(r['auprc_lo'])}, {f(r['auprc_hi'])}] |" for r in rows]
    return "\n".join(lines + [""])


def auroc_bars(rows: list[dict[str, Any]], title: str) -> Any:
    """AUROC per method with its bootstrap CI as error bars (chance at 0.5)."""
    from tasks.plots import plt

    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    y = np.array([r["auroc"] for r in rows], dtype=float)
    err = np.array([[r["auroc"] - r["auroc_lo"] for r in rows], [r["auroc_hi"] - r["auroc"] for r in rows]])
    ax.bar(range(len(rows)), y, yerr=np.nan_to_num(err), capsize=4, color="tab:blue")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("AUROC (errors)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    return fig


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=transient, task_run_name="log uncertainty")
def log_uncertainty(run_id: str, result: dict[str, Any], generations: dict[str, Any], title: str) -> str:
    """Metrics per method (``<method>/auroc`` ...), accuracy, cache timings, the table and an AUROC bar chart."""
    from mlflow.entities import Metric

    from tasks import plots
    from tasks.tracking import client

    c = client()
    metrics = [Metric("accuracy", result["accuracy"], 0, 0), Metric("n_questions", len(result["correct"]), 0, 0),
               Metric("cache/score_seconds", result["load_seconds"] + result["score_seconds"], 0, 0)]
    for r in result["rows"]:
        metrics += [Metric(f"{r['method']}/{k}", float(r[k]), 0, 0) for k in
                    ("auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi") if r[k] == r[k]]
    c.log_batch(run_id, metrics=metrics)
    md = table_markdown(result["rows"], title)
    c.log_text(run_id, md, "uncertainty.md")
    c.log_dict(run_id, {"rows": result["rows"], "accuracy": result["accuracy"],
                        "generations_key": generations.get("key")}, "uncertainty.json")
    c.log_dict(run_id, [{"id": i, "greedy": g, "correct": ok, **{m: s[n] for m, s in result["scores"].items()}}
                        for n, (i, g, ok) in enumerate(zip(result["ids"], result["greedy"], result["correct"]))],
               "scores.json")
    fig = auroc_bars(result["rows"], title)
    c.log_figure(run_id, fig, "auroc.png")
    plots.close(fig)
    return md
