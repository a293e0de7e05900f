"""Shared pieces of the study family: the ``Study`` base, claim checks, confidence intervals, seeded sampling.

A study is a frozen dataclass (its fields = one sweep point's configuration) whose public methods named in
``actions`` compute plain, JSON-friendly results; ``verdict(points)`` turns the results of a whole sweep into
:class:`Check` records, one per claim of the paper. Everything here is torch/numpy only.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from components.base import Component, ParamError

# two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (df > 30 uses the normal 1.96 + 2.4/df)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


@dataclass(frozen=True)
class Check:
    """One claim of a paper tested at this scale: did it hold, with the number it was judged on."""

    name: str
    claim: str
    passed: bool
    value: float
    criterion: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Study(Component):
    """Base of the ``study`` family: one configuration of a paper's experiment."""

    #: the methods a flow may call through the generic study task (each returns JSON-friendly data)
    actions: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def verdict(cls, points: list[dict[str, Any]]) -> list[Check]:
        """Checks of the paper's claims over the results of a sweep."""
        raise NotImplementedError


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table up to 30, then an expansion)."""
    if df < 1:
        return float("nan")
    return _T975[df - 1] if df <= len(_T975) else 1.95996 + 2.4 / df


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (t-interval; NaN half-width for one value)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    return float(x.mean()), float(t975(x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def generator(seed: int, *salt: int) -> torch.Generator:
    """A torch CPU generator seeded from (seed, *salt): independent streams per purpose."""
    mixed = np.random.SeedSequence([seed, *salt]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (small ops: 1 thread is fastest), restoring the old count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def subsample(values: Sequence[float], n: int = 200) -> list[list[float]]:
    """``[[step, mean of the window], ...]``: at most ``n`` points of a long curve (window means, not picks)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return []
    edges = np.linspace(0, v.size, min(n, v.size) + 1).astype(int)
    return [[int(hi - 1), float(v[lo:hi].mean())] for lo, hi in zip(edges[:-1], edges[1:])]


def check_positive_ints(name: str, values: Sequence[int], minimum: int = 1) -> None:
    """Raise ParamError naming ``name`` unless every value is an integer >= ``minimum`` (and there is one)."""
    if not values:
        raise ParamError(f"{name} must not be empty")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < minimum]
    if bad:
        raise ParamError(f"{name}: {bad} must be integers >= {minimum}")


class Adam:
    """Adam (β = (0.9, 0.999), ε = 1e-8, bias-corrected, as ``torch.optim.Adam``'s defaults) on a list of
    tensors. Written out because ``torch.optim`` imports torch._dynamo on first use (~6 s per process)."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps, self.t = list(params), lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** self.t))
            p.grad = None


@torch.no_grad()
def sgd_step(params: Sequence[torch.Tensor], lr: float) -> None:
    """Plain SGD, p ← p − lr·∇p (and the gradients cleared)."""
    for p in params:
        p.sub_(p.grad, alpha=lr)
        p.grad = None


def linear_regression_prompts(batch: int, n_ctx: int, d: int, gen: torch.Generator, *,
                              x_scale: torch.Tensor | None = None, w_std: float = 1.0,
                              noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts of in-context linear regression: ``n_ctx`` examples and one query per prompt.

    x ~ N(0, S Sᵀ) with S = ``x_scale`` (a (d,) vector means a diagonal S; None = identity), w ~ N(0, w_std² I),
    y = ⟨w, x⟩ + N(0, noise_std²). Returns x (B, n_ctx + 1, d), y (B, n_ctx + 1) with the query last, and w (B, d).
    """
    x = torch.randn(batch, n_ctx + 1, d, generator=gen)  # (B, n+1, d)
    if x_scale is not None:
        x = x * x_scale if x_scale.dim() == 1 else x @ x_scale.T  # (B, n+1, d)
    w = torch.randn(batch, d, generator=gen) * w_std  # (B, d)
    y = torch.einsum("bnd,bd->bn", x, w)  # (B, n+1)
    if noise_std:
        y = y + noise_std * torch.randn(batch, n_ctx + 1, generator=gen)
    return x, y, w
