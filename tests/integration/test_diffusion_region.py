"""RegionMask on a tiny random UNet: both paths equal a float64 reference computed in probability space
(p * exp(bias), renormalised), hard and soft; cells inside / outside a box; bad boxes are named."""

from __future__ import annotations

import pytest
import torch

from components.base import ParamError
from components.diffusion.dispatch import applied
from components.diffusion.region_mask import RegionMask, inside_box, reference_bias
from components.diffusion.runner import encode_prompts
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet
from tests.integration.test_diffusion_attention import _float64_reference, inputs


def test_inside_box_uses_cell_centres_row_major():
    cells = inside_box((0.0, 0.0, 0.5, 0.25), 4, 4).reshape(4, 4)
    assert cells.nonzero().tolist() == [[0, 0], [0, 1]]


@pytest.mark.parametrize("outside", [0.0, 0.3])
def test_region_mask_equals_float64_reference_on_both_paths(outside):
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    enc, words = encode_prompts(tok, te, ["a red triangle left of the circle", "a blue circle"])
    x, _ = inputs()
    comp = RegionMask(words=("triangle", "circle"), boxes=(0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 1.0, 1.0), outside=outside)
    outs = {}
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
        for force in (None, "materialize"):
            with applied(unet, comp, force=force) as session:
                session.runtime.set_word_tokens(words)
                outs[force] = unet(x, 5, encoder_hidden_states=enc).sample
    tri = torch.zeros(2, 12, dtype=torch.bool)
    tri[0, [3, 4]] = True
    circ = torch.zeros(2, 12, dtype=torch.bool)
    circ[0, 8] = True
    circ[1, 3] = True

    def edit(name, p):
        side = 4 if name.startswith("mid_block") else 8
        bias = reference_bias([tri, circ], comp.box_list(), side, side, outside)  # (B, 1, T, S)
        q = p * bias.exp()
        return q / q.sum(-1, keepdim=True)

    ref = _float64_reference(unet, x, enc, edit_cross=edit)
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    assert (outs[None] - plain).abs().max() > 1e-3


def test_region_mask_rejects_bad_boxes():
    with pytest.raises(ParamError, match="4 numbers for 2 words|2 words"):
        RegionMask(words=("a", "b"), boxes=(0, 0, 1, 1))
    with pytest.raises(ParamError, match="box 0 .circle."):
        RegionMask(words=("circle",), boxes=(0.5, 0, 0.2, 1))
    assert RegionMask.from_params(RegionMask.example).outside == 0.1
