"""The papers' qualitative claims, checked on finished sweep points (plain data in, verdicts out).

Each check returns ``{"claim", "verdict", "evidence", "numbers"}`` with verdict one of ``held``, ``did not hold``
or ``inconclusive`` (the run cannot decide, e.g. no sink formed at all within the training budget). A flow's
overall verdict is ``held`` only when every primary claim held.

Points are the dicts returned by :func:`components.lm.dynamics.run_point`; ``final`` holds the last probe row.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

from components.lm.probes import lr_sensitivity, uniform_alpha0

HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"


def check(claim: str, verdict: str, evidence: str, **numbers: Any) -> dict[str, Any]:
    return {"claim": claim, "verdict": verdict, "evidence": evidence, "numbers": numbers}


def overall(checks: list[dict[str, Any]], primary: int | None = None) -> str:
    """``held`` if all (or the first ``primary``) checks held, ``did not hold`` if any failed, else inconclusive."""
    verdicts = [c["verdict"] for c in checks[: primary or len(checks)]]
    if NOT_HELD in verdicts:
        return NOT_HELD
    return HELD if verdicts and all(v == HELD for v in verdicts) else INCONCLUSIVE


def mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else math.nan


def final(points: list[dict[str, Any]], key: str) -> float:
    return mean(p["final"].get(key, math.nan) for p in points)


# -- Gu et al.: attention sink ---------------------------------------------------------------------------------------


def sink_claim(softmax: list[dict[str, Any]], sigmoid: list[dict[str, Any]], min_sink: float = 5.0,
               max_sigmoid: float = 1.0) -> dict[str, Any]:
    """A sink emerges with softmax attention (final Sink_1 >= min_sink %) but not with unnormalised sigmoid
    attention (final Sink_1 <= max_sigmoid %), at the end of training, averaged over seeds."""
    s_soft, s_sig = final(softmax, "sink1"), final(sigmoid, "sink1")
    a_soft, a_sig = final(softmax, "alpha0"), final(sigmoid, "alpha0")
    claim = "A sink emerges with softmax attention but not with sigmoid attention without normalisation"
    nums = dict(softmax_sink1=s_soft, sigmoid_sink1=s_sig, softmax_alpha0=a_soft, sigmoid_alpha0=a_sig,
                uniform_alpha0=uniform_alpha0(64))
    text = (f"final Sink_1: softmax {s_soft:.1f}% (alpha_0 {a_soft:.3f}) vs sigmoid-no-norm {s_sig:.1f}% "
            f"(alpha_0 {a_sig:.3f}), thresholds: softmax >= {min_sink:g}%, sigmoid <= {max_sigmoid:g}%")
    if s_sig > max_sigmoid:
        return check(claim, NOT_HELD, text + "; sigmoid attention formed a sink", **nums)
    if s_soft < min_sink:
        return check(claim, INCONCLUSIVE, text + "; no softmax sink formed within this budget", **nums)
    return check(claim, HELD, text, **nums)


def sweep_claim(name: str, points: dict[float, list[dict[str, Any]]], more_sink_at: str) -> dict[str, Any]:
    """Direction of a sweep: does the final softmax Sink_1 grow toward ``more_sink_at`` ("high" / "low" values)?"""
    xs = sorted(points)
    ys = [final(points[x], "sink1") for x in xs]
    claim = f"More {name} -> {'more' if more_sink_at == 'high' else 'less'} attention sink"
    table = ", ".join(f"{x:g}: {y:.1f}%" for x, y in zip(xs, ys))
    nums = {f"sink1_at_{x:g}": y for x, y in zip(xs, ys)}
    if len(xs) < 2 or all(y == 0 for y in ys):
        return check(claim, INCONCLUSIVE, f"Sink_1 by {name}: {table} (no contrast)", **nums)
    lo, hi = ys[0], ys[-1]
    grows = hi > lo if more_sink_at == "high" else lo > hi
    return check(claim, HELD if grows else NOT_HELD, f"Sink_1 by {name}: {table}", **nums)


# -- Wortsman et al.: small-scale proxies ----------------------------------------------------------------------------


def logit_growth_claim(base: dict[float, dict[str, Any]], qkln: dict[float, dict[str, Any]], width: int,
                       threshold: float) -> dict[str, Any]:
    """Without qk-layernorm the max attention logit exceeds ``threshold`` at some LR; with it, at none."""
    peak = lambda pts: max((p["final"].get("max_attn_logit", math.nan) for p in pts.values()  # noqa: E731
                            if math.isfinite(p["final"].get("max_attn_logit", math.nan))), default=math.nan)
    b, q = _peak_over_training(base), _peak_over_training(qkln)
    claim = f"Attention logits grow at high LR without qk-layernorm, not with it (width {width})"
    nums = {"max_logit_base": b, "max_logit_qkln": q, "final_max_logit_base": peak(base),
            "final_max_logit_qkln": peak(qkln), "threshold": threshold}
    text = f"max attention logit over LRs and training: {b:.3g} without qk-LN vs {q:.3g} with (threshold {threshold:g})"
    if not math.isfinite(b) or b < threshold:
        return check(claim, INCONCLUSIVE, text + "; no growth past the threshold without qk-LN", **nums)
    return check(claim, HELD if q < threshold else NOT_HELD, text, **nums)


def _peak_over_training(points: dict[float, dict[str, Any]]) -> float:
    vals = [r.get("max_attn_logit", math.nan) for p in points.values() for r in p["probes"]]
    vals = [v for v in vals if math.isfinite(v)]
    return max(vals) if vals else math.nan


def sensitivity(points: dict[float, dict[str, Any]], lo: float | None = None, hi: float | None = None) -> float:
    """LR sensitivity of one setting (points keyed by LR)."""
    init = mean(p["init_loss"] for p in points.values())
    return lr_sensitivity({lr: p["final"].get("loss", math.inf) for lr, p in points.items()}, init, lo, hi)


def sensitivity_claim(base: dict[float, dict[str, Any]], qkln: dict[float, dict[str, Any]], width: int,
                      ratio: float = 0.75) -> dict[str, Any]:
    """qk-layernorm lowers LR sensitivity (to at most ``ratio`` of the value without it)."""
    sb, sq = sensitivity(base), sensitivity(qkln)
    claim = f"qk-layernorm lowers LR sensitivity (width {width})"
    text = f"LR sensitivity {sb:.3f} without qk-LN vs {sq:.3f} with (held if <= {ratio:g}x)"
    return check(claim, HELD if sq <= ratio * sb else NOT_HELD, text, sensitivity_base=sb, sensitivity_qkln=sq)


def zloss_claim(without: dict[float, dict[str, Any]], with_: dict[float, dict[str, Any]]) -> dict[str, Any]:
    """z-loss keeps the output log Z closer to 0 (measured at the highest LR that did not diverge in both)."""
    lrs = [lr for lr in sorted(without) if lr in with_ and not without[lr]["diverged_at"]
           and not with_[lr]["diverged_at"]]
    claim = "z-loss keeps the output normaliser log Z near 0"
    if not lrs:
        return check(claim, INCONCLUSIVE, "no learning rate trained without divergence in both settings")
    lr = lrs[-1]
    a, b = abs(without[lr]["final"]["log_z"]), abs(with_[lr]["final"]["log_z"])
    text = f"|log Z| at LR {lr:g}: {a:.3f} without z-loss vs {b:.3f} with"
    return check(claim, HELD if b < a else NOT_HELD, text, abs_log_z_without=a, abs_log_z_with=b, lr=lr)


# -- Architectures: MoH, CMHA, lightning vs their baselines ------------------------------------------------------


def better_claim(claim: str, variant: list[dict[str, Any]], baseline: list[dict[str, Any]],
                 key: str = "loss") -> dict[str, Any]:
    """The variant reaches a lower final held-out loss than the baseline (mean over seeds); the seed spread is
    reported so a difference inside the noise is visible."""
    v, b = final(variant, key), final(baseline, key)
    spread = max(_spread(variant), _spread(baseline))
    text = (f"final held-out loss {v:.4f} vs baseline {b:.4f} (difference {v - b:+.4f}, seed spread "
            f"{spread:.4f}, {len(variant)} seeds)")
    if not (math.isfinite(v) and math.isfinite(b)):
        return check(claim, INCONCLUSIVE, text + "; a run diverged", variant=v, baseline=b)
    return check(claim, HELD if v < b else NOT_HELD, text, variant=v, baseline=b, difference=v - b, spread=spread)


def _spread(points: list[dict[str, Any]]) -> float:
    vals = [p["final"].get("loss", math.nan) for p in points]
    vals = [x for x in vals if math.isfinite(x)]
    return (max(vals) - min(vals)) if len(vals) > 1 else 0.0


def equality_check(claim: str, diff: float, tol: float) -> dict[str, Any]:
    return check(claim, HELD if diff <= tol else NOT_HELD, f"max |difference| {diff:.2e} (tolerance {tol:g})",
                 max_abs_diff=diff, tolerance=tol)
