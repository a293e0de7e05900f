"""Report and figure tasks of the in-context-learning study flows (``icl-linear``, ``icl-softmax-heads``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.base import ParamError
from components.studies._utils import check_positive_ints
from components.studies.lsa_icl import parse_shift
from tasks import study_plots as sp
from tasks.studies import plan_sweep, verdict_markdown

STUDY = "softmax_icl"

REPORT = dict(cache_policy=NO_CACHE, persist_result=False)


# -- icl-linear (lsa_icl) ------------------------------------------------------------------------------------

@task(**REPORT, task_run_name="plan lsa_icl evaluation")
def plan_lsa_evaluation(test_lengths: list[int], shifts: list[str], n_test: int) -> dict[str, Any]:
    """Validated inputs of ``lsa_icl.evaluate`` (prompt lengths, shifts, test size), before any compute."""
    check_positive_ints("test_lengths", test_lengths)
    check_positive_ints("n_test", [n_test])
    for s in shifts:
        parse_shift(s)
    return {"lengths": list(test_lengths), "shifts": list(shifts), "n_test": n_test}


@task(**REPORT, task_run_name="report lsa_icl")
def lsa_report(points: list[dict[str, Any]], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Markdown (verdict, convergence, error vs M, shift table), key metrics and child-run records."""
    md = [verdict_markdown("icl-linear: trained LSA learns a linear model in-context (arXiv 2306.09927)", checks),
          "", "### Convergence of u·U11 to Γ⁻¹", "",
          "| config | ‖u·U11 − Γ⁻¹‖/‖Γ⁻¹‖ | other entries (PV / KQ) | final loss | train s |", "|---|---|---|---|---|"]
    metrics: dict[str, float] = {}
    records = []
    for p in points:
        ev, tr = p["eval"], p["train"]
        md.append(f"| {p['label']} | {ev['gap']:.4f} | {ev['other_pv']:.1e} / {ev['other_kq']:.1e} | "
                  f"{tr['final_loss']:.4f} | {tr['seconds']:.0f} |")
        metrics[f"gap/{p['label']}"] = ev["gap"]
        point_metrics = {"gap": ev["gap"], "final_loss": tr["final_loss"], "train_seconds": tr["seconds"],
                         **{f"error/M{r['m']}": r["error"] for r in ev["lengths"]},
                         **{f"theory/M{r['m']}": r["theory"] for r in ev["lengths"]},
                         **{f"relative_error/{r['shift']}": r["relative_error"] for r in ev["shifts"]}}
        records.append({"label": p["label"], "params": p["params"], "metrics": point_metrics,
                        "curves": {"train_loss": tr["loss"], "gap_to_gamma_inv": tr["gap"]}})
    lengths = [r["m"] for r in points[0]["eval"]["lengths"]]
    md += ["", "### Error vs prompt length M: measured / theory", "",
           "| config | " + " | ".join(f"M={m}" for m in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for p in points:
        md.append(f"| {p['label']} | " + " | ".join(f"{r['error']:.3f} / {r['theory']:.3f}"
                                                      for r in p["eval"]["lengths"]) + " |")
    shifts = [r["shift"] for r in points[0]["eval"]["shifts"]]
    md += ["", "### Relative error E(ŷ − y)² / E y² at M = N under shifts: measured / theory", "",
           "| config | " + " | ".join(shifts) + " |", "|---|" + "---|" * len(shifts)]
    for p in points:
        md.append(f"| {p['label']} | " + " | ".join(f"{r['relative_error']:.3g} / {r['theory']:.3g}"
                                                      for r in p["eval"]["shifts"]) + " |")
        for r in p["eval"]["shifts"]:
            metrics[f"relative_error/{p['label']}/{r['shift']}"] = r["relative_error"]
    return {"markdown": "\n".join(md), "metrics": metrics, "points": records}


@task(**REPORT, task_run_name="figures lsa_icl")
def lsa_figures(points: list[dict[str, Any]]) -> dict[str, bytes]:
    """Error vs M against theory, u·U11 / Γ⁻¹ / W^PV / W^KQ heatmaps, shift ratios, training curves."""
    figs: dict[str, bytes] = {}
    fig, axes = sp.panels(len(points), ncols=3)
    for ax, p in zip(axes, points):
        rows = p["eval"]["lengths"]
        n = p["params"]["n_prompt"]
        ax.loglog([r["m"] for r in rows], [r["error"] for r in rows], "o", label="trained LSA (measured)")
        sp.curve(ax, p["eval"]["theory_curve"], "theory (global minimum)", "C1")
        ax.axvline(n, color="grey", ls=":", lw=1, label=f"training N = {n}")
        ax.set_xlabel("prompt length M")
        ax.set_ylabel("E(ŷ − y)²")
        ax.set_title(p["label"], fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    figs["error_vs_length"] = sp.png(fig)
    cells = [[(f"{p['label']}\nu·U11 (trained)", p["eval"]["u_U11"]), ("Γ⁻¹ (theory)", p["eval"]["gamma_inv"]),
              ("W^PV", p["train"]["w_pv"]), ("W^KQ", p["train"]["w_kq"])] for p in points]
    figs["weights"] = sp.png(sp.heatmap_grid(cells, "LSA weights: only u = W^PV[d,d] and U11 = W^KQ[:d,:d] move; "
                                             "u·U11 = Γ⁻¹", scale=2.4))
    fig, ax = sp.panels(1, size=(max(6.0, 1.2 * len(points[0]["eval"]["shifts"]) * 1.4), 3.8))
    ax = ax[0]
    shifts = [r["shift"] for r in points[0]["eval"]["shifts"]]
    width = 0.8 / len(points)
    for i, p in enumerate(points):
        xs = np.arange(len(shifts)) + i * width
        ax.bar(xs, [r["relative_error"] for r in p["eval"]["shifts"]], width, label=p["label"], color=f"C{i}")
        ax.plot(xs, [r["theory"] for r in p["eval"]["shifts"]], "k_", ms=10)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(shifts)) + 0.4 - width / 2)
    ax.set_xticklabels(shifts, fontsize=8)
    ax.set_ylabel("relative error (black: theory)")
    ax.set_title("distribution shift at M = N: task / query tolerated, covariate not", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    figs["shift_table"] = sp.png(fig)
    fig, (a1, a2) = sp.panels(2, ncols=2)
    for i, p in enumerate(points):
        sp.curve(a1, p["train"]["loss"], p["label"], f"C{i}")
        sp.curve(a2, p["train"]["gap"], p["label"], f"C{i}")
    a1.set(xlabel="step", ylabel="½ E(ŷ − y)² (batch)", title="training loss")
    a2.set(xlabel="step", ylabel="‖u·U11 − Γ⁻¹‖/‖Γ⁻¹‖", yscale="log", title="distance to the global minimum")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    figs["training"] = sp.png(fig)
    return figs


# -- icl-softmax-heads (softmax_icl) -------------------------------------------------------------------------

@task(**REPORT, task_run_name="plan softmax_icl")
def plan_softmax(base: dict[str, Any], heads: list[int], linear_heads: list[int], anisotropic_heads: list[int],
                 rho: float, multitask_heads: list[int]) -> list[dict[str, Any]]:
    """The configurations of the sweep, validated and labelled: softmax and linear attention per head count,
    plus the optional anisotropic (ρ) and multi-task variants."""
    groups = [("softmax", {"attention": "softmax"}, heads), ("linear", {"attention": "linear"}, linear_heads),
              (f"softmax ρ={rho:g}", {"attention": "softmax", "rho": rho}, anisotropic_heads),
              ("multi-task", {"attention": "softmax", "tasks": "multi"}, multitask_heads)]
    if not heads and not linear_heads:
        raise ParamError("icl-softmax-heads: heads and linear_heads are both empty")
    configs: list[dict[str, Any]] = []
    for name, extra, counts in groups:
        for c in (plan_sweep.fn(STUDY, {**base, **extra}, {"heads": counts}) if counts else []):
            configs.append({"label": f"{name} H={c['params']['heads']}", "params": c["params"]})
    return configs


@task(**REPORT, task_run_name="plan softmax_icl evaluation")
def plan_softmax_evaluation(test_lengths: list[int], n_test: int) -> dict[str, Any]:
    """Validated inputs of ``softmax_icl.evaluate``, before any compute."""
    check_positive_ints("test_lengths", test_lengths)
    check_positive_ints("n_test", [n_test])
    return {"lengths": list(test_lengths), "n_test": n_test}


@task(**REPORT, task_run_name="report softmax_icl")
def softmax_report(points: list[dict[str, Any]], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Markdown (verdict, per-head circuits, MSE by prompt length vs baselines), metrics, child-run records."""
    md = [verdict_markdown("icl-softmax-heads: multi-head softmax ICL regression (arXiv 2503.12734)", checks), "",
          "### Circuits per head (active heads: |μ_h| >= 0.1 max |μ|)", "",
          "| config | head | ω_h | diag spread | max off-diag | μ_h | max x-part of OV | cos(KQ, I) / cos(KQ, Σ⁻¹) |",
          "|---|---|---|---|---|---|---|---|"]
    metrics: dict[str, float] = {}
    records = []
    for p in points:
        for h in p["eval"]["heads"]:
            mu = "/".join(f"{m:+.3f}" for m in h["mu"])
            md.append(f"| {p['label']} | {h['head']} | {h['omega']:+.3f} | {h['spread']:.3f} | {h['offdiag']:.3f} | "
                      f"{mu} | {h['ov_x']:.3f} | {h['cos_identity']:.2f} / {h['cos_sigma_inv']:.2f} |")
        tr = p["train"]
        point_metrics = {"final_loss": tr["final_loss"], "train_seconds": tr["seconds"],
                         **{f"mse/L{r['length']}/{k}": v for r in p["eval"]["lengths"] for k, v in r.items()
                            if k != "length"},
                         **{f"omega/h{h['head']}": h["omega"] for h in p["eval"]["heads"]},
                         **{f"mu/h{h['head']}": h["mu"][0] for h in p["eval"]["heads"]}}
        metrics.update({f"mse/{p['label']}/L{r['length']}": r["model"] for r in p["eval"]["lengths"]})
        curves = {"train_loss": tr["loss"]}
        for k in range(p["params"]["heads"]):
            curves[f"omega_h{k}"] = [[s["step"], s["omega"][k]] for s in tr["snapshots"]]
            curves[f"mu_h{k}"] = [[s["step"], s["mu"][k]] for s in tr["snapshots"]]
        records.append({"label": p["label"], "params": p["params"], "metrics": point_metrics, "curves": curves})
    lengths = [r["length"] for r in points[0]["eval"]["lengths"]]
    md += ["", "### Test MSE by prompt length (L_train = %d)" % points[0]["params"]["context"], "",
           "| model | " + " | ".join(f"L={m}" for m in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for p in points:
        md.append(f"| {p['label']} | " + " | ".join(f"{r['model']:.4g}" for r in p["eval"]["lengths"]) + " |")
    for name, key in (("GD (fitted η)", "gd"), ("debiased GD (fitted η)", "dgd"), ("Bayes ridge λ=σ²d", "ridge")):
        base = next((p for p in points if key in p["eval"]["lengths"][0] and not p["params"]["rho"]), None)
        if base:
            md.append(f"| {name} | " + " | ".join(f"{r[key]:.4g}" for r in base["eval"]["lengths"]) + " |")
    return {"markdown": "\n".join(md), "metrics": metrics, "points": records}


@task(**REPORT, task_run_name="figures softmax_icl")
def softmax_figures(points: list[dict[str, Any]]) -> dict[str, bytes]:
    """KQ / OV heatmaps per head, ω_h and μ_h dynamics, MSE by prompt length vs baselines, training loss."""
    figs: dict[str, bytes] = {}
    figs["kq_heatmaps"] = sp.png(sp.heatmap_grid(
        [[(f"{p['label']}: KQ head {h}", kq) for h, kq in enumerate(p["eval"]["kq"])] for p in points],
        "KQ_h = K_hᵀQ_h/√(d+1): the x-block becomes ω_h·I (the last column meets the query's zero label: "
        "never trained)", scale=2.4))
    ov = [(f"{p['label']}: OV (row = head)", [row for head in p["eval"]["ov"] for row in head]) for p in points]
    figs["ov_heatmaps"] = sp.png(sp.heatmap_grid([ov[i:i + 3] for i in range(0, len(ov), 3)],
                                                 "OV_h = O_h V_h: only the y entry μ_h, Σ_h μ_h ≈ 0", scale=2.4))
    fig, axes = sp.panels(2 * len(points), ncols=2, size=(4.6, 2.8))
    for i, p in enumerate(points):
        snaps = p["train"]["snapshots"]
        for k in range(p["params"]["heads"]):
            sp.curve(axes[2 * i], [[s["step"], s["omega"][k]] for s in snaps], f"head {k}", f"C{k}")
            sp.curve(axes[2 * i + 1], [[s["step"], s["mu"][k]] for s in snaps], f"head {k}", f"C{k}")
        axes[2 * i].set(title=f"{p['label']}: ω_h", xlabel="step")
        axes[2 * i + 1].set(title=f"{p['label']}: μ_h", xlabel="step")
        for a in axes[2 * i: 2 * i + 2]:
            a.title.set_fontsize(8)
            a.grid(alpha=0.3)
            a.legend(fontsize=6)
    figs["dynamics"] = sp.png(fig)
    fig, (ax,) = sp.panels(1, size=(6.5, 4.2))
    for i, p in enumerate(points):
        rows = p["eval"]["lengths"]
        ax.plot([r["length"] for r in rows], [r["model"] for r in rows], "o-", color=f"C{i}", label=p["label"])
    base = next((p for p in points if "dgd" in p["eval"]["lengths"][0] and not p["params"]["rho"]), None)
    if base:
        for key, style in (("gd", "k:"), ("dgd", "k--"), ("ridge", "k-")):
            rows = base["eval"]["lengths"]
            ax.plot([r["length"] for r in rows], [r[key] for r in rows], style, label=key, lw=1)
    ax.axvline(points[0]["params"]["context"], color="grey", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="test prompt length L", ylabel="test MSE",
           title="length generalisation: softmax vs linear attention, against GD / debiased GD / ridge")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    figs["mse_vs_length"] = sp.png(fig)
    fig, (ax,) = sp.panels(1, size=(6.0, 3.6))
    for i, p in enumerate(points):
        sp.curve(ax, p["train"]["loss"], p["label"], f"C{i}")
    ax.set(xlabel="step", ylabel="MSE (batch)", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figs["training"] = sp.png(fig)
    return figs
