"""Log-rank: the mean log of the rank of each observed token in the backbone's next-token distribution.

Machine text picks top-ranked tokens more often. The rank of the observed token is read from the cached PAWN
quantile (rank = quantile * V, the number of vocabulary entries at least as likely as the token, so the most
likely token has rank 1). Formula (per text, tokens t = 1..L):

    score = -(1/L) sum_t log rank_t                higher = more likely machine

Based on Mitchell et al., "DetectGPT" (arXiv 2301.11305), the log-rank baseline (after GLTR, Gehrmann et al.
2019). Reference code: https://github.com/baoguangsheng/fast-detect-gpt (``scripts/baselines.py``,
``get_logrank``).

Deviations from the reference code: ties count as "at least as likely" (the reference's argsort breaks ties
arbitrarily); texts start with a BOS token so the first word is scored too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.detectors.base import Detector, DetectorState, FeatureSet, per_text_mean
from registry import register


def token_ranks(feats: FeatureSet) -> list[np.ndarray]:
    """1-based rank of every observed token (exact integers recovered from the float32 quantile)."""
    return [np.maximum(np.rint(q.astype(np.float64) * feats.vocab_size), 1.0) for q in feats.metric("quantile")]


@register("log_rank", version="1.0.0", family="detector", paper="arXiv:2301.11305",
          summary="Zero-shot baseline: minus the mean log-rank of the observed tokens (higher = machine).")
@dataclass(frozen=True)
class LogRank(Detector):
    """Minus the mean log-rank of the observed tokens.

    Parameters
    ----------
    (none) : the score has no hyper-parameters; the threshold is chosen on the validation split by the evaluation.
    """

    def score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        return -per_text_mean([np.log(r) for r in token_ranks(feats)])
