"""Predictive entropy (PE): the Monte-Carlo estimate of the entropy of the answer distribution.

With K answers s_k sampled for question x and -log p(s_k | x) = sum_i -log p(z_ki | s_k,<i, x) (temperature 1):

    PE(x) = (1/K) sum_k -log p(s_k | x)

Based on Kadavath et al., "Language Models (Mostly) Know What They Know" (arXiv 2207.05221) as evaluated by
Duan et al., "Shifting Attention to Relevance" (https://arxiv.org/abs/2307.01379); reference code
https://github.com/jinhaoduan/SAR (``src/compute_uncertainty.py``, ``predictive_entropy``).

Deviations: none (an empty answer contributes -log p = 0, as an empty sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.uncertainty.base import QuestionSamples, UncertaintyMethod, sequence_nll
from registry import register


@register("predictive_entropy", version="1.0.0", family="uncertainty", paper="arXiv:2207.05221",
          summary="Mean over K samples of the answer's summed token NLL (SAR's PE baseline).")
@dataclass(frozen=True)
class PredictiveEntropy(UncertaintyMethod):
    """Predictive entropy: the mean over the K sampled answers of -log p(answer | question).

    Parameters
    ----------
    (none) : the score has no hyper-parameters.
    """

    def uncertainty(self, q: QuestionSamples) -> float:
        return float(np.mean([sequence_nll(n) for n in q.nll]))
