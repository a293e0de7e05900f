"""Detector: the family base of AI-text detectors, and the per-token features they all read.

Every detector scores texts from the same features of one frozen causal LM (the *backbone*), extracted once by
:mod:`components.detectors._features` and cached by the tasks layer:

- ``metrics`` (T-1, 5) float32, for position i predicting token i+1, in the official PAWN order
  ``entropy, max_log_prob, next_token_log_prob, quantile, top_p`` (:data:`METRICS`);
- ``aux`` (T-1, A) float32: extra per-token statistics some baselines need (``log_prob_sq`` = sum_v p log^2 p for
  Fast-DetectGPT; ``performer_log_prob`` / ``cross_entropy`` when a Binoculars observer or performer other than
  the backbone was given, ``observer_log_prob`` when the observer is not the backbone);
- ``hidden`` (T, H) float16: the backbone's last hidden state (after its final norm), stored once (PAWN's gate
  reads h_i and h_{i+1}; the shift happens at load time).

A detector is a frozen dataclass (its fields are hyper-parameters). ``fit(train, valid)`` returns a
:class:`DetectorState` (tensors + info; empty for zero-shot detectors), ``score(features, state)`` returns the
method's *native* score per text (e.g. Binoculars: lower = machine) and ``machine_score`` flips it when
``higher_is_machine`` is False, so evaluation always reads "higher = more likely machine". Labels: 1 = machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from components.base import Component

METRICS = ("entropy", "max_log_prob", "next_token_log_prob", "quantile", "top_p")
AUX = ("log_prob_sq",)
PERFORMER_AUX = ("performer_log_prob", "cross_entropy")
OBSERVER_AUX = ("observer_log_prob",)


class FeatureError(ValueError):
    """Features that cannot be used: non-finite values, missing columns, mismatched shapes."""


@dataclass
class FeatureSet:
    """Ragged per-text features of N texts, held in memory (numpy)."""

    ids: list[str]
    n_tokens: np.ndarray  # (N,) tokens per text, BOS included
    metrics: list[np.ndarray]  # N x (T_i - 1, 5) float32
    aux: list[np.ndarray]  # N x (T_i - 1, A) float32
    aux_names: tuple[str, ...]
    vocab_size: int
    hidden: list[np.ndarray] | None = None  # N x (T_i, H) float16
    labels: np.ndarray | None = None  # (N,) 1 = machine, 0 = human
    extra: dict[str, list[Any]] = field(default_factory=dict)  # domain, generator, split, truncated, ...

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hidden_size(self) -> int:
        if not self.hidden:
            raise FeatureError("these features were loaded without hidden states")
        return int(self.hidden[0].shape[-1])

    def metric(self, name: str) -> list[np.ndarray]:
        """Per-text 1-D arrays of one metric or aux statistic."""
        if name in METRICS:
            j = METRICS.index(name)
            return [m[:, j] for m in self.metrics]
        if name in self.aux_names:
            j = self.aux_names.index(name)
            return [a[:, j] for a in self.aux]
        raise FeatureError(f"feature {name!r} is not in this cache (metrics: {', '.join(METRICS)}; "
                           f"aux: {', '.join(self.aux_names) or 'none'})")

    def subset(self, index: Sequence[int] | np.ndarray) -> "FeatureSet":
        idx = [int(i) for i in index]
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return FeatureSet(
            ids=pick(self.ids), n_tokens=self.n_tokens[idx], metrics=pick(self.metrics), aux=pick(self.aux),
            aux_names=self.aux_names, vocab_size=self.vocab_size,
            hidden=pick(self.hidden) if self.hidden is not None else None,
            labels=self.labels[idx] if self.labels is not None else None,
            extra={k: pick(v) for k, v in self.extra.items()},
        )

    def require_labels(self) -> np.ndarray:
        if self.labels is None:
            raise FeatureError("these features have no labels")
        return self.labels

    def check_finite(self) -> None:
        """Raise FeatureError naming the texts whose features hold NaN or inf."""
        bad = [i for i in range(len(self)) if not (np.isfinite(self.metrics[i]).all() and np.isfinite(self.aux[i]).all()
                                                    and (self.hidden is None or np.isfinite(self.hidden[i]).all()))]
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            shown = ", ".join(repr(self.ids[i]) for i in bad[:5]) + more
            raise FeatureError(f"non-finite (NaN/inf) features for {len(bad)} text(s): {shown}; the backbone "
                               "overflowed or has broken weights (try dtype float32)")


@dataclass
class DetectorState:
    """What ``fit`` learned: tensors (saved as safetensors) and JSON-friendly info (training history...)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Detector(Component):
    """Base class of detectors (family ``detector``)."""

    #: whether a larger native score means "more likely machine-generated"
    higher_is_machine: ClassVar[bool] = True
    #: whether ``fit`` learns parameters from labelled training data
    trainable: ClassVar[bool] = False
    #: whether the detector reads the backbone's hidden states (so the loader must read them)
    needs_hidden: ClassVar[bool] = False
    #: aux statistics it reads (the feature extractor must have written them)
    needs_aux: ClassVar[tuple[str, ...]] = ()
    #: code fingerprints follow imports (registry/sources.py); the feature extractor is not imported by detectors
    #: but defines what every detector sees (the tasks run it), so its source is declared part of their fingerprint
    fingerprint_modules: ClassVar[tuple[str, ...]] = ("components.detectors._features",)

    def fit(self, train: FeatureSet, valid: FeatureSet | None = None, *, progress: bool = False) -> DetectorState:
        """Learn from labelled features; zero-shot detectors learn nothing."""
        return DetectorState()

    def score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        """Native score per text, shape (N,)."""
        raise NotImplementedError

    def machine_score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        """Score oriented so that higher = more likely machine."""
        s = np.asarray(self.score(feats, state), dtype=np.float64)
        return s if self.higher_is_machine else -s

    def describe(self, feats: FeatureSet) -> dict[str, str]:
        """Notes on how the score was computed for these features (logged as run tags)."""
        return {}

    def check_features(self, feats: FeatureSet) -> None:
        missing = [a for a in self.needs_aux if a not in feats.aux_names]
        if missing:
            raise FeatureError(f"{self.component_name} needs aux feature(s) {', '.join(missing)}, which this cache "
                               f"lacks (it has: {', '.join(feats.aux_names) or 'none'})")
        if self.needs_hidden and feats.hidden is None:
            raise FeatureError(f"{self.component_name} needs hidden states; load the cache with hidden states")


def per_text_mean(values: list[np.ndarray]) -> np.ndarray:
    """Mean of each text's per-token values, shape (N,)."""
    return np.array([float(np.mean(v, dtype=np.float64)) if len(v) else float("nan") for v in values])


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); labels 1 = positive."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
