"""Tasks of the ``homeostasis`` flow: the dataset as a content-addressed ``.npz``, the sweep (LRC-matched runs
wait for the LRR run of the same shift rate), the report and its figures."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.futures import PrefectFuture

from components.base import ParamError
from components.studies._datasets import ClassificationData
from components.studies._utils import mean_ci
from infra.settings import settings
from tasks import integrity
from tasks import study_plots as sp
from tasks.io import atomic_path
from tasks.retry import transient
from tasks.studies import submit_point, verdict_markdown

STUDY = "homeostasis"
METHOD_ORDER = ("lrc", "lrr", "lrh", "lrc_matched")
SUBMIT_ORDER = ("lrh", "lrr", "lrc", "lrc_matched")
REPORT = dict(cache_policy=NO_CACHE, persist_result=False)


@task(**REPORT, task_run_name="check dataset")
def check_dataset(source: str, label_column: str, n_train: int, n_val: int, features: int,
                  seed: int) -> dict[str, Any]:
    """Validate the dataset request (path, format, sizes) and fingerprint its content, before any compute."""
    spec = ClassificationData(source, label_column, n_train, n_val, features, 10, seed)
    return {"spec": asdict(spec), "fingerprint": spec.fingerprint()}


@task(cache_policy=INPUTS + TASK_SOURCE, result_serializer=integrity.CHECKED, retries=1, retry_delay_seconds=[2],
      retry_condition_fn=transient, task_run_name="prepare dataset {request[fingerprint]}")
def prepare_dataset(request: dict[str, Any]) -> dict[str, Any]:
    """Load (or generate) the examples once and store them as ``data/homeostasis-<fingerprint>.npz``."""
    spec = ClassificationData(**request["spec"])
    path = settings().data_dir / f"homeostasis-{request['fingerprint']}.npz"
    data = spec.load()
    integrity.build_once(path, lambda p: _save_npz(p, data))
    return {"path": str(path), "fingerprint": request["fingerprint"], "source": spec.source,
            "n_train": int(len(data["y"])), "n_val": int(len(data["y_val"])), "features": int(data["x"].shape[1]),
            "classes": int(max(data["y"].max(), data["y_val"].max()) + 1)}


def _save_npz(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **data)


def dataset_file(request: dict[str, Any]) -> dict[str, Any]:
    """The prepared dataset (prepared again if its file vanished or fails its checksum)."""
    return integrity.prepared(prepare_dataset, (request,), path_of=lambda d: d["path"])


@task(**REPORT, task_run_name="check methods")
def check_methods(methods: list[str], swaps_per_epoch: list[int]) -> list[str]:
    """Methods in run order (LRR before its matched control, which needs it); at least one shifted rate."""
    unknown = sorted(set(methods) - set(METHOD_ORDER))
    if unknown:
        raise ParamError(f"unknown method(s) {', '.join(unknown)}; methods: {', '.join(METHOD_ORDER)}")
    if "lrc_matched" in methods and "lrr" not in methods:
        raise ParamError("method lrc_matched (LRC at LRR's mean η) needs lrr in the same sweep")
    return [m for m in METHOD_ORDER if m in methods]


def submit_sweep(configs: list[dict[str, Any]], data: dict[str, Any]) -> list[PrefectFuture]:
    """One simulate task per config, in config order; each ``lrc_matched`` run takes its η from the LRR run at
    its shift rate. Submitted slowest first (LRH ~3x the others) so the workers finish together."""
    futures: dict[int, PrefectFuture] = {}
    lrr: dict[int, PrefectFuture] = {}
    order = sorted(range(len(configs)), key=lambda i: SUBMIT_ORDER.index(configs[i]["params"]["method"]))
    for i in order:
        c = configs[i]
        inputs: dict[str, Any] = {"data": data["path"]}
        if c["params"]["method"] == "lrc_matched":
            inputs["eta_from"] = lrr[c["params"]["swaps_per_epoch"]]
        futures[i] = submit_point(STUDY, c, "simulate", inputs)
        if c["params"]["method"] == "lrr":
            lrr[c["params"]["swaps_per_epoch"]] = futures[i]
    return [futures[i] for i in range(len(configs))]


def _table(points: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(p["params"]["method"], p["params"]["swaps_per_epoch"]): p["result"] for p in points}


@task(**REPORT, task_run_name="report homeostasis")
def homeostasis_report(points: list[dict[str, Any]], checks: list[dict[str, Any]],
                       data: dict[str, Any]) -> dict[str, Any]:
    """Markdown (verdict, accuracy table with 95% CIs, mean η), key metrics and child-run records."""
    table = _table(points)
    methods = [m for m in METHOD_ORDER if any(k[0] == m for k in table)]
    rates = sorted({k[1] for k in table})
    seeds = points[0]["result"]["seeds"]
    md = [verdict_markdown("homeostasis: homeostatic learning rate under concept shift (arXiv 2205.08645)", checks),
          "", f"Dataset: `{data['source']}` ({data['n_train']} train / {data['n_val']} validation, "
          f"{data['features']} features, {data['classes']} classes); seeds {seeds}; metric: validation accuracy at "
          "each epoch's end (current labels), averaged over epochs; mean ± 95% t-interval over seeds.", "",
          "| method | " + " | ".join(f"{r} swaps/epoch" for r in rates) + " |", "|---|" + "---|" * len(rates)]
    metrics: dict[str, float] = {}
    for m in methods:
        cells = []
        for r in rates:
            res = table.get((m, r))
            if res is None:
                cells.append("-")
                continue
            mean, half = mean_ci(res["mean_val_acc"])
            cells.append(f"{mean:.3f} ± {half:.3f}")
            metrics[f"acc/{m}/swaps{r}"], metrics[f"acc_ci/{m}/swaps{r}"] = mean, half
            metrics[f"eta_mean/{m}/swaps{r}"] = float(np.mean(res["eta_mean"]))
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    md += ["", "Mean η over training (mean over seeds; final η in parentheses):", "",
           "| method | " + " | ".join(f"{r}" for r in rates) + " |", "|---|" + "---|" * len(rates)]
    for m in methods:
        md.append(f"| {m} | " + " | ".join(
            f"{np.mean(table[(m, r)]['eta_mean']):.2e} ({np.mean(table[(m, r)]['eta_final']):.1e})"
            if (m, r) in table else "-" for r in rates) + " |")
    records = [{"label": p["label"], "params": p["params"],
                "metrics": {"mean_val_acc": float(np.mean(p["result"]["mean_val_acc"])),
                            "final_val_acc": float(np.mean(p["result"]["final_val_acc"])),
                            "eta_mean": float(np.mean(p["result"]["eta_mean"])), "seconds": p["result"]["seconds"]},
                "curves": {"val_acc": [[e, float(np.mean(col))] for e, col in
                                       enumerate(zip(*p["result"]["val_acc"]))]}} for p in points]
    return {"markdown": "\n".join(md), "metrics": metrics, "points": records}


@task(**REPORT, task_run_name="figures homeostasis")
def homeostasis_figures(points: list[dict[str, Any]]) -> dict[str, bytes]:
    """Accuracy vs shift rate (95% CIs), η trajectories, validation accuracy by epoch."""
    table = _table(points)
    methods = [m for m in METHOD_ORDER if any(k[0] == m for k in table)]
    rates = sorted({k[1] for k in table})
    figs: dict[str, bytes] = {}
    fig, (ax,) = sp.panels(1, size=(6.0, 4.0))
    xs = list(range(len(rates)))
    series = {}
    for m in methods:
        stats = [mean_ci(table[(m, r)]["mean_val_acc"]) if (m, r) in table else (np.nan, np.nan) for r in rates]
        series[m] = ([s[0] for s in stats], [s[1] for s in stats])
    sp.errorbar_lines(ax, xs, series, "label swaps per epoch", "validation accuracy (mean over epochs)",
                      "accuracy vs concept-shift rate (mean ± 95% CI over seeds)")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(r) for r in rates])
    figs["accuracy_vs_shift_rate"] = sp.png(fig)
    fig, axes = sp.panels(len(rates), ncols=len(rates), size=(4.0, 3.2))
    for ax, r in zip(axes, rates):
        for i, m in enumerate(methods):
            if (m, r) not in table:
                continue
            curves = table[(m, r)]["eta_curve"]
            steps = [pt[0] for pt in curves[0]]
            vals = np.array([[pt[1] for pt in c] for c in curves])  # (seeds, points)
            ax.plot(steps, vals.mean(0), color=f"C{i}", label=m)
            ax.fill_between(steps, vals.min(0), vals.max(0), color=f"C{i}", alpha=0.15)
        ax.set(yscale="log", xlabel="batch", ylabel="η", title=f"{r} swaps/epoch: η (mean, min-max over seeds)")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    figs["eta_trajectories"] = sp.png(fig)
    fig, axes = sp.panels(len(rates), ncols=len(rates), size=(4.0, 3.2))
    for ax, r in zip(axes, rates):
        epochs = None
        series = {}
        for m in methods:
            if (m, r) in table:
                acc = np.array(table[(m, r)]["val_acc"])  # (seeds, epochs)
                epochs = list(range(1, acc.shape[1] + 1))
                stats = [mean_ci(col) for col in acc.T]
                series[m] = ([s[0] for s in stats], [s[1] for s in stats])
        sp.errorbar_lines(ax, epochs or [], series, "epoch", "validation accuracy", f"{r} swaps/epoch")
    figs["val_accuracy_by_epoch"] = sp.png(fig)
    return figs
