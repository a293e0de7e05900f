"""Detection metrics (scikit-learn / scipy): ranking quality (AUROC, recall at a fixed FPR read from the test ROC),
decisions at two thresholds chosen on validation data, false-positive rates with confidence intervals, and the
same per domain, per generator and per group.

Scores are oriented "higher = machine" (``Detector.machine_score``); label 1 = machine; a text is flagged as machine
when ``score >= threshold``. Two thresholds are chosen on the validation split and applied unchanged to the test
data:

- the **macro-F1 threshold** maximises macro-F1 on validation texts (both classes);
- the **target-FPR threshold** is calibrated on the *human* validation texts alone: the smallest threshold that
  flags at most ``floor(target_fpr * n)`` of them, i.e. the empirical (1 - target_fpr) quantile of the human
  validation scores (RAID-style "accuracy at 5% FPR"). At it the report gives the realised FPR on the test human
  texts with a Clopper-Pearson (exact binomial) 95% interval, the recall of machine text (RAID's "accuracy") and
  the accuracy over all test texts.

Metrics that need both classes (AUROC, macro-F1/recall, recall at x% FPR, accuracy) or one class (FPR needs human
texts, recall of machine text needs machine texts) are left out when the texts lack it, and ``omitted`` names each
one with the reason: no metric is ever reported as NaN.

Per-generator metrics pair the generator's machine texts with the human texts *of the same domains* (the domains
its machine texts come from), not with every human text of the test data; per-domain metrics use every text of
the domain; per-group FPR tables (any column: domain, source, generator, a user-given group) count flagged human
texts per group and give the ratio of each group's FPR to the lowest group's.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import f1_score, recall_score, roc_auc_score, roc_curve

#: confidence level of every FPR interval
CI_LEVEL = 0.95
BOTH = "needs human and machine texts"


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


def calibrate_fpr_threshold(human_scores: np.ndarray, target_fpr: float) -> float:
    """The threshold that flags at most ``floor(target_fpr * n)`` of ``n`` human scores (``score >= t``): midway
    between the k-th and (k+1)-th largest scores, or just above the (k+1)-th when they tie."""
    if not 0 < target_fpr < 1:
        raise ValueError(f"target FPR {target_fpr} must be in (0, 1)")
    s = np.sort(np.asarray(human_scores, np.float64))[::-1]  # descending
    if len(s) == 0:
        raise ValueError("no human texts to calibrate a false-positive threshold on")
    k = int(math.floor(target_fpr * len(s) + 1e-9))  # false positives allowed
    if k >= len(s):
        return float(s[-1])
    above = float(np.nextafter(s[k], np.inf))  # flags only scores strictly above the (k+1)-th largest
    return float((s[k - 1] + s[k]) / 2) if k > 0 and s[k - 1] > above else above


def binomial_ci(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a proportion k / n."""
    if n <= 0:
        raise ValueError("a proportion of zero trials has no interval")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr_max: float) -> float:
    """Best recall of machine text whose FPR on the same texts is <= fpr_max (from their ROC; both classes)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= fpr_max + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def fpr_row(scores: np.ndarray, threshold: float) -> dict[str, float]:
    """FPR of human scores at a threshold with its interval: n_human, n_flagged, fpr, fpr_ci_low, fpr_ci_high."""
    flagged = int((np.asarray(scores, np.float64) >= threshold).sum())
    lo, hi = binomial_ci(flagged, len(scores))
    return {"n_human": float(len(scores)), "n_flagged": float(flagged), "fpr": flagged / len(scores),
            "fpr_ci_low": lo, "fpr_ci_high": hi}


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float,
            fpr_threshold: float | None = None, target_fpr: float | None = None) -> dict[str, Any]:
    """Detection metrics of one set of texts; ``omitted`` maps each metric left out to the reason."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
    human, machine = scores[labels == 0], scores[labels == 1]
    out: dict[str, Any] = {"n": float(len(labels)), "n_machine": float(len(machine)), "n_human": float(len(human))}
    omitted: dict[str, str] = {}
    pred = (scores >= threshold).astype(int)
    if len(human) and len(machine):
        out.update({
            "auroc": float(roc_auc_score(labels, scores)),
            "macro_f1": float(f1_score(labels, pred, average="macro", labels=[0, 1], zero_division=0)),
            "macro_recall": float(recall_score(labels, pred, average="macro", labels=[0, 1], zero_division=0)),
            "recall_at_1fpr": recall_at_fpr(scores, labels, 0.01),
            "recall_at_5fpr": recall_at_fpr(scores, labels, 0.05),
        })
    else:
        omitted.update(dict.fromkeys(("auroc", "macro_f1", "macro_recall", "recall_at_1fpr", "recall_at_5fpr"),
                                     f"{BOTH} (these have {len(human)} human, {len(machine)} machine)"))
    if len(machine):
        out["recall_machine"] = float(pred[labels == 1].mean())
    else:
        omitted["recall_machine"] = "no machine texts"
    if len(human):
        out["recall_human"] = float(1 - pred[labels == 0].mean())
    else:
        omitted["recall_human"] = "no human texts"
    if target_fpr is not None:
        out["target_fpr"] = float(target_fpr)
        if fpr_threshold is None:
            omitted["fpr"] = "no human validation texts to calibrate the target-FPR threshold on"
        else:
            out["fpr_threshold"] = float(fpr_threshold)
            flag = scores >= fpr_threshold
            if len(human):
                out.update(fpr_row(human, fpr_threshold))
            else:
                omitted["fpr"] = "no human texts"
            if len(machine):
                out["recall_at_target_fpr"] = float(flag[labels == 1].mean())
            else:
                omitted["recall_at_target_fpr"] = "no machine texts"
            if len(human) and len(machine):
                out["accuracy_at_target_fpr"] = float((flag.astype(int) == labels).mean())
            else:
                omitted["accuracy_at_target_fpr"] = BOTH
    if omitted:
        out["omitted"] = omitted
    return out


