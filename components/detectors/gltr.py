"""GLTR rank buckets + logistic regression: how often a text's tokens fall in the model's top-k.

Each text becomes the fractions of its tokens whose rank (1 = the model's most likely token) falls in the
buckets [1, 10], (10, 100], (100, 1000], (1000, V] (edges = ``buckets``); a logistic regression on these
standardised fractions, trained on the training split, gives the score:

    f_k(s) = (1/L) #{t : e_{k-1} < rank_t <= e_k},   score = w . standardise(f) + b   (log-odds of machine)

Ranks come from the cached PAWN quantile (rank = quantile * V; ties count as "at least as likely").

Based on Gehrmann et al., "GLTR: Statistical Detection and Visualization of Generated Text" (arXiv 1906.04043);
the bucket + logistic-regression form is the GLTR baseline of MAGE and M4. Reference code:
https://github.com/HendrikStrobelt/detecting-fake-text (``backend/api.py``, ``top_k`` buckets in the client).

Deviations from the reference code: GLTR itself is a visual tool with buckets top-10/100/1000; the classifier
(an L2 logistic regression, C = ``c``, fitted with L-BFGS on standardised features) follows the MAGE/M4
baselines rather than any GLTR code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from components.base import ParamError, check_range
from components.detectors._logistic import decision, fit_logistic
from components.detectors.base import Detector, DetectorState, FeatureSet
from components.detectors.log_rank import token_ranks
from registry import register


@register("gltr", version="1.0.0", family="detector", paper="arXiv:1906.04043",
          summary="GLTR rank-bucket fractions (top-10/100/1000/rest) + logistic regression.")
@dataclass(frozen=True)
class GLTR(Detector):
    """Rank-bucket fractions and a logistic regression.

    Parameters
    ----------
    buckets : tuple of int
        Increasing upper rank edges; one more bucket holds the ranks above the last edge. Default (10, 100, 1000).
    c : float
        Inverse L2 strength of the logistic regression. Default 1.0.
    """

    buckets: tuple[int, ...] = (10, 100, 1000)
    c: float = 1.0

    trainable: ClassVar[bool] = True
    example: ClassVar[dict[str, str]] = {"buckets": "5,50", "c": "0.5"}

    def __post_init__(self) -> None:
        if not self.buckets or any(b < 1 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise ParamError(f"gltr.buckets={list(self.buckets)} must be increasing positive ranks, e.g. 10,100,1000")
        check_range("gltr.c", self.c, 0.0, lo_open=True)

    def bucket_fractions(self, feats: FeatureSet) -> np.ndarray:
        """(N, len(buckets) + 1) fraction of each text's tokens per rank bucket."""
        edges = np.array(self.buckets, dtype=np.float64)
        out = np.zeros((len(feats), len(edges) + 1))
        for i, ranks in enumerate(token_ranks(feats)):
            out[i] = np.bincount(np.searchsorted(edges, ranks, side="left"), minlength=len(edges) + 1) / len(ranks)
        return out

    def fit(self, train: FeatureSet, valid: FeatureSet | None = None, *, progress: bool = False) -> DetectorState:
        y = train.require_labels()
        if len(set(y.tolist())) < 2:
            raise ValueError("gltr: the training split needs both human (0) and machine (1) texts")
        params = fit_logistic(self.bucket_fractions(train), y, self.c)
        return DetectorState(params, {"coefficients": params["weight"].tolist(), "n_train": len(train)})

    def score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        if state is None or not state.tensors:
            raise ValueError("gltr: score needs a trained state (call fit first)")
        return decision(self.bucket_fractions(feats), state.tensors)
