"""Length-normalised predictive entropy (LN-PE): predictive entropy with each answer's NLL divided by its length.

    LN-PE(x) = (1/K) sum_k (1/T_k) sum_i -log p(z_ki | s_k,<i, x)

Based on Malinin & Gales, "Uncertainty Estimation in Autoregressive Structured Prediction" (arXiv 2002.07650), as
evaluated by Duan et al., "Shifting Attention to Relevance" (https://arxiv.org/abs/2307.01379); reference code
https://github.com/jinhaoduan/SAR (``src/compute_uncertainty.py``, ``len_normed_predictive_entropy``).

Deviations: an empty answer (T_k = 0) contributes 0 (the reference's mean of an empty tensor is NaN, which it later
sets to 0 for the whole question's score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.uncertainty.base import QuestionSamples, UncertaintyMethod, mean_nll
from registry import register


@register("ln_predictive_entropy", version="1.0.0", family="uncertainty", paper="arXiv:2002.07650",
          summary="Mean over K samples of the answer's mean token NLL (SAR's LN-PE baseline).")
@dataclass(frozen=True)
class LengthNormalisedPredictiveEntropy(UncertaintyMethod):
    """Length-normalised predictive entropy: the mean over the K answers of their mean token NLL.

    Parameters
    ----------
    (none) : the score has no hyper-parameters.
    """

    def uncertainty(self, q: QuestionSamples) -> float:
        return float(np.mean([mean_nll(n) for n in q.nll]))