def group_fpr(scores: np.ndarray, labels: np.ndarray, groups: Sequence[Any], threshold: float,
              column: str = "group") -> dict[str, Any]:
    """FPR per group of the human texts at ``threshold``, with intervals and the ratio to the lowest group's FPR.

    Returns ``{"column", "threshold", "rows": [{column: g, n_human, n_flagged, fpr, fpr_ci_low, fpr_ci_high,
    ratio_to_lowest}], "lowest", "omitted": {group: reason}}``; ``ratio_to_lowest`` is left out (and said why)
    when the lowest FPR is 0.
    """
    scores, labels, g = np.asarray(scores, np.float64), np.asarray(labels).astype(int), np.asarray(groups, object)
    rows, omitted = [], {}
    for value in sorted(set(g.tolist()), key=str):
        human = scores[(g == value) & (labels == 0)]
        if not len(human):
            omitted[str(value)] = "no human texts"
            continue
        rows.append({column: str(value), **fpr_row(human, threshold)})
    out: dict[str, Any] = {"column": column, "threshold": float(threshold), "rows": rows, "omitted": omitted}
    if rows:
        low = min(rows, key=lambda r: r["fpr"])
        out["lowest"] = low[column]
        for r in rows:
            if low["fpr"] > 0:
                r["ratio_to_lowest"] = r["fpr"] / low["fpr"]
        if low["fpr"] == 0:
            out["ratio_note"] = f"no ratio: the lowest group ({low[column]}) flags no human text"
    return out


def breakdowns(scores: np.ndarray, labels: np.ndarray, domains: list[str], generators: list[str],
               threshold: float, fpr_threshold: float | None = None,
               target_fpr: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Metrics per domain (every text of the domain) and per generator (its machine texts against the human texts
    of the domains its machine texts come from)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
    dom, gen = np.asarray(domains), np.asarray(generators)
    kw = {"threshold": threshold, "fpr_threshold": fpr_threshold, "target_fpr": target_fpr}
    by_domain = [{"domain": d, **metrics(scores[dom == d], labels[dom == d], **kw)} for d in sorted(set(domains))]
    by_generator = []
    for g in sorted(set(gen[labels == 1].tolist())):
        mine = (gen == g) & (labels == 1)
        its_domains = sorted(set(dom[mine].tolist()))
        sel = mine | ((labels == 0) & np.isin(dom, its_domains))
        by_generator.append({"generator": g, "domains": its_domains, **metrics(scores[sel], labels[sel], **kw)})
    return {"by_domain": by_domain, "by_generator": by_generator}


def finite(d: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite values (MLflow metrics must be numbers)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def summary_line(label: str, m: dict[str, Any], threshold: float) -> str:
    """One printable line: the metrics present, and why the others are left out."""
    parts = [f"{label}:"]
    for key, name, fmt in (("auroc", "test AUROC", ".4f"), ("macro_f1", "macro-F1", ".4f"),
                           ("macro_recall", "macro-recall", ".4f"), ("recall_at_1fpr", "recall@1%FPR", ".3f"),
                           ("recall_at_5fpr", "@5%FPR", ".3f")):
        if key in m:
            parts.append(f"{name} {m[key]:{fmt}},")
    parts.append(f"(macro-F1 threshold {threshold:.4g})")
    if "fpr" in m:
        parts.append(f"| at the threshold calibrated for {m['target_fpr']:.0%} FPR ({m['fpr_threshold']:.4g}): "
                     f"test FPR {m['fpr']:.3f} [{m['fpr_ci_low']:.3f}, {m['fpr_ci_high']:.3f}] "
                     f"({int(m['n_flagged'])}/{int(m['n_human'])} human texts)")
        if "recall_at_target_fpr" in m:
            parts.append(f", machine recall {m['recall_at_target_fpr']:.3f}")
        if "accuracy_at_target_fpr" in m:
            parts.append(f", accuracy {m['accuracy_at_target_fpr']:.3f}")
    reasons: dict[str, list[str]] = {}
    for k, why in m.get("omitted", {}).items():
        reasons.setdefault(why, []).append(k)
    parts += [f"| omitted {', '.join(ks)}: {why}" for why, ks in reasons.items()]
    return " ".join(parts)
