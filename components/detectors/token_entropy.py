"""Token entropy: the mean entropy of the backbone's next-token distribution over a text.

Formula (per text, tokens t = 1..L):

    score = (1/L) sum_t H_t,   H_t = -sum_v P(v | x_<t) log P(v | x_<t)

The sign follows the reference code, which feeds mean entropy to its ROC as "higher = machine"; an AUROC below
0.5 on some data means the opposite direction separates them there (report it as measured, do not flip per
test set).

Based on Gehrmann et al., "GLTR: Statistical Detection and Visualization of Generated Text" (arXiv 1906.04043),
the entropy baseline of DetectGPT / Fast-DetectGPT. Reference code:
https://github.com/baoguangsheng/fast-detect-gpt (``scripts/baselines.py``, ``get_entropy``).

Deviations from the reference code: texts start with a BOS token, so the entropy at the first word is included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.detectors.base import Detector, DetectorState, FeatureSet, per_text_mean
from registry import register


@register("token_entropy", version="1.0.0", family="detector", paper="arXiv:1906.04043",
          summary="Zero-shot baseline: mean next-token entropy (reference sign: higher = machine).")
@dataclass(frozen=True)
class TokenEntropy(Detector):
    """Mean next-token entropy.

    Parameters
    ----------
    (none) : the score has no hyper-parameters; the threshold is chosen on the validation split by the evaluation.
    """

    def score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        return per_text_mean(feats.metric("entropy"))
