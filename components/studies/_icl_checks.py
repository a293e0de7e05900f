"""Circuit patterns, regression baselines and the claim checks of the multi-head softmax ICL study
(``softmax_icl``). Kept apart so the study file stays a readable model + training loop."""

from __future__ import annotations

from typing import Any

import torch



def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def head_patterns(study: Any, kq: torch.Tensor, ov: torch.Tensor) -> list[dict[str, Any]]:
    """Per head: ω (mean of the x-block diagonal of KQ), its spread, the largest off-diagonal and y-row
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
            "y_row": float(kq[h, d:, :d].abs().max()),  # context labels x query features (the query's own
            # label entries, column d on, multiply zeros and are never trained)
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
