"""Visual logit boost (arXiv 2501.12206) on tiny VLMs: the fast path (fused SDPA + one recomputed row) equals the
materialised path and a float64 reference written from the formula, on ragged left-padded batches, prefill and
KV-cache decode steps; token selection from CLS attention equals a loop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.attention.session import applied
from components.patches.visual_boost import VisualLogitBoost, cls_attention, select_tokens
from tests.helpers.compare import TOL
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny import tiny_model
from tests.helpers.tiny_vlm import DECODER_FAMILIES, tiny_vlm, vlm_batch
from tests.helpers.vlm_reference import vlm_reference

STEPS = 3


def boost_reference(alpha, beta, start_layer, top=None, bottom=None):
    """edit_logits for the reference: loops over rows, heads and keys of the last query row."""
    def edit(layer, logits, info):
        if layer < start_layer:
            return logits
        logits = logits.clone()
        image = info.image_keys(info.kv_len) if callable(info.image_keys) else info.image_keys
        for b in range(logits.shape[0]):
            qi = info.q_len - 1  # left padding: the last query is the last real token
            for j in range(info.kv_len):
                if not image[b, j] or not info.visible[b, 0, qi, j]:
                    continue
                pos = j  # key j is absolute position j (no window)
                if bottom is not None and pos < bottom.shape[1] and bottom[b, pos]:
                    c = beta
                elif top is None or (pos < top.shape[1] and top[b, pos]):
                    c = alpha
                else:
                    continue
                for h in range(logits.shape[1]):
                    logits[b, h, qi, j] = logits[b, h, qi, j] + c * abs(logits[b, h, qi, j])
        return logits
    return edit


@torch.no_grad()
def _run(model, inputs, patch=None, force=None, sel=None):
    def go():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        return logits, out.sequences, torch.stack(out.logits, 1)
    if patch is None:
        return go()
    with applied(model, patch, force=force) as session:
        session.set_inputs(**(sel or {}))
        return go()


def _ref(model, inputs, expected, edit):
    with vlm_reference(model, expected, edit_logits=edit):
        return _run(model, inputs)


def _close(got, want, what):
    valid = got[0].new_ones(got[0].shape[:2], dtype=torch.bool)
    assert (got[0] - want[0])[valid].abs().max() <= TOL, (what, "prefill")
    assert torch.equal(got[1], want[1]), (what, "tokens")
    assert (got[2] - want[2]).abs().max() <= TOL, (what, "decode")


@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_all_image_tokens_fast_equals_materialised_and_reference(family):
    model = tiny_vlm(family)
    inputs, expected = vlm_batch(family)
    patch = VisualLogitBoost(alpha=0.7, start_layer=1, selection="all")
    fast = _run(model, inputs, patch)
    mat = _run(model, inputs, patch, force="materialize")
    ref = _ref(model, inputs, expected, boost_reference(0.7, 0.3, 1))
    valid = inputs["attention_mask"].bool()
    for got, what in ((fast, "fast"), (mat, "materialised")):
        assert (got[0] - ref[0])[valid].abs().max() <= TOL, (family, what, "prefill")
        assert torch.equal(got[1], ref[1]), (family, what, "tokens")
        assert (got[2] - ref[2]).abs().max() <= TOL, (family, what, "decode")
    plain = _run(model, inputs)
    assert (fast[0] - plain[0])[valid].abs().max() > 1e-3  # the patch acts
    assert (fast[0][:, :-1] - plain[0][:, :-1])[valid[:, :-1]].abs().max() <= TOL  # only on the last row


def test_top_and_bottom_selection_from_cls_attention():
    model = tiny_vlm("llava")
    inputs, expected = vlm_batch("llava")
    first, penult = cls_attention(model.model.vision_tower, inputs["pixel_values"], layers=(0, -2))
    top, bottom = select_tokens(first, penult, expected, top_fraction=0.25)
    assert 0 < top.sum() <= 3 * 4 and not (top & bottom).any()  # <= 3 images x ceil(0.25 * 16) patches
    # loop reference of the selection
    flat_top, flat_bottom = [], []
    for img_first, img_pen in zip(first.numpy(), penult.numpy()):
        order = np.argsort(-img_first, kind="stable")[:4]
        q1, q3 = np.quantile(img_pen, [0.25, 0.75])
        bot = img_pen > q3 + 1.5 * (q3 - q1)
        flat_bottom += bot.tolist()
        flat_top += [(i in order) and not bot[i] for i in range(16)]
    assert top[expected].tolist() == flat_top and bottom[expected].tolist() == flat_bottom
    assert not top[~expected].any() and not bottom[~expected].any()
    bottom = bottom.clone()
    bottom[0, expected[0].nonzero()[5, 0]] = True  # make sure the bottom branch (beta) is exercised
    patch = VisualLogitBoost(alpha=0.7, beta=0.3, start_layer=0)
    sel = {"visual_top": top, "visual_bottom": bottom}
    fast = _run(model, inputs, patch, sel=sel)
    mat = _run(model, inputs, patch, force="materialize", sel=sel)
    ref = _ref(model, inputs, expected, boost_reference(0.7, 0.3, 0, top=top & ~bottom, bottom=bottom))
    _close(fast, ref, "fast")
    _close(mat, ref, "materialised")


def test_bad_inputs_are_named():
    model = tiny_vlm("llava")
    inputs, _ = vlm_batch("llava")
    with pytest.raises(ValueError, match="start_layer: 2 >= the model's 2 layers"):
        _run(model, inputs, VisualLogitBoost())
    with pytest.raises(ValueError, match="visual_top"):
        _run(model, inputs, VisualLogitBoost(start_layer=1))
    with pytest.raises(ValueError, match="has shape"):
        _run(model, inputs, VisualLogitBoost(start_layer=1), sel={"visual_top": torch.zeros(3, 4, dtype=torch.bool),
                                                     "visual_bottom": torch.zeros(3, 4, dtype=torch.bool)})
    text = tiny_model("llama")
    ids = torch.randint(3, 300, (2, 12))
    with pytest.raises(ValueError, match="acts on image tokens"):
        with applied(text, VisualLogitBoost(selection="all", start_layer=0)), torch.no_grad():
            text(input_ids=ids)
    with pytest.raises(ValueError, match="do not fill"):
        select_tokens(torch.rand(2, 16), torch.rand(2, 16), torch.ones(1, 20, dtype=torch.bool))
