"""Log-likelihood: the mean log-probability the backbone gives to the observed tokens.

Machine text is sampled from high-likelihood regions of a language model, so it tends to score higher than
human text under another language model. Formula (per text, over its scored tokens t = 1..L):

    score = (1/L) sum_t log P(x_t | x_<t)          higher = more likely machine

Based on Solaiman et al., "Release Strategies and the Social Impacts of Language Models" (arXiv 1908.09203),
the likelihood baseline of DetectGPT / Fast-DetectGPT. Reference code:
https://github.com/baoguangsheng/fast-detect-gpt (``scripts/baselines.py``, ``get_likelihood``).

Deviations from the reference code: texts start with a BOS token so the first word is scored too (the reference
scores from the second token on); tokens beyond the feature extractor's ``max_length`` are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.detectors.base import Detector, DetectorState, FeatureSet, per_text_mean
from registry import register


@register("log_likelihood", version="1.0.0", family="detector", paper="arXiv:1908.09203",
          summary="Zero-shot baseline: mean token log-probability under the backbone (higher = machine).")
@dataclass(frozen=True)
class LogLikelihood(Detector):
    """Mean log-likelihood of the observed tokens.

    Parameters
    ----------
    (none) : the score has no hyper-parameters; the threshold is chosen on the validation split by the evaluation.
    """

    def score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        return per_text_mean(feats.metric("next_token_log_prob"))
