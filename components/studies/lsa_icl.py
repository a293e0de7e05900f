"""Trained transformers learn linear models in-context: one linear self-attention (LSA) layer trained on
linear-regression prompts converges to one step of preconditioned gradient descent.

Prompts: x_i, x_q ~ N(0, Λ), w ~ N(0, I_d), y_i = ⟨w, x_i⟩ (no noise), N examples per prompt, embedded as
E = [[x_1 … x_N x_q], [y_1 … y_N 0]] ∈ R^{(d+1)×(N+1)}. The layer is f(E) = E + W^{PV} E (Eᵀ W^{KQ} E) / M
(M = the prompt's number of examples) and predicts ŷ = f(E)_{d+1, N+1}; the loss is ½ E(ŷ − ⟨w, x_q⟩)².
Initialisation: W^{PV}(0) = σ[[0, 0], [0, 1]], W^{KQ}(0) = σ[[ΘΘᵀ, 0], [0, 0]] with ‖ΘΘᵀΓ‖_F = 1. Theory:

    only u = W^{PV}_{d+1,d+1} and U₁₁ = W^{KQ}_{1:d,1:d} move;   u·U₁₁ → Γ⁻¹,   Γ = (1 + 1/N) Λ + tr(Λ)/N · I
    ŷ = x_qᵀ Γ⁻¹ (1/M) Σ y_i x_i
    error(M) = E(ŷ − y_q)² = (1/M)[tr(Γ⁻²Λ'²Λ_q) + tr(Γ⁻²Λ'Λ_q) tr Λ'] + tr[(Γ⁻¹Λ' − I)²Λ_q]

with Λ' the covariance of the prompt's x_i and Λ_q that of x_q (both Λ in distribution; for Λ = I it is
d·c²(d+1)/M + d(1 − c)², c = 1/(1 + (d+1)/N)). Shifts: task (w uniform on the sphere of radius √d) and query
(x_q scaled) leave the relative error E(ŷ − y_q)²/E y_q² unchanged; covariate shift (prompt x_i scaled by s,
Λ' = s²Λ) does not.

Based on Zhang, Frei, Bartlett, "Trained Transformers Learn Linear Models In-Context" (JMLR 25(49), 2024;
arXiv 2306.09927). No official code; closest public code: https://github.com/yedizhang/linattn-icl (``train.py``,
same token format). The error formula is derived for this reproduction (attnflow DYNAMICS.md §1) and matches
simulation.

Deviations from the paper: gradient flow on the population loss is approximated by SGD on fresh prompts
(``batch`` per step) and the reported weights are the average of the last ``average_last`` fraction of
iterates, which removes most of the SGD noise that gradient flow does not have. The covariance ``diagonal`` is
this reproduction's choice (eigenvalues geometric between 1/√spread and √spread); the paper's random-covariance
experiments and its GPT-2 comparison are not reproduced.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from components.base import ParamError, check_range
from components.studies._utils import (Check, Study, generator, linear_regression_prompts, one_thread, sgd_step,
                                      subsample)
from registry import register

SHIFT_KINDS = ("none", "task", "query", "covariate")


def parse_shift(text: str) -> tuple[str, float]:
    """``"covariate:2"`` -> ("covariate", 2.0); ``"task"`` / ``"none"`` -> (kind, 1.0)."""
    kind, _, scale = str(text).strip().partition(":")
    if kind not in SHIFT_KINDS:
        raise ParamError(f"shift {text!r}: kind must be one of {', '.join(SHIFT_KINDS)} (e.g. covariate:2)")
    if kind in ("none", "task"):
        if scale:
            raise ParamError(f"shift {text!r}: {kind} takes no scale")
        return kind, 1.0
    try:
        value = float(scale)
    except ValueError:
        raise ParamError(f"shift {text!r}: expected {kind}:<scale>, e.g. {kind}:2") from None
    if not value > 0:
        raise ParamError(f"shift {text!r}: the scale must be > 0")
    return kind, value


@register("lsa_icl", version="1.0.0", family="study", paper="arXiv:2306.09927",
          summary="One linear self-attention layer trained on regression prompts: u·U11 -> Gamma^-1, shifts.")
@dataclass(frozen=True)
class LSAICL(Study):
    """Linear self-attention trained on in-context linear regression (Zhang, Frei, Bartlett).

    Parameters
    ----------
    d : int
        Input dimension. Default 5.
    n_prompt : int
        Examples per training prompt, N. Default 20.
    covariance : str
        ``identity`` (Λ = I) or ``diagonal`` (Λ = diag of eigenvalues geometric in [1/√spread, √spread]).
        Default ``identity``.
    spread : float
        Condition number of the ``diagonal`` covariance (>= 1). Default 2.0.
    sigma : float
        Initialisation scale σ. Default 0.1.
    lr : float
        SGD learning rate. Default 0.05.
    steps : int
        SGD steps. Default 1000.
    batch : int
        Fresh prompts per step. Default 4096.
    average_last : float
        Fraction of the final iterates averaged into the reported weights (0 = last iterate). Default 0.25.
    seed : int
        Seed of initialisation and data. Default 0.
    """

    d: int = 5
    n_prompt: int = 20
    covariance: Literal["identity", "diagonal"] = "identity"
    spread: float = 2.0
    sigma: float = 0.1
    lr: float = 0.05
    steps: int = 1000
    batch: int = 4096
    average_last: float = 0.25
    seed: int = 0

    actions: ClassVar[tuple[str, ...]] = ("train", "evaluate")
    example: ClassVar[dict[str, str]] = {"d": "3", "n_prompt": "10", "steps": "50", "batch": "256"}

    def __post_init__(self) -> None:
        check_range("lsa_icl.d", self.d, 1, 64)
        check_range("lsa_icl.n_prompt", self.n_prompt, 1, 10_000)
        check_range("lsa_icl.spread", self.spread, 1.0, 1e6)
        check_range("lsa_icl.sigma", self.sigma, 0.0, None, lo_open=True)
        check_range("lsa_icl.lr", self.lr, 0.0, None, lo_open=True)
        check_range("lsa_icl.steps", self.steps, 1, 10_000_000)
        check_range("lsa_icl.batch", self.batch, 1, 1_000_000)
        check_range("lsa_icl.average_last", self.average_last, 0.0, 1.0, hi_open=True)

    # -- theory ---------------------------------------------------------------------------------------------
    def eigenvalues(self) -> torch.Tensor:
        """Diagonal of Λ, (d,)."""
        if self.covariance == "identity":
            return torch.ones(self.d, dtype=torch.float64)
        half = 0.5 * math.log(self.spread)
        return torch.exp(torch.linspace(-half, half, self.d, dtype=torch.float64))

    def gamma(self) -> torch.Tensor:
        """Γ = (1 + 1/N) Λ + tr(Λ)/N · I, (d, d)."""
        lam = self.eigenvalues()
        return torch.diag((1 + 1 / self.n_prompt) * lam + lam.sum() / self.n_prompt)

    def theory_error(self, m: int, prompt_scale: float = 1.0, query_scale: float = 1.0) -> float:
        """E(ŷ − y_q)² of the global minimum on prompts of length m (x_i scaled by prompt_scale, x_q by
        query_scale): (1/m)[tr(Γ⁻²Λ'²Λ_q) + tr(Γ⁻²Λ'Λ_q) tr Λ'] + tr[(Γ⁻¹Λ' − I)²Λ_q]."""
        lam = self.eigenvalues()
        g = torch.diagonal(self.gamma())
        lp, lq = prompt_scale ** 2 * lam, query_scale ** 2 * lam
        finite = ((lp ** 2 * lq / g ** 2).sum() + (lp * lq / g ** 2).sum() * lp.sum()) / m
        return float(finite + ((lp / g - 1) ** 2 * lq).sum())

    def theory_relative_error(self, shift: str, m: int) -> float:
        kind, s = parse_shift(shift)
        prompt, query = (s, 1.0) if kind == "covariate" else (1.0, s) if kind == "query" else (1.0, 1.0)
        return self.theory_error(m, prompt, query) / (query ** 2 * float(self.eigenvalues().sum()))

    # -- model ----------------------------------------------------------------------------------------------
    @staticmethod
    def predict(w_pv: torch.Tensor, w_kq: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ŷ = e_{d+1}ᵀ W^{PV} (E Eᵀ / M) W^{KQ} e_q for prompts x (B, M+1, d), y (B, M+1) with the query last."""
        m = x.shape[1] - 1
        y_in = torch.cat([y[:, :-1], torch.zeros_like(y[:, -1:])], dim=1)  # (B, M+1): query label hidden
        e = torch.cat([x, y_in.unsqueeze(-1)], dim=-1)  # (B, M+1, D) tokens as rows
        v = e @ w_pv[-1]  # (B, M+1): last row of W^{PV} applied to each token
        kq = e[:, -1] @ w_kq.T  # (B, D) = W^{KQ} e_q
        s = torch.einsum("bmd,bd->bm", e, kq)  # (B, M+1) = e_iᵀ W^{KQ} e_q
        return (v * s).sum(dim=1) / m  # (B,)

    def init_weights(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        d, dim = self.d, self.d + 1
        theta = torch.randn(d, d, generator=gen, dtype=torch.float64)
        tt = theta @ theta.T
        tt = tt / torch.linalg.matrix_norm(tt @ self.gamma())  # ‖ΘΘᵀΓ‖_F = 1
        w_pv = torch.zeros(dim, dim)
        w_pv[d, d] = self.sigma
        w_kq = torch.zeros(dim, dim)
        w_kq[:d, :d] = (self.sigma * tt).float()
        return w_pv, w_kq

    def x_scale(self) -> torch.Tensor:
        return self.eigenvalues().sqrt().float()

    # -- actions --------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """SGD on fresh prompts; returns the (tail-averaged) weights, the loss curve and the gap curve."""
        with one_thread():
            start = time.perf_counter()
            w_pv, w_kq = self.init_weights(generator(self.seed, 1))
            w_pv.requires_grad_(True)
            w_kq.requires_grad_(True)
            gen, scale = generator(self.seed, 2), self.x_scale()
            gamma_inv = torch.linalg.inv(self.gamma()).float()
            tail = max(1, round(self.average_last * self.steps)) if self.average_last > 0 else 1
            avg_pv, avg_kq = torch.zeros_like(w_pv), torch.zeros_like(w_kq)
            losses, gaps = [], []
            for step in range(self.steps):
                x, y, _ = linear_regression_prompts(self.batch, self.n_prompt, self.d, gen, x_scale=scale)
                loss = 0.5 * (self.predict(w_pv, w_kq, x, y) - y[:, -1]).pow(2).mean()
                loss.backward()
                sgd_step([w_pv, w_kq], self.lr)
                losses.append(loss.item())
                if step >= self.steps - tail:
                    avg_pv += w_pv.detach() / tail
                    avg_kq += w_kq.detach() / tail
                if step % max(1, self.steps // 100) == 0 or step == self.steps - 1:
                    gaps.append([step, _gap(w_pv.detach(), w_kq.detach(), gamma_inv)])
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"lsa_icl diverged (loss {losses[-1]}); lower lr (now {self.lr})")
        return {"w_pv": avg_pv.tolist(), "w_kq": avg_kq.tolist(), "loss": subsample(losses), "gap": gaps,
                "final_loss": sum(losses[-tail:]) / tail, "seconds": time.perf_counter() - start}

    def evaluate(self, trained: dict[str, Any], lengths: list[int], shifts: list[str], n_test: int = 20000,
                 seed: int = 1) -> dict[str, Any]:
        """Convergence of u·U₁₁ to Γ⁻¹, error(M) against theory and OLS, relative errors under shifts, for the
        weights of a ``train`` result."""
        pv, kq = torch.tensor(trained["w_pv"]), torch.tensor(trained["w_kq"])
        d = self.d
        gamma_inv = torch.linalg.inv(self.gamma()).float()
        uu = pv[d, d] * kq[:d, :d]  # (d, d)
        rest_pv = pv.clone()
        rest_pv[d, d] = 0.0
        rest_kq = kq.clone()
        rest_kq[:d, :d] = 0.0
        out: dict[str, Any] = {
            "u_U11": uu.tolist(), "gamma_inv": gamma_inv.tolist(), "gap": _gap(pv, kq, gamma_inv),
            "other_pv": float(rest_pv.abs().max() / pv[d, d].abs()),
            "other_kq": float(rest_kq.abs().max() / kq[:d, :d].abs().max()),
        }
        with one_thread(), torch.no_grad():
            gen = generator(self.seed, 3, seed)
            out["lengths"] = [{"m": m, "error": self._mse(pv, kq, m, n_test, gen)[0],
                               "theory": self.theory_error(m), "ols": self._ols(m, n_test, gen)} for m in lengths]
            grid = torch.logspace(math.log10(min(lengths)), math.log10(max(lengths)), 60).tolist()
            out["theory_curve"] = [[m, self.theory_error(m)] for m in grid]
            out["shifts"] = []
            for shift in ["none", *[s for s in shifts if s != "none"]]:
                mse, y2 = self._mse(pv, kq, self.n_prompt, n_test, gen, shift)
                out["shifts"].append({"shift": shift, "relative_error": mse / y2, "mse": mse,
                                      "theory": self.theory_relative_error(shift, self.n_prompt)})
        return out

    def _mse(self, pv: torch.Tensor, kq: torch.Tensor, m: int, n: int, gen: torch.Generator,
             shift: str = "none") -> tuple[float, float]:
        kind, s = parse_shift(shift)
        err = y2 = 0.0
        for lo in range(0, n, 4096):
            b = min(4096, n - lo)
            x, _, w = linear_regression_prompts(b, m, self.d, gen, x_scale=self.x_scale())
            if kind == "task":  # w uniform on the sphere of radius √d: same E wwᵀ, another distribution
                w = w / w.norm(dim=1, keepdim=True) * math.sqrt(self.d)
            elif kind == "query":
                x = torch.cat([x[:, :-1], s * x[:, -1:]], dim=1)
            elif kind == "covariate":
                x = torch.cat([s * x[:, :-1], x[:, -1:]], dim=1)
            y = torch.einsum("bnd,bd->bn", x, w)  # (B, M+1)
            err += float((self.predict(pv, kq, x, y) - y[:, -1]).pow(2).sum())
            y2 += float(y[:, -1].pow(2).sum())
        return err / n, y2 / n

    def _ols(self, m: int, n: int, gen: torch.Generator) -> float:
        """Error of the minimum-norm least-squares fit on the same kind of prompts (0 once m >= d)."""
        x, y, w = linear_regression_prompts(min(n, 4096), m, self.d, gen, x_scale=self.x_scale())
        w_hat = (torch.linalg.pinv(x[:, :-1].double()) @ y[:, :-1, None].double()).squeeze(-1)  # (B, d)
        return float(torch.einsum("bd,bd->b", x[:, -1].double(), w_hat - w.double()).pow(2).mean())

    # -- claims (components/studies/_claims.py: outside the code fingerprint, so editing a check reuses the
    # cached sweep points) --------------------------------------------------------------------------------------
    @classmethod
    def verdict(cls, points: list[dict[str, Any]]) -> list[Check]:
        """points: [{"label", "params", "train", "eval"}]; every claim must hold for every configuration."""
        from components.studies import _claims

        return _claims.lsa_icl(points)

def _gap(w_pv: torch.Tensor, w_kq: torch.Tensor, gamma_inv: torch.Tensor) -> float:
    d = gamma_inv.shape[0]
    uu = w_pv[d, d] * w_kq[:d, :d]
    return float(torch.linalg.matrix_norm(uu - gamma_inv) / torch.linalg.matrix_norm(gamma_inv))
