"""Sentence-SAR: each answer's probability boosted by the probabilities of the answers similar to it.

With p_j = exp(-sum_i -log p(z_ji | ...)) = p(s_j | x) and g(s_j, s_k) in [0, 1] a sentence similarity:

    E_S(s_j) = -log( p_j + sum_{k != j} g(s_j, s_k) p_k / t )
    Sentence-SAR(x) = (1/K) sum_j E_S(s_j)

computed in log space: E_S(s_j) = -logsumexp(log p_j, {log g_jk + log p_k - log t}_{k != j}).

Based on Duan et al., "Shifting Attention to Relevance" (https://arxiv.org/abs/2307.01379), eq. 7-8; reference code
https://github.com/jinhaoduan/SAR (``src/compute_uncertainty.py``, ``sentence_sar``; similarities from
``src/get_sentence_similarities.py``).

Deviations: the log-space form does not underflow for long answers (the reference exponentiates in float32, so an
answer with a summed NLL above ~104 has p_j = 0 and a question whose answers all do scores -log 0 = inf, then NaN
replaced by 0). The offline default g is the generating model's hidden-state cosine, not the reference's
cross-encoder, which can be given instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.base import check_range
from components.uncertainty.base import QuestionSamples, UncertaintyMethod, logsumexp, sequence_nll
from registry import register


def sentence_weighted(log_p: np.ndarray, similarity: np.ndarray, t: float) -> np.ndarray:
    """E_S(s_j) for every answer j, (K,), from log p_j (K,) and g (K, K)."""
    log_p = np.asarray(log_p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_g = np.log(np.asarray(similarity, dtype=np.float64))  # (K, K), -inf where g = 0
    k = log_p.size
    out = np.empty(k)
    for j in range(k):
        others = [log_g[j, m] + log_p[m] - np.log(t) for m in range(k) if m != j]
        out[j] = -logsumexp(np.array([log_p[j], *others]))
    return out


@register("sentence_sar", version="1.0.0", family="uncertainty", paper="arXiv:2307.01379",
          summary="Mean over K samples of -log(p_j + sum_k g_jk p_k / t) (SAR, sentence level).")
@dataclass(frozen=True)
class SentenceSAR(UncertaintyMethod):
    """Sentence-SAR: answers' likelihoods shifted towards those of semantically similar answers.

    Parameters
    ----------
    t : float
        Temperature dividing the similarity-weighted probabilities of the other answers (reference default 0.001).
    """

    t: float = 0.001
    needs = ("similarity",)
    example = {"t": "0.001"}

    def __post_init__(self) -> None:
        check_range("sentence_sar.t", self.t, 0.0, None, lo_open=True)

    def uncertainty(self, q: QuestionSamples) -> float:
        assert q.similarity is not None
        log_p = np.array([-sequence_nll(n) for n in q.nll])
        return float(np.mean(sentence_weighted(log_p, q.similarity, self.t)))
