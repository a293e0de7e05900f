"""Lexical similarity: how much the K sampled answers agree word for word (ROUGE-L), turned into an uncertainty.

    LexSim(x) = 1 - (2 / (K (K - 1))) sum_{j < k} ROUGE-L(s_j, s_k)

Based on Lin et al., "Generating with Confidence" (arXiv 2305.19187), as evaluated by Duan et al., "Shifting
Attention to Relevance" (https://arxiv.org/abs/2307.01379); reference code https://github.com/jinhaoduan/SAR
(``src/compute_uncertainty.py``, ``lexical_similarity``).

Deviations: the reference returns the mean similarity itself (a confidence: higher = more certain); here it is
1 - similarity so that, like every method of this family, higher means less certain (AUROC of the reference's
score = 1 - this one's). With K = 1 there is no pair and the score is 0. ROUGE-L is this project's own
(:mod:`components.uncertainty._rouge`, rouge_score's tokenisation).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.uncertainty import _rouge
from components.uncertainty.base import QuestionSamples, UncertaintyMethod
from registry import register


@register("lexical_similarity", version="1.0.0", family="uncertainty", paper="arXiv:2305.19187",
          summary="1 - mean pairwise ROUGE-L of the K sampled answers (SAR's lexical-similarity baseline).")
@dataclass(frozen=True)
class LexicalSimilarity(UncertaintyMethod):
    """One minus the mean ROUGE-L F over all pairs of sampled answers.

    Parameters
    ----------
    (none) : the score has no hyper-parameters.
    """

    def uncertainty(self, q: QuestionSamples) -> float:
        k = len(q.texts)
        pairs = [_rouge.rouge_l(q.texts[j], q.texts[m]) for j in range(k) for m in range(j + 1, k)]
        return 1.0 - sum(pairs) / len(pairs) if pairs else 0.0
