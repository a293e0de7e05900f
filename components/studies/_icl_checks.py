"""Circuit patterns, regression baselines and the claim checks of the multi-head softmax ICL study
(``softmax_icl``). Kept apart so the study file stays a readable model + training loop."""

from __future__ import annotations

from typing import Any

import torch

from components.studies._utils import Check

ACTIVE = 0.1  # a head is active when |μ_h| >= ACTIVE · max_h |μ_h|


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def head_patterns(study: Any, kq: torch.Tensor, ov: torch.Tensor) -> list[dict[str, Any]]:
    """Per head: ω (mean of the x-block diagonal of KQ), its spread, the largest off-diagonal and y-row/column
    entries, μ (the OV entry reading y_k for output k), the largest x-part of OV, and the cosine of the
    sign-normalised x-block with I and with Σ⁻¹."""
    d = study.d
    sigma_inv = torch.linalg.inv(study.covariance())
    rows = []
    for h in range(kq.shape[0]):
        xb = kq[h, :d, :d]  # (d, d)
        diag = torch.diagonal(xb)
        off = (xb - torch.diag(diag)).abs().max() if d > 1 else torch.tensor(0.0)
        omega = float(diag.mean())
        signed = xb * (1.0 if omega >= 0 else -1.0)
        mu = [float(ov[h, k, d + k]) for k in range(ov.shape[1])]
        cross = [float(ov[h, k, d + j]) for k in range(ov.shape[1]) for j in range(ov.shape[1]) if j != k]
        rows.append({
            "head": h, "omega": omega, "spread": float(diag.std()) if d > 1 else 0.0, "offdiag": float(off),
            "y_entries": float(max(kq[h, d:, :].abs().max(), kq[h, :, d:].abs().max())),
            "mu": mu, "ov_x": float(ov[h, :, :d].abs().max()), "ov_cross": max(map(abs, cross), default=0.0),
            "cos_identity": _cos(signed, torch.eye(d)), "cos_sigma_inv": _cos(signed, sigma_inv),
        })
    return rows


def _features(tokens: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1/L) Σ y_l x_lᵀ x_q and (1/L) Σ y_l (x_l − x̄)ᵀ x_q, each (B,)."""
    x, y, xq = tokens[:, :-1, :d], tokens[:, :-1, d], tokens[:, -1, :d]  # (B, L, d), (B, L), (B, d)
    gd = torch.einsum("bl,bld,bd->b", y, x, xq) / x.shape[1]
    centred = x - x.mean(dim=1, keepdim=True)  # (B, L, d)
    return gd, torch.einsum("bl,bld,bd->b", y, centred, xq) / x.shape[1]


def fit_steps(tokens: torch.Tensor, target: torch.Tensor, d: int) -> dict[str, float]:
    """The optimal step η of GD and debiased GD (least squares of y_q on the one-step feature)."""
    y = target[:, 0]
    return {name: float((f * y).sum() / (f * f).sum()) for name, f in zip(("gd", "dgd"), _features(tokens, d))}


def baselines(tokens: torch.Tensor, d: int, noise_var: float, steps: dict[str, float]) -> dict[str, torch.Tensor]:
    """Predictions (B,) of GD and debiased GD with fitted steps, and of the Bayes ridge with λ = σ²d."""
    if not steps:
        return {}
    gd, dgd = _features(tokens, d)
    x, y, xq = tokens[:, :-1, :d].double(), tokens[:, :-1, d].double(), tokens[:, -1, :d].double()
    gram = x.transpose(1, 2) @ x + noise_var * d * torch.eye(d, dtype=torch.float64)  # (B, d, d)
    beta = torch.linalg.solve(gram, (x.transpose(1, 2) @ y.unsqueeze(-1))).squeeze(-1)  # (B, d)
    return {"gd": steps["gd"] * gd, "dgd": steps["dgd"] * dgd, "ridge": (beta * xq).sum(-1).float()}


# -- claims -------------------------------------------------------------------------------------------------

def _active(heads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    top = max(abs(h["mu"][0]) for h in heads)
    return [h for h in heads if abs(h["mu"][0]) >= ACTIVE * top]


def _mse(point: dict[str, Any], length: int | None = None, key: str = "model") -> float:
    rows = point["eval"]["lengths"]
    length = point["params"]["context"] if length is None else length
    return next((r[key] for r in rows if r["length"] == length), float("nan"))


def verdict(points: list[dict[str, Any]]) -> list[Check]:
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

