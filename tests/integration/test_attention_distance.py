"""Attention distance per head of tiny ViT / CLIP / SigLIP vision encoders against a loop reference on stock eager
attention probabilities (float64 pixel distances written out with math.hypot)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.analyzers.attention_distance import AttentionDistance
from components.analyzers.base import AnalysisResult
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny import tiny_model
from tests.helpers.tiny_vlm import ENCODER_FAMILIES, tiny_encoder


def reference(model, pixels, n_prefix, grid, patch, n_bins):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(pixel_values=pixels, output_attentions=True,
                    interpolate_pos_encoding=pixels.shape[-1] != model.config.image_size).attentions
    model.set_attn_implementation("sdpa")
    rows, cols = grid
    n_p = rows * cols
    mean = np.zeros((len(att), att[0].shape[1]))
    prof = np.zeros((len(att), att[0].shape[1], n_bins))
    for layer, a in enumerate(att):
        for b in range(a.shape[0]):
            for h in range(a.shape[1]):
                for i in range(n_p):
                    row = a[b, h, n_prefix + i, n_prefix:].double()
                    row = row / row.sum()
                    for j in range(n_p):
                        d = math.hypot((i // cols - j // cols) * patch, (i % cols - j % cols) * patch)
                        mean[layer, h] += float(row[j]) * d
                        prof[layer, h, min(round(d / patch), n_bins - 1)] += float(row[j])
    scale = att[0].shape[0] * n_p
    return mean / scale, prof / scale


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_distance_equals_the_loop_reference(family):
    model = tiny_encoder(family)
    analyzer = AttentionDistance(n_images=3, batch_size=2, seed=4)
    rows = analyzer.build()
    result = analyzer.analyze(model, None, rows)
    pixels = analyzer.images(model.config, rows)
    n_prefix = 0 if family == "siglip_vision" else 1
    want_mean, want_prof = reference(model, pixels, n_prefix, (4, 4), 8, 6)  # ceil(hypot(3, 3)) + 1 bins
    assert result.arrays["mean_distance"].shape == (2, 2)
    np.testing.assert_allclose(result.arrays["mean_distance"], want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.arrays["profile"], want_prof, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.arrays["profile"].sum(-1), 1.0, atol=1e-6)
    assert result.arrays["mean_distance"].std() > 1e-3  # heads differ
    AnalysisResult.from_json(result.to_json())


def test_other_resolution_uses_its_own_grid():
    model = tiny_encoder("vit")
    analyzer = AttentionDistance(n_images=2, image_size=48)
    rows = analyzer.build()
    result = analyzer.analyze(model, None, rows)
    want_mean, _ = reference(model, analyzer.images(model.config, rows), 1, (6, 6), 8, 9)
    np.testing.assert_allclose(result.arrays["mean_distance"], want_mean, rtol=1e-5, atol=1e-5)


def test_text_models_are_refused():
    with pytest.raises(ValueError, match="needs a vision encoder"):
        AttentionDistance().analyze(tiny_model("llama"), None, [{"image_seed": 0}])
