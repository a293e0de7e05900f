"""VHR (vision-aware head reinforcement, arXiv 2412.13949) on tiny VLMs: on a paired batch (rows with the image and
their text-only twins, built by ``paired_batch``) the patch equals a float64 loop reference of the formula at
prefill and at every greedy decoding step, the twins stay in lockstep and are never edited."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from components.attention import vision
from components.attention.session import applied
from components.base import ParamError
from components.patches.vhr import PairedTokens, VisionAwareHeadReinforcement, paired_batch, select_heads
from tests.helpers.compare import TOL
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny_vlm import tiny_vlm, vlm_batch
from tests.helpers.vlm_reference import vlm_reference

STEPS = 3
FAMILIES = ("llava", "idefics3", "qwen2_vl")


def vhr_reference(alpha, fraction, chosen_log):
    def edit(layer, out, info):
        out = out.clone()
        half = out.shape[0] // 2
        qi = info.q_len - 1  # left padding: the current token is last in every row
        for b in range(half):
            vhd = np.array([float(torch.linalg.norm(out[b, h, qi] - out[half + b, h, qi]))
                            for h in range(out.shape[1])])
            q1, q3 = np.quantile(vhd, [0.25, 0.75])
            kept = [h for h in range(len(vhd)) if vhd[h] <= q3 + 1.5 * (q3 - q1)]
            top = sorted(kept, key=lambda h: -vhd[h])[: int(np.ceil(fraction * len(kept)))]
            chosen_log.append((layer, b, tuple(sorted(top))))
            for h in top:
                out[b, h, qi] = out[b, h, qi] * alpha
        return out
    return edit


def _paired(family):
    model = tiny_vlm(family)
    inputs, expected = vlm_batch(family)
    layout = vision.layout_of(model.config)
    paired = paired_batch(inputs, layout)
    return model, paired, layout.image_tokens(paired["input_ids"])


@torch.no_grad()
def _run(model, inputs, patch=None):
    def go():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0,
                             logits_processor=LogitsProcessorList([PairedTokens()]))
        return logits, out.sequences, torch.stack(out.logits, 1)
    if patch is None:
        return go()
    with applied(model, patch):
        return go()


def test_paired_batch_twins_are_the_text_without_image_tokens():
    model, paired, image = _paired("llava")
    inputs, _ = vlm_batch("llava")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert torch.equal(paired["input_ids"][:2], ids) and not image[2:].any() and image[:2].any(1).all()
    for b in range(2):
        want = ids[b][mask[b].bool() & (ids[b] != 300)]
        got = paired["input_ids"][2 + b][paired["attention_mask"][2 + b].bool()]
        assert torch.equal(got, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_vhr_equals_the_reference(family):
    model, paired, image = _paired(family)
    patch = VisionAwareHeadReinforcement(alpha=2.0, fraction=0.5)
    got = _run(model, paired, patch)
    chosen = []
    with vlm_reference(model, image, edit_out=vhr_reference(2.0, 0.5, chosen)):
        ref = _run(model, paired)
    valid = paired["attention_mask"].bool()
    assert (got[0] - ref[0])[valid].abs().max() <= TOL, "prefill"
    assert torch.equal(got[1], ref[1]) and (got[2] - ref[2]).abs().max() <= TOL, "decode"
    assert torch.equal(got[1][:2, -STEPS:], got[1][2:, -STEPS:])  # the twins decode their partners' tokens
    assert {len(c[2]) for c in chosen} == {2}  # 4 heads, none an outlier here: the top 2 each time
    plain = _run(model, paired)
    assert (got[0] - plain[0])[:2][valid[:2]].abs().max() > 1e-3
    # the twins' prefill is untouched by the patch (nothing above them is reinforced)
    assert (got[0] - plain[0])[2:][valid[2:]].abs().max() <= TOL


def test_select_heads_drops_outliers_before_the_top_half():
    vhd = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0], [5.0, 1.0, 4.0, 2.0, 3.0]])
    assert select_heads(vhd, 0.5).tolist() == [[False, False, True, True, False],
                                                [True, False, True, False, True]]


def test_unpaired_batches_and_bad_parameters_are_refused():
    model = tiny_vlm("llava")
    inputs, _ = vlm_batch("llava")
    with pytest.raises(ValueError, match="paired batch"):
        _run(model, inputs, VisionAwareHeadReinforcement())
    with pytest.raises(ParamError, match="vhr.fraction"):
        VisionAwareHeadReinforcement(fraction=0)
