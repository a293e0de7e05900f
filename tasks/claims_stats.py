"""Statistics and verdicts of the few-shot and steering claims (docs/reproduce-fewshot.md states the criteria).

- ``t_interval``: 95% two-sided Student-t interval of a mean over n >= 2 values (n - 1 degrees of freedom).
- ``verdict_from_ci``: "held" when the lower bound is > threshold, "not held" when the upper bound is <=
  threshold, "inconclusive" when the interval straddles it.
- ``usable``: a dataset counts when the baseline, averaged over seeds, is at least ``margin`` above chance (the
  majority-class share of the test rows): below that the model cannot do the task.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

#: two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.96 is within 2%)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

#: a dataset is usable when its mean baseline accuracy is at least this far above chance
CHANCE_MARGIN = 0.05


def t_quantile(df: int) -> float:
    """t_{0.975, df} (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% Student-t interval of the mean of ``values`` (at least 2 finite values)."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        raise ValueError(f"a confidence interval needs at least 2 values (seeds), got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"non-finite value in {vals}")
    m = mean(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    half = t_quantile(len(vals) - 1) * sd / math.sqrt(len(vals))
    return m - half, m + half


def verdict_from_ci(ci: tuple[float, float], threshold: float = 0.0) -> str:
    """held (lower > threshold), not held (upper <= threshold) or inconclusive (straddles)."""
    lo, hi = ci
    if lo > hi:
        raise ValueError(f"interval {ci} has lower > upper")
    if lo > threshold:
        return "held"
    if hi <= threshold:
        return "not held"
    return "inconclusive"


def chance_rate(labels: Sequence[str]) -> float:
    """Majority-class share of ``labels`` (what always answering the commonest label scores)."""
    if not labels:
        raise ValueError("chance rate of no labels")
    return Counter(labels).most_common(1)[0][1] / len(labels)


def usable(baseline_accs: Sequence[float], chance: float, margin: float = CHANCE_MARGIN) -> bool:
    """The model can do the task: mean baseline accuracy >= chance + margin."""
    return mean(baseline_accs) >= chance + margin - 1e-12
