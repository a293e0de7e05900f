"""Uncertainty of free-form answers (family ``uncertainty``): SAR (token-SAR, sentence-SAR, SAR) and its baselines
(predictive entropy, length-normalised PE, semantic entropy, lexical similarity), all scored from one cache of K
sampled generations per question (see :mod:`components.uncertainty.base`)."""
