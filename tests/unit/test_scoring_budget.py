"""Scoring keeps the (B, T, V) logits of one forward under a fixed budget (Gemma-3's 262k vocabulary)."""

from components.benchmarks._scoring import LOGIT_BUDGET, fit_rows


def test_rows_shrink_with_vocabulary_and_width():
    assert fit_rows(16, 256, 320) == 16  # small vocabularies keep the requested batch
    assert fit_rows(16, 256, 262144) == LOGIT_BUDGET // (256 * 262144) == 2
    assert fit_rows(16, 100_000, 262144) == 1  # never zero
