"""UncertaintyMethod: the family base of uncertainty scores over K sampled answers per question.

Every method reads one question at a time from a :class:`QuestionSamples`, built from the generations cache (the
tasks layer builds and reads it, :mod:`tasks.generations`): the K sampled answers' texts and per-token negative
log-likelihoods -log p(z_i | s_<i, x) at temperature 1, and, for the methods that declare them in ``needs``, the
token relevance, the sentence-similarity matrix and the entailment matrix of a similarity backend
(:mod:`components.uncertainty._similarity`). ``uncertainty(q)`` returns one number; higher = less certain (more
likely wrong), so AUROC for predicting errors reads the same way for every method. Nothing here generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from components.base import Component

NEEDS = ("relevance", "similarity", "entailment")


class MissingInputError(ValueError):
    """A method needs relevance, similarity or entailment that the cached inputs lack."""


@dataclass
class QuestionSamples:
    """One question's K sampled answers and what the methods read from them.

    ``nll[k]`` (T_k,) float: -log p of each token of answer k; ``relevance[k]`` (T_k,) in [0, 1];
    ``similarity`` (K, K) in [0, 1], symmetric; ``entailment`` (K, K) in [0, 1], row j = premise s_j.
    """

    texts: list[str]
    nll: list[np.ndarray]
    relevance: list[np.ndarray] | None = None
    similarity: np.ndarray | None = None
    entailment: np.ndarray | None = None
    question: str = ""

    def __post_init__(self) -> None:
        k = len(self.nll)
        if len(self.texts) != k or k == 0:
            raise ValueError(f"{len(self.texts)} texts for {k} answers' log-probabilities (need K >= 1 of each)")
        if self.relevance is not None and [len(r) for r in self.relevance] != [len(n) for n in self.nll]:
            raise ValueError("relevance and log-probabilities differ in length for some answer")
        for name in ("similarity", "entailment"):
            m = getattr(self, name)
            if m is not None and np.shape(m) != (k, k):
                raise ValueError(f"{name} has shape {np.shape(m)}, expected ({k}, {k})")


@dataclass(frozen=True)
class UncertaintyMethod(Component):
    """Base class of uncertainty methods (family ``uncertainty``)."""

    #: what the method reads besides texts and log-probabilities (a subset of NEEDS)
    needs: ClassVar[tuple[str, ...]] = ()

    def uncertainty(self, q: QuestionSamples) -> float:
        """Uncertainty of one question's answers (higher = less certain)."""
        raise NotImplementedError

    def score(self, questions: Sequence[QuestionSamples]) -> np.ndarray:
        """Uncertainty per question, shape (N,) float64."""
        for i, q in enumerate(questions):
            missing = [n for n in self.needs if getattr(q, n) is None]
            if missing:
                raise MissingInputError(f"{self.component_name} needs {', '.join(missing)}, which question {i} "
                                        "lacks; score it with a similarity cache")
        return np.array([float(self.uncertainty(q)) for q in questions], dtype=np.float64)


def sequence_nll(nll: np.ndarray) -> float:
    """-log p(s | x) = sum of the tokens' -log p (0 for an empty answer)."""
    return float(np.sum(np.asarray(nll, dtype=np.float64)))


def mean_nll(nll: np.ndarray) -> float:
    """Length-normalised -log p(s | x): the mean of the tokens' -log p (0 for an empty answer)."""
    nll = np.asarray(nll, dtype=np.float64)
    return float(nll.mean()) if nll.size else 0.0


def logsumexp(x: np.ndarray) -> float:
    """log sum exp(x) over a 1-D array, stable; -inf for an empty array or all -inf."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or not np.isfinite(x.max()):
        return float("-inf")
    m = float(x.max())
    return m + float(np.log(np.exp(x - m).sum()))
