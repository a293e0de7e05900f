"""Claims: a paper's headline statement as a check on a real model, with a verdict over seeds.

A :class:`Claim` names the paper, states the claim and its criterion (fixed before running, also in
docs/reproduce.md) and has a ``run`` callable returning a ClaimResult dict (see CLAIMS_INTERFACE in the docs).
This module holds the shared pieces: the dataclass, the 95% t confidence interval over seeds, and the verdict
helpers every claim uses, so that all claims decide the same way:

- "held" when every part of the criterion holds for the whole CI (not just the mean);
- "not held" when some part fails for the whole CI;
- "inconclusive" when a CI straddles a threshold, or a precondition fails (no data, the model cannot do the task).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE)
MIN_SEEDS = 3


@dataclass(frozen=True)
class Claim:
    """A paper's headline claim and how to check it.

    Parameters
    ----------
    name : str
        Claim name (``--claims`` key), e.g. ``sinks``.
    paper : str
        Source, e.g. ``arXiv:2410.10781``.
    statement : str
        The paper's claim in one sentence.
    criterion : str
        The threshold in words, stated before running (also in docs/reproduce.md).
    run : callable
        ``run(model, *, seeds, data, dtype, progress, **options) -> dict`` (a ClaimResult, see :func:`result`).
    needs_data : tuple of str
        Keys of ``data`` the claim needs; when one is missing the verdict is inconclusive without compute.
    """

    name: str
    paper: str
    statement: str
    criterion: str
    run: Callable[..., dict]
    needs_data: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"claim name {self.name!r} must be a non-empty identifier")
        for f in ("paper", "statement", "criterion"):
            if not getattr(self, f).strip():
                raise ValueError(f"claim {self.name}: {f} is empty")


# ------------------------------------------------------------------------------------------ statistics over seeds


def t_quantile(df: int, level: float = 0.95) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def ci95(values: Iterable[float]) -> list[float]:
    """95% Student-t confidence interval [lo, hi] of the mean of per-seed values (zero width when n = 1 or all
    values agree; NaN bounds when any value is not finite)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("ci95: no values")
    if not all(math.isfinite(v) for v in xs):
        return [math.nan, math.nan]
    mean = statistics.fmean(xs)
    if len(xs) == 1:
        return [mean, mean]
    half = t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return [mean - half, mean + half]


def summarize(per_seed: list[dict[str, Any]], keys: Iterable[str] | None = None) -> tuple[dict, dict]:
    """Means and 95% CIs over seeds of the numeric figures of per-seed rows (the ``seed`` column excluded)."""
    keys = list(keys) if keys is not None else [k for k, v in per_seed[0].items()
                                               if k != "seed" and isinstance(v, (int, float))]
    figures = {k: statistics.fmean(float(r[k]) for r in per_seed) for k in keys}
    return figures, {k: ci95(r[k] for r in per_seed) for k in keys}


# ------------------------------------------------------------------------------------------ verdicts


def at_least(ci: list[float], threshold: float) -> str:
    """Part "x >= threshold": held if the CI's lower end >= threshold, not held if its upper end < threshold."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    return HELD if lo >= threshold else NOT_HELD if hi < threshold else INCONCLUSIVE


def above(ci: list[float], threshold: float) -> str:
    """Part "x > threshold" (strict): held if lo > threshold, not held if hi <= threshold."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    return HELD if lo > threshold else NOT_HELD if hi <= threshold else INCONCLUSIVE


def at_most(ci: list[float], threshold: float) -> str:
    """Part "x <= threshold": held if the CI's upper end <= threshold, not held if its lower end > threshold."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return INCONCLUSIVE
    return HELD if hi <= threshold else NOT_HELD if lo > threshold else INCONCLUSIVE


def point(ok: bool) -> str:
    """A part decided on a single value (no CI)."""
    return HELD if ok else NOT_HELD


def combine(parts: Iterable[str]) -> str:
    """All parts held -> held; any part not held -> not held; otherwise inconclusive."""
    parts = list(parts)
    if not parts:
        return INCONCLUSIVE
    bad = [p for p in parts if p not in VERDICTS]
    if bad:
        raise ValueError(f"unknown verdicts {bad}; verdicts: {', '.join(VERDICTS)}")
    if NOT_HELD in parts:
        return NOT_HELD
    return HELD if all(p == HELD for p in parts) else INCONCLUSIVE


def fmt_ci(ci: list[float]) -> str:
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]"


# ------------------------------------------------------------------------------------------ results


def check_seeds(seeds: list[int]) -> None:
    if len(set(seeds)) < MIN_SEEDS or len(set(seeds)) != len(seeds):
        raise ValueError(f"claims need at least {MIN_SEEDS} distinct seeds (got {list(seeds)})")


def result(claim: Claim, model: str, *, verdict: str, reason: str, per_seed: list[dict[str, Any]],
           figures: dict[str, float] | None = None, ci: dict[str, list[float]] | None = None,
           effect: str | None = None, threshold: float | None = None, started: float | None = None,
           **extra: Any) -> dict[str, Any]:
    """A ClaimResult dict. ``figures``/``ci`` default to the means and CIs of the per-seed rows; ``effect`` names
    the deciding figure (the forest plot shows its CI against ``threshold``)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} not among {', '.join(VERDICTS)}")
    if per_seed and (figures is None or ci is None):
        f, c = summarize(per_seed)
        figures, ci = {**f, **(figures or {})}, {**c, **(ci or {})}
    out = {"claim": claim.name, "paper": claim.paper, "statement": claim.statement, "criterion": claim.criterion,
           "verdict": verdict, "reason": reason, "figures": figures or {}, "ci": ci or {},
           "per_seed": per_seed, "n_seeds": len(per_seed), "model": model,
           "wall_s": time.perf_counter() - started if started is not None else 0.0}
    if effect is not None:
        out["effect"], out["threshold"] = effect, threshold
    return {**out, **extra}


def missing_data(claim: Claim, data: dict[str, str]) -> str | None:
    """The reason a claim cannot run for lack of data ("no <key> dataset given"), or None."""
    missing = [k for k in claim.needs_data if not data.get(k)]
    return f"no {missing[0]} dataset given" if missing else None


def inconclusive(claim: Claim, model: str, reason: str, started: float | None = None, **extra: Any) -> dict:
    """An inconclusive result without figures (a precondition failed before any compute)."""
    return result(claim, model, verdict=INCONCLUSIVE, reason=reason, per_seed=[], figures={}, ci={},
                  started=started, **extra)
