"""Binoculars: perplexity relative to cross-perplexity between an observer and a performer model.

    log PPL(s)   = -(1/L) sum_t log M_ppl(x_t | x_<t)
    log X-PPL(s) = -(1/L) sum_t sum_v M_obs(v | x_<t) log M_perf(v | x_<t)
    B(s)         = log PPL(s) / log X-PPL(s)                     lower = more likely machine

Observer and performer default to the backbone the features were extracted with; either can be another model
sharing its tokenizer (``--observer``, ``--performer``; a pair with different tokenizers is refused before any
weights load). When the feature cache holds the pair statistics (aux ``performer_log_prob`` and
``cross_entropy``, plus ``observer_log_prob`` when the observer is not the backbone), that pair is used;
otherwise observer = performer = backbone, so X-PPL is the mean next-token entropy and B is the mean negative
log-likelihood divided by the mean entropy (single-model Binoculars: what runs when one model is available;
``describe`` says which one ran, and the run records the model names).

Based on Hans et al., "Spotting LLMs With Binoculars: Zero-Shot Detection of Machine-Generated Text"
(arXiv 2401.12070). Reference code: https://github.com/ahans30/Binoculars (``binoculars/detector.py``,
``binoculars/metrics.py``).

Deviations from the reference code: the default models are Falcon-7B / Falcon-7B-instruct there, here the
backbone (and the optional performer); ``ppl_model`` chooses which model's log-likelihood makes the PPL term: the
reference code uses the performer's logits (``performer``, the default here), the paper writes the observer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from components.detectors.base import OBSERVER_AUX, PERFORMER_AUX, Detector, DetectorState, FeatureSet, per_text_mean
from registry import register


@register("binoculars", version="1.1.0", family="detector", paper="arXiv:2401.12070",
          summary="Zero-shot: log-perplexity / cross-perplexity of observer and performer (lower = machine).")
@dataclass(frozen=True)
class Binoculars(Detector):
    """Binoculars score (observer = backbone; performer = cached second model, else the backbone).

    Parameters
    ----------
    ppl_model : str
        Which model scores the PPL term when a performer is cached: ``performer`` (reference code) or ``observer``
        (paper). Default ``performer``.
    """

    ppl_model: Literal["performer", "observer"] = "performer"

    higher_is_machine: ClassVar[bool] = False
    example: ClassVar[dict[str, str]] = {"ppl_model": "observer"}

    @staticmethod
    def has_performer(feats: FeatureSet) -> bool:
        return all(a in feats.aux_names for a in PERFORMER_AUX)

    def describe(self, feats: FeatureSet) -> dict[str, str]:
        if self.has_performer(feats):
            obs = "cached observer" if OBSERVER_AUX[0] in feats.aux_names else "backbone"
            return {"binoculars.models": f"two models: observer={obs}, performer=cached performer "
                    f"(or the backbone when only an observer was given), ppl={self.ppl_model}"}
        return {"binoculars.models": "observer=performer=backbone (single model: B = mean NLL / mean entropy)"}

    def score(self, feats: FeatureSet, state: DetectorState | None = None) -> np.ndarray:
        if self.has_performer(feats):
            cross = per_text_mean(feats.metric("cross_entropy"))
            observer_ll = OBSERVER_AUX[0] if OBSERVER_AUX[0] in feats.aux_names else "next_token_log_prob"
            ll = feats.metric("performer_log_prob" if self.ppl_model == "performer" else observer_ll)
        else:
            cross = per_text_mean(feats.metric("entropy"))
            ll = feats.metric("next_token_log_prob")
        return -per_text_mean(ll) / np.maximum(cross, 1e-12)
