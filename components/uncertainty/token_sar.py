"""Token-SAR: the answer's NLL with each token weighted by its relevance to the answer's meaning.

1. Relevance of token z_i of answer s: R_T(z_i) = 1 - g(x + s, x + s without z_i), g a similarity in [0, 1]
   (computed once by the similarity backend and cached, :mod:`components.uncertainty._similarity`).
2. Token-weighted NLL: E_T(s) = sum_i [R_T(z_i) / sum_j R_T(z_j)] * -log p(z_i | s_<i, x).
3. Token-SAR(x) = (1/K) sum_k E_T(s_k).

Based on Duan et al., "Shifting Attention to Relevance" (https://arxiv.org/abs/2307.01379), eq. 4-5; reference code
https://github.com/jinhaoduan/SAR (``src/compute_uncertainty.py``, ``token_sar``; relevance from
``src/get_tokenwise_importance.py``).

Deviations: when every relevance of an answer is 0 the weights are uniform (E_T = mean NLL) instead of 0/0; an
empty answer has E_T = 0 (the reference scores answers whose relevance and NLL lengths differ as 0, too). The
offline default g is the generating model's hidden-state cosine, not the reference's cross-encoder
(``cross-encoder/stsb-roberta-large``), which can be given instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.uncertainty.base import QuestionSamples, UncertaintyMethod
from registry import register


def token_weighted_nll(nll: np.ndarray, relevance: np.ndarray) -> float:
    """E_T(s): the relevance-weighted sum of an answer's token NLLs (0 for an empty answer)."""
    nll = np.asarray(nll, dtype=np.float64)
    r = np.asarray(relevance, dtype=np.float64)
    if nll.size == 0:
        return 0.0
    total = r.sum()
    w = r / total if total > 0 else np.full(nll.size, 1.0 / nll.size)  # (T,) weights summing to 1
    return float((w * nll).sum())


@register("token_sar", version="1.0.0", family="uncertainty", paper="arXiv:2307.01379",
          summary="Mean over K samples of the relevance-weighted token NLL (SAR, token level).")
@dataclass(frozen=True)
class TokenSAR(UncertaintyMethod):
    """Token-SAR: the mean over the K answers of their relevance-weighted token NLL.

    Parameters
    ----------
    (none) : the relevance comes from the similarity backend chosen for the cache.
    """

    needs = ("relevance",)

    def uncertainty(self, q: QuestionSamples) -> float:
        assert q.relevance is not None
        return float(np.mean([token_weighted_nll(n, r) for n, r in zip(q.nll, q.relevance)]))
