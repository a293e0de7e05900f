"""SAR: sentence-SAR applied to token-SAR's relevance-weighted likelihoods (token + sentence relevance).

    p_j = exp(-E_T(s_j)),  E_T(s_j) = sum_i [R_T(z_ji) / sum_m R_T(z_jm)] * -log p(z_ji | s_j,<i, x)
    E(s_j) = -log( p_j + sum_{k != j} g(s_j, s_k) p_k / t )
    SAR(x) = (1/K) sum_j E(s_j)

Based on Duan et al., "Shifting Attention to Relevance" (https://arxiv.org/abs/2307.01379), section 4.3; reference
code https://github.com/jinhaoduan/SAR (``src/compute_uncertainty.py``, ``sar``).

Deviations: those of token-SAR and sentence-SAR (log-space form, uniform weights when every relevance is 0, offline
default similarity from the generating model's hidden states); with K = 1 the reference skips the sentence step and
returns E_T, which this formula also gives (no other answer to add).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.base import check_range
from components.uncertainty.base import QuestionSamples, UncertaintyMethod
from components.uncertainty.sentence_sar import sentence_weighted
from components.uncertainty.token_sar import token_weighted_nll
from registry import register


@register("sar", version="1.0.0", family="uncertainty", paper="arXiv:2307.01379",
          summary="Shifting Attention to Relevance: token- and sentence-relevance-weighted uncertainty.")
@dataclass(frozen=True)
class SAR(UncertaintyMethod):
    """SAR: sentence relevance over the token-relevance-weighted likelihoods of the K answers.

    Parameters
    ----------
    t : float
        Temperature dividing the similarity-weighted probabilities of the other answers (reference default 0.001).
    """

    t: float = 0.001
    needs = ("relevance", "similarity")
    example = {"t": "0.001"}

    def __post_init__(self) -> None:
        check_range("sar.t", self.t, 0.0, None, lo_open=True)

    def uncertainty(self, q: QuestionSamples) -> float:
        assert q.relevance is not None and q.similarity is not None
        log_p = np.array([-token_weighted_nll(n, r) for n, r in zip(q.nll, q.relevance)])
        return float(np.mean(sentence_weighted(log_p, q.similarity, self.t)))
