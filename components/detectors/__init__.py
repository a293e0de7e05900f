"""AI-text detectors (family ``detector``): PAWN and zero-shot / feature baselines, all scored from the same
cached per-token features of one frozen causal LM (see :mod:`components.detectors.base`)."""
