"""The claim checks of the studies: each turns a sweep's results (plain dicts) into one :class:`Check` per claim
of its paper, with the number it was judged on and the criterion in words.

Kept out of the studies' code fingerprints on purpose: the sweep points are cached by the code that computes
them, so a changed threshold re-judges cached results instead of recomputing them. Each run logs the criteria
it applied (verdict.json).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from components.studies._utils import Check, mean_ci
from components.studies.lsa_icl import parse_shift

ACTIVE = 0.1  # a head is active when |μ_h| >= ACTIVE · max_h |μ_h|


# -- lsa_icl: Zhang, Frei, Bartlett ------------------------------------------------------------------------------

def lsa_icl(points: list[dict[str, Any]]) -> list[Check]:
    """points: [{"label", "params", "train", "eval"}]; every claim must hold for every configuration."""
    def worst(fn):
        return max(((fn(p), p["label"]) for p in points), key=lambda t: t[0])

    gap, at = worst(lambda p: p["eval"]["gap"])
    other, o_at = worst(lambda p: max(p["eval"]["other_pv"], p["eval"]["other_kq"]))
    dev, d_at = worst(lambda p: max(abs(r["error"] - r["theory"]) / r["theory"] for r in p["eval"]["lengths"]))
    checks = [
        Check("converges_to_gamma_inv", "gradient flow reaches u·U11 = Γ⁻¹", gap < 0.02, gap,
              "‖u·U11 − Γ⁻¹‖_F / ‖Γ⁻¹‖_F < 0.02 in every configuration", f"worst: {at}"),
        Check("only_u_and_U11_move", "only u and U11 move during training", other < 0.05, other,
              "other entries / largest entry of their matrix < 0.05", f"worst: {o_at}"),
        Check("error_follows_theory", "prediction error vs prompt length M follows the theory curve",
              dev < 0.1, dev, "max over M of |measured − theory| / theory < 0.1", f"worst: {d_at}"),
    ]
    ratios: dict[str, list[tuple[float, str]]] = {}
    for p in points:
        rows = {r["shift"]: r["relative_error"] for r in p["eval"]["shifts"]}
        for shift, value in rows.items():
            if shift != "none":
                ratios.setdefault(parse_shift(shift)[0], []).append((value / rows["none"], f"{p['label']} {shift}"))
    for kind in ("task", "query"):
        if kind in ratios:
            r, where = max(ratios[kind], key=lambda t: abs(math.log(t[0])))
            checks.append(Check(f"{kind}_shift_tolerated", f"{kind} shift is tolerated", 0.8 <= r <= 1.25, r,
                                "relative error / in-distribution relative error in [0.8, 1.25]", where))
    if "covariate" in ratios:
        r, where = min(ratios["covariate"], key=lambda t: t[0])
        checks.append(Check("covariate_shift_not_tolerated", "covariate shift of the prompt is not tolerated",
                            r >= 1.5, r, "relative error / in-distribution relative error >= 1.5 for every "
                            "covariate scale", f"smallest: {where}"))
    dev, where = worst(lambda p: max(abs(r["relative_error"] - r["theory"]) / r["theory"]
                                     for r in p["eval"]["shifts"]))
    checks.append(Check("shift_table_follows_theory", "relative errors under shift follow ŷ → x_qᵀΓ⁻¹Ŝ'w",
                        dev < 0.1, dev, "max over shifts of |measured − theory| / theory < 0.1", f"worst: {where}"))
    return checks


# -- softmax_icl: He, Pan, Chen, Yang ---------------------------------------------------------------------------

def _active(heads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    top = max(abs(h["mu"][0]) for h in heads)
    return [h for h in heads if abs(h["mu"][0]) >= ACTIVE * top]


def _mse(point: dict[str, Any], length: int | None = None, key: str = "model") -> float:
    rows = point["eval"]["lengths"]
    length = point["params"]["context"] if length is None else length
    return next((r[key] for r in rows if r["length"] == length), float("nan"))


def softmax_icl(points: list[dict[str, Any]]) -> list[Check]:
    """points: [{"label", "params", "train", "eval"}] of one sweep (configs missing from it are skipped)."""
    def kind(p: dict[str, Any], attention: str = "softmax", rho0: bool = True) -> bool:
        ps = p["params"]
        return ps["tasks"] == "single" and ps["attention"] == attention and (ps["rho"] == 0.0) == rho0

    core = [p for p in points if kind(p)]
    by_h = {p["params"]["heads"]: p for p in core}
    checks: list[Check] = []
    if core:
        worst, where = max(((max(h["offdiag"], h["spread"]) / abs(h["omega"]), f"{p['label']} head {h['head']}")
                            for p in core for h in _active(p["eval"]["heads"])), key=lambda t: t[0])
        checks.append(Check("kq_diagonal_homogeneous", "the KQ x-block becomes ω_h·I", worst <= 0.25, worst,
                            "max(off-diagonal, diagonal spread) / |ω_h| <= 0.25 on every active head", where))
        worst, where = max(((h["ov_x"] / abs(h["mu"][0]), f"{p['label']} head {h['head']}")
                            for p in core for h in _active(p["eval"]["heads"])), key=lambda t: t[0])
        checks.append(Check("ov_last_entry_only", "OV has only its last (y) entry μ_h non-zero", worst <= 0.1, worst,
                            "max |x-part of OV_h| / |μ_h| <= 0.1 on every active head", where))
    multi = [p for p in core if p["params"]["heads"] >= 2]
    if multi:
        worst, where = max(((abs(sum(h["mu"][0] for h in p["eval"]["heads"]))
                             / sum(abs(h["mu"][0]) for h in p["eval"]["heads"]), p["label"]) for p in multi),
                           key=lambda t: t[0])
        checks.append(Check("mu_sums_to_zero", "the OV entries of the heads sum to zero", worst <= 0.1, worst,
                            "|Σ_h μ_h| / Σ_h |μ_h| <= 0.1 for H >= 2", where))
        mixed = all(min(h["omega"] for h in _active(p["eval"]["heads"])) < 0
                    < max(h["omega"] for h in _active(p["eval"]["heads"])) for p in multi)
        checks.append(Check("omega_both_signs", "ω_h takes both signs across heads (H >= 2)", mixed, float(mixed),
                            "active heads have ω of both signs in every H >= 2 model",
                            ", ".join(p["label"] for p in multi)))
    if 2 in by_h:
        two = by_h[2]
        gap = abs(_mse(two) - _mse(two, key="dgd")) / _mse(two, key="dgd")
        checks.append(Check("two_heads_match_debiased_gd", "two heads act as debiased GD", gap <= 0.1, gap,
                            "|MSE(H=2) − MSE(debiased GD)| / MSE(debiased GD) <= 0.1 at L_train",
                            f"H=2 {_mse(two):.4f}, dGD {_mse(two, key='dgd'):.4f}, ridge {_mse(two, key='ridge'):.4f}"))
        if 1 in by_h:
            ratio = _mse(two) / _mse(by_h[1])
            checks.append(Check("multihead_beats_single_head", "multi-head attention beats a single head",
                                ratio <= 0.9, ratio, "MSE(H=2) / MSE(H=1) <= 0.9 at L_train",
                                f"H=1 {_mse(by_h[1]):.4f}, H=2 {_mse(two):.4f}"))
    for h, p in sorted(by_h.items()):
        if h > 2 and 2 in by_h:
            gap = abs(_mse(p) - _mse(by_h[2])) / _mse(by_h[2])
            checks.append(Check(f"extra_heads_act_as_two_h{h}", f"with H={h} the model is equivalent to two heads",
                                gap <= 0.05, gap, f"|MSE(H={h}) − MSE(H=2)| / MSE(H=2) <= 0.05 at L_train",
                                f"H={h} {_mse(p):.4f}, H=2 {_mse(by_h[2]):.4f}"))
        if h > 2:
            mus = sorted((abs(x["mu"][0]) for x in p["eval"]["heads"]), reverse=True)
            share = sum(mus[:2]) / sum(mus)
            checks.append(Check(f"extra_heads_are_dummies_h{h}", f"with H={h} the heads beyond two become dummies",
                                share >= 0.9, share, "the two largest |μ_h| carry >= 90% of Σ|μ_h|",
                                "μ = " + ", ".join(f"{x['mu'][0]:+.2f}" for x in p["eval"]["heads"])))
    for attention, claim, test in (("softmax", "softmax attention generalises to longer prompts", lambda r: r <= 1.0),
                                   ("linear", "linear attention fails beyond the training length", lambda r: r >= 5.0)):
        pts = [p for p in points if kind(p, attention)]
        longest = [(p, max(r["length"] for r in p["eval"]["lengths"])) for p in pts]
        longest = [(p, m) for p, m in longest if m > p["params"]["context"]]
        if longest:
            ratios = [(_mse(p, m) / _mse(p), f"{p['label']} L={m}") for p, m in longest]
            r, where = (max if attention == "softmax" else min)(ratios, key=lambda t: t[0])
            checks.append(Check(f"{attention}_length_generalisation", claim, bool(test(r)), r,
                                "MSE(longest L) / MSE(L_train) " + ("<= 1" if attention == "softmax" else ">= 5"),
                                where))
    aniso = [p for p in points if kind(p, rho0=False)]
    if aniso:
        margin, where = min(((h["cos_sigma_inv"] - h["cos_identity"], f"{p['label']} head {h['head']}")
                             for p in aniso for h in _active(p["eval"]["heads"])), key=lambda t: t[0])
        checks.append(Check("anisotropic_preconditioned_gd", "anisotropic covariates give preconditioned GD",
                            margin > 0, margin, "cos(KQ x-block, Σ⁻¹) − cos(KQ x-block, I) > 0 on every active head",
                            where))
    checks += _multitask_checks([p for p in points if p["params"]["tasks"] == "multi"])
    return checks


def allocation(point: dict[str, Any]) -> list[list[float]]:
    """|μ_{h,k}|: how much head h writes output k from y_k (multi-task)."""
    return [[abs(m) for m in h["mu"]] for h in point["eval"]["heads"]]


def _multitask_checks(points: list[dict[str, Any]]) -> list[Check]:
    checks = []
    for p in points:
        h = p["params"]["heads"]
        alloc = allocation(p)
        top = max(max(row) for row in alloc)
        serves = [[m >= ACTIVE * top for m in row] for row in alloc]
        both = sum(all(row) for row in serves)
        single = sum(sum(row) == 1 for row in serves)
        detail = "|μ_h,k| = " + "; ".join("/".join(f"{m:.2f}" for m in row) for row in alloc)
        if 2 < h < 4:
            checks.append(Check(f"multitask_superposition_h{h}", f"with 2 < H={h} < 2·tasks a head superposes tasks",
                                both >= 1, float(both), "at least one head serves both tasks", detail))
        elif h >= 4:
            ok = both == 0 and single >= 2
            checks.append(Check(f"multitask_one_task_per_head_h{h}", f"with H={h} >= 2·tasks heads split the tasks",
                                ok, float(both), "no active head serves both tasks", detail))
    return checks


# -- homeostasis: Man, Damasio, Neven ----------------------------------------------------------------------------

def homeostasis(points: list[dict[str, Any]]) -> list[Check]:
    """points: [{"params", "result"}]; paired over seeds (LRH − LRC etc. per seed), 95% t-intervals."""
    acc = {(p["params"]["method"], p["params"]["swaps_per_epoch"]): dict(zip(p["result"]["seeds"],
                                                                          p["result"]["mean_val_acc"]))
           for p in points}
    rates = sorted({r for _, r in acc if r > 0})

    def diff(a: str, b: str, r: int) -> tuple[float, float, int] | None:
        if (a, r) not in acc or (b, r) not in acc:
            return None
        common = sorted(set(acc[(a, r)]) & set(acc[(b, r)]))
        mean, half = mean_ci([acc[(a, r)][s] - acc[(b, r)][s] for s in common])
        return mean, half, len(common)

    def above(t: tuple[float, float, int]) -> bool:
        return t[0] - (t[1] if np.isfinite(t[1]) else 0.0) > 0

    def fmt(t: tuple[float, float, int]) -> str:
        return f"{t[0]:+.3f} ± {t[1]:.3f} (n={t[2]})"

    checks = []
    for other, claim in (("lrc", "constant"), ("lrr", "random")):
        diffs = {r: diff("lrh", other, r) for r in rates}
        diffs = {r: t for r, t in diffs.items() if t is not None}
        for r, t in diffs.items():
            checks.append(Check(f"lrh_beats_{other}_at_{r}", f"LRH is more accurate than {claim} LR at "
                                f"{r} swaps/epoch", above(t), t[0], "paired mean difference − 95% CI > 0",
                                fmt(t)))
        if len(diffs) >= 2 and other == "lrc":
            top = max(diffs, key=lambda r: diffs[r][0])
            checks.append(Check("advantage_largest_at_highest_rate", "LRH's advantage over LRC is largest at "
                                "the highest shift rate", top == max(diffs), float(top),
                                "argmax over shift rates of mean(LRH − LRC) = the highest rate",
                                ", ".join(f"{r}: {t[0]:+.3f}" for r, t in diffs.items())))
    control = {r: diff("lrr", "lrc_matched", r) for r in rates}
    control = {r: t for r, t in control.items() if t is not None}
    if control:
        held = not any(above(t) for t in control.values())
        worst = max(control.values(), key=lambda t: t[0])
        checks.append(Check("lrr_gain_is_larger_eta", "control: LRR does not beat LRC run at LRR's mean η (LRR's "
                            "gain is a bigger η, not regulation)", held, worst[0],
                            "mean(LRR − LRC-matched) − 95% CI <= 0 at every shift rate",
                            ", ".join(f"{r}: {fmt(t)}" for r, t in control.items())))
    return checks
