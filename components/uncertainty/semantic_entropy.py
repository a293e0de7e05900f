"""Semantic entropy (SE): entropy over meanings, with answers clustered by bidirectional entailment.

1. Clusters: answers are visited in order; answer j joins the first cluster whose first member c satisfies
   e(j -> c) >= threshold and e(c -> j) >= threshold, else it opens a new cluster (Kuhn et al.'s greedy rule).
2. Per cluster C: log p(C | x) = log sum_{k in C} exp(-(1/T_k) sum_i -log p(z_ki | ...)), the length-normalised
   likelihoods of its answers, as the reference code does.
3. SE(x) = -(1/|clusters|) sum_C log p(C | x).

Based on Kuhn et al., "Semantic Uncertainty" (arXiv 2302.09664), as evaluated by Duan et al., "Shifting Attention
to Relevance" (https://arxiv.org/abs/2307.01379); reference code https://github.com/jinhaoduan/SAR
(``src/compute_uncertainty.py``, ``semantic_entropy``; clusters from ``src/get_semantic_clusters.py``).

Deviations: the reference subtracts a constant ``llh_shift = 5`` from every cluster log-likelihood, which adds 5 to
every score and changes no ranking; it is left out. Entailment comes from the pluggable backend
(:mod:`components.uncertainty._similarity`): with an NLI model, a direction counts when P(entailment) >= threshold
(Kuhn et al. take the argmax of the three NLI classes); offline, e is the answers' ROUGE-L, so "same meaning" is
ROUGE-L >= threshold, a lexical stand-in for entailment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.base import check_range
from components.uncertainty.base import QuestionSamples, UncertaintyMethod, logsumexp, mean_nll
from registry import register


def clusters(entailment: np.ndarray, threshold: float) -> list[int]:
    """Cluster id of every answer (ids in order of first appearance) under bidirectional entailment."""
    firsts: list[int] = []
    ids: list[int] = []
    for j in range(entailment.shape[0]):
        for c, first in enumerate(firsts):
            if entailment[j, first] >= threshold and entailment[first, j] >= threshold:
                ids.append(c)
                break
        else:
            ids.append(len(firsts))
            firsts.append(j)
    return ids


@register("semantic_entropy", version="1.0.0", family="uncertainty", paper="arXiv:2302.09664",
          summary="Entropy over clusters of answers that entail each other (SAR's SE baseline).")
@dataclass(frozen=True)
class SemanticEntropy(UncertaintyMethod):
    """Semantic entropy: minus the mean log-likelihood of the entailment clusters of the K answers.

    Parameters
    ----------
    threshold : float
        Two answers share a meaning when the entailment score is at least this in both directions (default 0.5).
    """

    threshold: float = 0.5
    needs = ("entailment",)
    example = {"threshold": "0.5"}

    def __post_init__(self) -> None:
        check_range("semantic_entropy.threshold", self.threshold, 0.0, 1.0)

    def uncertainty(self, q: QuestionSamples) -> float:
        assert q.entailment is not None
        ids = np.array(clusters(np.asarray(q.entailment), self.threshold))
        loglik = np.array([-mean_nll(n) for n in q.nll])  # (K,) length-normalised log p(s_k | x)
        return float(-np.mean([logsumexp(loglik[ids == c]) for c in np.unique(ids)]))
