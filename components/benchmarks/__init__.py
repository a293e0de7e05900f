"""Evaluation tasks (family ``benchmark``): versioned, deterministic for their parameters, scored by the
evaluate flow."""
