"""Correctness labels and how well an uncertainty score predicts errors: AUROC, AUPRC, bootstrap CIs.

- Correct (SAR's evaluation): the greedy ("most likely") answer scores at least ``threshold`` against any reference,
  ROUGE-L F (default, threshold 0.5) or exact match after SQuAD normalisation. The reference code counts
  ROUGE-L > threshold (strictly); attnflow uses >= (the issue's definition), which differs only at exactly 0.5.
- AUROC = P(U_error > U_correct) + P(tie) / 2 (Mann-Whitney U, average ranks for ties) with errors as the positive
  class: ``roc_auc_score(1 - correct, U)`` of the reference.
- AUPRC = average precision: sum over distinct thresholds of (R_n - R_{n-1}) P_n, errors positive (sklearn's
  ``average_precision_score``, ties at one threshold taken together).
- Bootstrap: questions resampled with replacement ``n_boot`` times (seeded); the CI is the 2.5 / 97.5 percentiles
  of the metric over resamples that hold both classes.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from components.uncertainty import _rouge


def correct(prediction: str, references: Sequence[str], metric: str = "rouge_l", threshold: float = 0.5) -> bool:
    """Whether ``prediction`` matches any reference (``metric``: ``rouge_l`` or ``exact_match``)."""
    if metric == "rouge_l":
        return max((_rouge.rouge_l(prediction, r) for r in references), default=0.0) >= threshold
    if metric == "exact_match":
        return any(_rouge.exact_match(prediction, r) for r in references)
    raise ValueError(f"correctness metric must be 'rouge_l' or 'exact_match', not {metric!r}")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the positive class (NaN with one class only)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)  # 1-based average ranks
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auprc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of ``scores`` for the positive class (NaN without positives)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive).astype(bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], scores: np.ndarray, positive: np.ndarray,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``metric(scores, positive)`` over question resamples (NaN, NaN when none is usable)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive).astype(bool)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(s), len(s))
        if y[idx].all() or not y[idx].any():
            continue
        vals.append(metric(s[idx], y[idx]))
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def summary(scores: dict[str, np.ndarray], errors: np.ndarray, n_boot: int = 1000, seed: int = 0
            ) -> list[dict[str, float | str]]:
    """Per method: AUROC and AUPRC of its score for predicting errors, each with a bootstrap CI."""
    rows: list[dict[str, float | str]] = []
    for name, s in scores.items():
        row: dict[str, float | str] = {"method": name}
        for metric, fn in (("auroc", auroc), ("auprc", auprc)):
            lo, hi = bootstrap_ci(fn, s, errors, n_boot, seed)
            row.update({metric: fn(s, errors), f"{metric}_lo": lo, f"{metric}_hi": hi})
        rows.append(row)
    return rows


def paired_delta(a: np.ndarray, b: np.ndarray, errors: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """AUROC(a) - AUROC(b) on the same questions, with a paired bootstrap CI (both scored on each resample)."""
    a, b, y = np.asarray(a, float), np.asarray(b, float), np.asarray(errors).astype(bool)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].all() or not y[idx].any():
            continue
        vals.append(auroc(a[idx], y[idx]) - auroc(b[idx], y[idx]))
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)]) if vals else (float("nan"),) * 2
    return {"delta": auroc(a, y) - auroc(b, y), "lo": float(lo), "hi": float(hi)}
