"""L2-regularised logistic regression on standardised features, fitted with L-BFGS in float64 (torch).

Minimises  C * sum_i log(1 + exp(-s_i (w.x_i + b))) + ||w||^2 / 2  with s_i = 2 y_i - 1 (the objective of
scikit-learn's ``LogisticRegression(C=C)``; the intercept is not penalised), after standardising each feature to
zero mean and unit variance on the training data.
"""

from __future__ import annotations

import numpy as np
import torch


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0, max_iter: int = 500) -> dict[str, torch.Tensor]:
    """Fit on x (N, D), y (N,) in {0, 1}; returns tensors mean, std, weight (D,) and bias (1,)."""
    xt = torch.as_tensor(x, dtype=torch.float64)  # (N, D)
    mean, std = xt.mean(0), xt.std(0, unbiased=False).clamp_min(1e-12)  # (D,)
    z = (xt - mean) / std  # (N, D)
    s = torch.as_tensor(y, dtype=torch.float64) * 2 - 1  # (N,)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = c * torch.nn.functional.softplus(-s * (z @ w + b)).sum() + 0.5 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"mean": mean, "std": std, "weight": w.detach(), "bias": b.detach()}


def decision(x: np.ndarray, params: dict[str, torch.Tensor]) -> np.ndarray:
    """w.z + b for x (N, D): the log-odds of class 1."""
    z = (torch.as_tensor(x, dtype=torch.float64) - params["mean"]) / params["std"]  # (N, D)
    return (z @ params["weight"] + params["bias"]).numpy()
