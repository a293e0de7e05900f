"""head_mask equals its formulas: uniform attention over visible keys (Retrieval Head) or a zeroed head output."""

from __future__ import annotations

import pytest
import torch

import registry
from components.patches.head_mask import reference_uniform, reference_zero
from tests.helpers.compare import TOL, patched_vs_reference
from tests.helpers.tiny import FAMILIES, tiny_model


def heads_of(hm, layer, n_heads=4):
    return [h for h in range(n_heads) if (layer, h) in hm.heads]


def uniform_reference(hm):
    def edit(layer, probs, info):  # A'_ij = 1/|visible_i| for masked heads
        return reference_uniform(probs, info.visible, heads_of(hm, layer))

    return edit


def zero_reference(hm):
    def edit(layer, out, info):  # head output x 0
        return reference_zero(out, heads_of(hm, layer))

    return edit


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("force", [None, "materialize"])
def test_uniform_mask_matches_formula(family, force):
    hm = registry.get("head_mask").create({"heads": "0:1,1:2-3"})
    d = patched_vs_reference(tiny_model(family), [hm], edit_probs=uniform_reference(hm), force=force,
                             decode_steps=3)
    assert d["prefill"] <= TOL and d["decode"] <= TOL and d["effect"] > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_mask_matches_formula(family):
    hm = registry.get("head_mask").create({"heads": "0:0,1:*", "mode": "zero"})
    d = patched_vs_reference(tiny_model(family), [hm], edit_out=zero_reference(hm), decode_steps=3)
    assert d["prefill"] <= TOL and d["decode"] <= TOL and d["effect"] > 1e-3


def test_decode_phase_leaves_prefill_alone():
    model = tiny_model("llama")
    hm = registry.get("head_mask").create({"heads": "0:*,1:*", "phase": "decode"})
    ids = torch.randint(3, 300, (2, 10))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with hm.applied(model):
            prefill = model(input_ids=ids).logits
            gen = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        ref_gen = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(prefill, base)  # prefill untouched
    assert not torch.equal(gen, ref_gen)  # decoding changed (all heads uniform)
