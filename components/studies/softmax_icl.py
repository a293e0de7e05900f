"""In-context linear regression demystified: one layer of multi-head softmax attention trained on regression
prompts learns diagonal, homogeneous KQ circuits and last-entry-only OV circuits, and acts as debiased GD.

Prompts: x_l, x_q ~ N(0, Σ) (Σ = I, or Σ_ij = ρ^|i−j|), β ~ N(0, I/d), y = βᵀx + ε, Var ε = σ²; tokens
z_l = [x_l; y_l] ∈ R^{d+1}, query z_q = [x_q; 0]. The model (per head Q, K, V ∈ R^{(d+1)×(d+1)}, O ∈ R^{1×(d+1)}):

    TF(Z, z_q) = Σ_h O_h V_h Z · softmax(Zᵀ K_hᵀ Q_h z_q / √(d+1))        (the query attends to the L examples)
    KQ_h = K_hᵀ Q_h / √(d+1),   OV_h = O_h V_h

Claims: the x-block of KQ_h becomes ω_h·I with ω of both signs across heads; OV_h has only its last entry μ_h
non-zero and Σ_h μ_h ≈ 0; two heads then act as debiased GD, ŷ = (η/L) Σ y_l (x_l − x̄)ᵀ x_q, and beat one head;
extra heads (H > 2) become dummies; softmax attention generalises to longer prompts while linear attention
(scores / L_train instead of the softmax) does not; anisotropic Σ gives preconditioned GD (KQ x-block ∝ Σ⁻¹).
Baselines, each with its step η fitted in closed form on separate prompts: GD (η/L) Σ y_l x_lᵀ x_q, debiased GD,
and the Bayes posterior mean (ridge with λ = σ²d).
Multi-task variant (``tasks=multi``): two outputs, y₁ = β₁ᵀx_{1:dx1}, y₂ = β₂ᵀx_{d−dx2+1:d}, β_k ~ N(0, I), noise
std σ√dx_k on the examples, tokens [x; y₁; y₂]; heads then split or superpose the two tasks.

Based on He, Pan, Chen, Yang, "In-Context Linear Regression Demystified" (ICML 2025; arXiv 2503.12734).
Reference code: https://github.com/XintianPan/ICL_linear (``src/models.py`` MultiHeadAttention,
``utils/data_utils.py`` LinearReg / MultiTaskLinearReg / generate_covariance_matrix, ``utils/funcs.py``
TFEst.GDEst / DGDEst / RidgeEst, ``icl_linear.ipynb``, ``icl_linear_multitask.ipynb``).

Deviations from the reference code: 6,000 Adam steps instead of 500,001 (the patterns appear within ~3k steps;
dummy heads for H = 4 do not settle this early); the heads are batched tensors rather than one ``nn.Linear``
per projection (same default ``nn.Linear`` uniform initialisation bounds); the linear-attention variant (not in
the notebook) divides the scores by the training length; the step of GD / debiased GD is fitted per test length.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from components.base import ParamError, check_range
from components.studies import _icl_checks
from components.studies._utils import (Adam, Check, Study, generator, linear_regression_prompts, one_thread,
                                      subsample)
from registry import register


@register("softmax_icl", version="1.0.0", family="study", paper="arXiv:2503.12734",
          summary="Multi-head softmax attention on regression prompts: KQ = omega*I, OV last-entry, debiased GD.")
@dataclass(frozen=True)
class SoftmaxICL(Study):
    """One layer of multi-head softmax (or linear) attention trained on in-context linear regression.

    Parameters
    ----------
    d : int
        Input dimension. Default 5.
    context : int
        Training prompt length L (examples before the query). Default 40.
    noise_var : float
        Label noise variance σ². Default 0.1.
    heads : int
        Number of heads H. Default 2.
    attention : str
        ``softmax`` or ``linear`` (scores / L_train, no normalisation). Default ``softmax``.
    rho : float
        Covariate correlation ρ of Σ_ij = ρ^|i−j| (0 = isotropic). Default 0.0.
    tasks : str
        ``single`` or ``multi`` (two regression tasks on overlapping coordinates). Default ``single``.
    dx1 : int
        Coordinates of task 1 (multi-task only). Default 3.
    dx2 : int
        Coordinates of task 2 (multi-task only). Default 4.
    steps : int
        Adam steps. Default 6000.
    lr : float
        Adam learning rate. Default 0.001.
    batch : int
        Fresh prompts per step. Default 256.
    snapshot_every : int
        Steps between recorded (ω_h, μ_h) snapshots. Default 100.
    seed : int
        Seed of initialisation and data. Default 0.
    """

    d: int = 5
    context: int = 40
    noise_var: float = 0.1
    heads: int = 2
    attention: Literal["softmax", "linear"] = "softmax"
    rho: float = 0.0
    tasks: Literal["single", "multi"] = "single"
    dx1: int = 3
    dx2: int = 4
    steps: int = 6000
    lr: float = 1e-3
    batch: int = 256
    snapshot_every: int = 100
    seed: int = 0

    actions: ClassVar[tuple[str, ...]] = ("train", "evaluate")
    example: ClassVar[dict[str, str]] = {"heads": "2", "context": "10", "steps": "20", "batch": "32"}

    def __post_init__(self) -> None:
        check_range("softmax_icl.d", self.d, 1, 64)
        check_range("softmax_icl.context", self.context, 1, 100_000)
        check_range("softmax_icl.noise_var", self.noise_var, 0.0, None)
        check_range("softmax_icl.heads", self.heads, 1, 64)
        check_range("softmax_icl.rho", self.rho, -1.0, 1.0, lo_open=True, hi_open=True)
        check_range("softmax_icl.steps", self.steps, 1, 10_000_000)
        check_range("softmax_icl.lr", self.lr, 0.0, None, lo_open=True)
        check_range("softmax_icl.batch", self.batch, 1, 1_000_000)
        check_range("softmax_icl.snapshot_every", self.snapshot_every, 1, None)
        if self.tasks == "multi":
            for name, v in (("dx1", self.dx1), ("dx2", self.dx2)):
                check_range(f"softmax_icl.{name}", v, 1, self.d)
            if self.rho != 0.0:
                raise ParamError("softmax_icl: rho applies to single-task prompts only (tasks=single)")

    # -- data -----------------------------------------------------------------------------------------------
    @property
    def n_out(self) -> int:
        return 2 if self.tasks == "multi" else 1

    @property
    def width(self) -> int:
        """Token width E = d + number of outputs."""
        return self.d + self.n_out

    def covariance(self) -> torch.Tensor:
        """Σ_ij = ρ^|i−j|, (d, d) (``generate_covariance_matrix`` of the reference)."""
        i = torch.arange(self.d, dtype=torch.float64)
        return (self.rho ** (i[:, None] - i[None, :]).abs()).float() if self.rho else torch.eye(self.d)

    def sample(self, batch: int, n_ctx: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens Z (B, n_ctx, E) and query targets (B, n_out); the query token is [x_q; 0] at Z's end."""
        sd = math.sqrt(self.noise_var)
        if self.tasks == "single":
            scale = torch.linalg.cholesky(self.covariance()) if self.rho else None
            x, y, _ = linear_regression_prompts(batch, n_ctx, self.d, gen, x_scale=scale,
                                                w_std=1 / math.sqrt(self.d), noise_std=sd)
            ys = y.unsqueeze(-1)  # (B, n+1, 1)
        else:  # MultiTaskLinearReg: noise sqrt(dx_k)·σ on the examples, none on the query
            x = torch.randn(batch, n_ctx + 1, self.d, generator=gen)  # (B, n+1, d)
            cols = []
            for dims in (slice(0, self.dx1), slice(self.d - self.dx2, self.d)):
                n_dims = dims.stop - dims.start
                beta = torch.randn(batch, n_dims, generator=gen)  # (B, dx)
                y = torch.einsum("bnd,bd->bn", x[:, :, dims], beta)  # (B, n+1)
                noise = sd * math.sqrt(n_dims) * torch.randn(batch, n_ctx + 1, generator=gen)
                noise[:, -1] = 0.0
                cols.append(y + noise)
            ys = torch.stack(cols, dim=-1)  # (B, n+1, 2)
        tokens = torch.cat([x, ys], dim=-1)  # (B, n+1, E)
        tokens[:, -1, self.d:] = 0.0  # the query's labels are hidden
        return tokens, ys[:, -1]

    # -- model ----------------------------------------------------------------------------------------------
    def init_params(self, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Default ``nn.Linear`` initialisation: U(−1/√fan_in, 1/√fan_in)."""
        h, e = self.heads, self.width

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            return ((torch.rand(*shape, generator=gen) * 2 - 1) / math.sqrt(fan_in)).requires_grad_(True)

        return {"q": uniform(h, e, e, fan_in=e), "k": uniform(h, e, e, fan_in=e), "v": uniform(h, e, e, fan_in=e),
                "o": uniform(h, self.n_out, e, fan_in=e * h)}

    def forward(self, p: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        """Prediction (B, n_out) for tokens (B, L+1, E) whose last token is the query."""
        z, zq = tokens[:, :-1], tokens[:, -1]  # (B, L, E), (B, E)
        q = torch.einsum("hij,bj->bhi", p["q"], zq)  # (B, H, E)
        kq = torch.einsum("hij,bhi->bhj", p["k"], q)  # (B, H, E) = K_hᵀ Q_h z_q
        scores = torch.einsum("blj,bhj->bhl", z, kq) / math.sqrt(self.width)  # (B, H, L)
        attn = scores.softmax(dim=-1) if self.attention == "softmax" else scores / self.context  # (B, H, L)
        mixed = torch.einsum("bhl,blj->bhj", attn, z)  # (B, H, E)
        ov = torch.einsum("hoi,hij->hoj", p["o"], p["v"])  # (H, n_out, E)
        return torch.einsum("bhj,hoj->bo", mixed, ov)  # (B, n_out)

    def circuits(self, p: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """KQ_h = K_hᵀ Q_h / √E, (H, E, E), and OV_h = O_h V_h, (H, n_out, E)."""
        q, k, v, o = (torch.as_tensor(p[n], dtype=torch.float32) for n in ("q", "k", "v", "o"))
        return torch.einsum("hki,hkj->hij", k, q) / math.sqrt(self.width), torch.einsum("hoi,hij->hoj", o, v)

    def omega_mu(self, p: dict[str, Any]) -> tuple[list[float], list[float]]:
        kq, ov = self.circuits(p)
        omega = torch.diagonal(kq[:, : self.d, : self.d], dim1=1, dim2=2).mean(dim=1)  # (H,)
        return omega.tolist(), ov[:, 0, self.d].tolist()

    # -- actions --------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Adam on fresh prompts; returns the weights, the loss curve and (ω_h, μ_h) snapshots."""
        with one_thread():
            start = time.perf_counter()
            params = self.init_params(generator(self.seed, 1))
            opt = Adam(list(params.values()), lr=self.lr)
            gen = generator(self.seed, 2)
            losses, snapshots = [], []
            for step in range(self.steps):
                tokens, target = self.sample(self.batch, self.context, gen)
                loss = (self.forward(params, tokens) - target).pow(2).mean()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                if step % self.snapshot_every == 0 or step == self.steps - 1:
                    with torch.no_grad():
                        omega, mu = self.omega_mu(params)
                    snapshots.append({"step": step, "omega": omega, "mu": mu})
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"softmax_icl diverged (loss {losses[-1]}); lower lr (now {self.lr})")
        tail = max(1, self.steps // 20)
        return {"params": {k: v.detach().tolist() for k, v in params.items()}, "loss": subsample(losses),
                "final_loss": sum(losses[-tail:]) / tail, "snapshots": snapshots,
                "seconds": time.perf_counter() - start}

    def evaluate(self, trained: dict[str, Any], lengths: list[int], n_test: int = 10000,
                 seed: int = 1) -> dict[str, Any]:
        """Circuit patterns, and test MSE by prompt length against GD, debiased GD and ridge, for the weights
        of a ``train`` result."""
        p = {k: torch.tensor(v) for k, v in trained["params"].items()}
        out: dict[str, Any] = {"heads": _icl_checks.head_patterns(self, *self.circuits(p))}
        kq, ov = self.circuits(p)
        out["kq"], out["ov"] = kq.tolist(), ov.tolist()
        rows = []
        with one_thread(), torch.no_grad():
            for m in lengths:
                gen = generator(self.seed, 3, seed, m)
                row: dict[str, Any] = {"length": m, "model": 0.0}
                base = {"gd": 0.0, "dgd": 0.0, "ridge": 0.0} if self.tasks == "single" else {}
                fit = _icl_checks.fit_steps(*self.sample(min(n_test, 4096), m, gen), self.d) if base else {}
                for lo in range(0, n_test, 1000):
                    tokens, target = self.sample(min(1000, n_test - lo), m, gen)
                    row["model"] += float((self.forward(p, tokens) - target).pow(2).sum()) / self.n_out
                    for name, pred in _icl_checks.baselines(tokens, self.d, self.noise_var, fit).items():
                        base[name] += float((pred - target[:, 0]).pow(2).sum())
                rows.append({**row, **base})
                for k in [k for k in rows[-1] if k != "length"]:
                    rows[-1][k] /= n_test
        out["lengths"] = rows
        return out

    # -- claims (components/studies/_claims.py: outside the code fingerprint) ---------------------------------
    @classmethod
    def verdict(cls, points: list[dict[str, Any]]) -> list[Check]:
        """points: [{"label", "params", "train", "eval"}] of one sweep (configs missing from it are skipped)."""
        from components.studies import _claims

        return _claims.softmax_icl(points)
