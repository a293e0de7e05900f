"""Fast-DetectGPT (analytic): how far the observed log-likelihood sits above what the model itself would sample.

For each position t, with the sampling distribution q = the scoring distribution p = the backbone's next-token
distribution (single-model setting), the expected log-probability of a sampled token and its variance are

    mu_t = sum_v p_t(v) log p_t(v) = -H_t,      s2_t = sum_v p_t(v) (log p_t(v))^2 - mu_t^2

and the sampling discrepancy of a text is

    d = (sum_t log p_t(x_t) - sum_t mu_t) / sqrt(sum_t s2_t)         higher = more likely machine

The sums run over the text's scored tokens; sum_v p log^2 p is the cached aux feature ``log_prob_sq``.

Based on Bao et al., "Fast-DetectGPT: Efficient Zero-Shot Detection of Machine-Generated Text via Conditional
Probability Curvature" (arXiv 2310.05130). Reference code: https://github.com/baoguangsheng/fast-detect-gpt
(``scripts/fast_detect_gpt.py``, ``get_sampling_discrepancy_analytic``).

Deviations from the reference code: one model plays both the sampling and the scoring role (the paper's best
results use GPT-J-6B sampling / GPT-Neo-2.7B scoring); texts start with a BOS token so the first word is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from components.detectors.base import Detector, DetectorState, FeatureSet
from registry import register


@register("fast_detectgpt", version="1.0.0", family="detector", paper="arXiv:2310.05130",
          summary="Zero-shot: analytic sampling discrepancy, (log p(x) - E log p) / std, backbone as both models.")
@dataclass(frozen=True)
class FastDetectGPT(Detector):
    """Analytic sampling discrepancy with the backbone as sampling and scoring model.

    Parameters
    ----------
    (none) : the score has no hyper-parameters; the threshold is chosen on the validation split by the evaluation.
    """

    needs_aux: ClassVar[tuple[str, ...]] = ("log_prob_sq",)

    def score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        self.check_features(feats)
        out = []
        for ll, ent, sq in zip(feats.metric("next_token_log_prob"), feats.metric("entropy"),
                               feats.metric("log_prob_sq")):
            ll, mu, sq = ll.astype(np.float64), -ent.astype(np.float64), sq.astype(np.float64)
            var = np.maximum(sq - mu * mu, 0.0).sum()
            out.append((ll.sum() - mu.sum()) / np.sqrt(var) if var > 0 else 0.0)
        return np.asarray(out, dtype=np.float64)
