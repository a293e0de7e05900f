"""Detection metrics (scikit-learn): AUROC, macro-F1 / macro-recall at a threshold chosen on validation data,
recall of the machine class at a fixed false-positive rate, and the same per domain and per generator.

Scores are oriented "higher = machine" (``Detector.machine_score``); label 1 = machine. The threshold is the one
that maximises macro-F1 on the validation split (predict machine when score >= threshold) and is then applied
unchanged to the test data. Recall at x% FPR is read from the test ROC curve (the best recall whose FPR <= x).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, recall_score, roc_auc_score, roc_curve


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold maximising macro-F1 (midpoints between distinct scores; ties -> the smaller threshold)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
    if len(scores) == 0 or len(set(labels.tolist())) < 2:
        return float(np.median(scores)) if len(scores) else 0.0
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of equal scores
    tp = np.cumsum(y)[distinct]  # predicting machine for the top k = distinct + 1 texts
    fp = np.cumsum(1 - y)[distinct]
    P, N = y.sum(), len(y) - y.sum()
    fn, tn = P - tp, N - fp
    f1_m = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    f1_h = 2 * tn / np.maximum(2 * tn + fn + fp, 1)
    best = int(np.argmax((f1_m + f1_h) / 2))
    i = distinct[best]
    return float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i] - 1e-12)


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr_max: float) -> float:
    if len(set(np.asarray(labels).tolist())) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= fpr_max + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """The detection metrics of one set of texts at ``threshold``."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
    pred = (scores >= threshold).astype(int)
    both = len(set(labels.tolist())) == 2
    out = {
        "auroc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=[0, 1], zero_division=0))
        if both else float("nan"),
        "macro_recall": float(recall_score(labels, pred, average="macro", labels=[0, 1], zero_division=0))
        if both else float("nan"),
        "recall_machine": float(pred[labels == 1].mean()) if (labels == 1).any() else float("nan"),
        "recall_human": float(1 - pred[labels == 0].mean()) if (labels == 0).any() else float("nan"),
        "recall_at_1fpr": recall_at_fpr(scores, labels, 0.01),
        "recall_at_5fpr": recall_at_fpr(scores, labels, 0.05),
        "n": float(len(labels)), "n_machine": float(labels.sum()),
    }
    return out


def breakdowns(scores: np.ndarray, labels: np.ndarray, domains: list[str], generators: list[str],
               threshold: float) -> dict[str, list[dict[str, Any]]]:
    """Metrics per domain (all texts of the domain) and per generator (its texts vs every human text)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
    dom, gen = np.asarray(domains), np.asarray(generators)
    by_domain = [{"domain": d, **metrics(scores[dom == d], labels[dom == d], threshold)} for d in sorted(set(domains))]
    human = labels == 0
    by_generator = []
    for g in sorted(set(generators) - {"human"}):
        sel = human | ((gen == g) & (labels == 1))
        by_generator.append({"generator": g, **metrics(scores[sel], labels[sel], threshold)})
    return {"by_domain": by_domain, "by_generator": by_generator}


def finite(d: dict[str, float]) -> dict[str, float]:
    """Drop NaN values (MLflow metrics must be numbers)."""
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not math.isnan(v)}
