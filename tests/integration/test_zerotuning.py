"""ZeroTuning equals its paper formula (scale a_0 by gamma, renormalise) on a materialised reference
(``components.patches.zerotuning.reference_probs``)."""

from __future__ import annotations

import pytest
import torch

import registry
from components.patches.zerotuning import reference_probs
from tests.helpers.compare import TOL, patched_vs_reference
from tests.helpers.reference import first_real
from tests.helpers.tiny import FAMILIES, tiny_model


def zt_reference(zt, n_heads):
    def edit(layer, probs, info):  # probs (B, H, T, S): a'_0 = g a_0 / D, a'_j = a_j / D
        heads = [h for h in range(n_heads) if (layer, h) in zt.heads]
        return reference_probs(probs, first_real(info, probs.shape[0]), heads, zt.gamma)

    return edit


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("force", [None, "channels", "materialize"])
def test_zerotuning_matches_formula(family, force):
    model = tiny_model(family)
    zt = registry.get("zerotuning").create({"gamma": "3", "heads": "0:1,1:*"})
    d = patched_vs_reference(model, [zt], zt_reference(zt, 4), force=force, decode_steps=4)
    assert d["prefill"] <= TOL and d["decode"] <= TOL and d["same_tokens"] == 1.0
    assert d["effect"] > 1e-3  # the patch changes the logits


def test_zerotuning_left_padding_targets_first_real_token():
    model = tiny_model("llama")
    zt = registry.get("zerotuning").create({"gamma": "5"})
    ids = torch.randint(3, 300, (1, 12))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], 1)
    with torch.no_grad(), zt.applied(model):
        plain = model(input_ids=ids).logits
        left = model(input_ids=padded, attention_mask=mask).logits[:, 4:]
    assert (plain - left).abs().max().item() < 1e-4  # same result as the unpadded row
