"""CrossAttentionMaps on a tiny random UNet: the recorded per-word maps equal head-averaged float64 reference maps,
and they see the probabilities other components produced."""

from __future__ import annotations

import pytest
import torch

from components.diffusion import word_reweight as wr
from components.diffusion.cross_maps import CrossAttentionMaps
from components.diffusion.dispatch import applied
from components.diffusion.runner import encode_prompts
from components.diffusion.word_reweight import WordReweight
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet
from tests.integration.test_diffusion_attention import _float64_reference, inputs


@pytest.mark.parametrize("with_reweight", [False, True])
def test_cross_maps_equal_float64_reference(with_reweight):
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    enc, words = encode_prompts(tok, te, ["a red triangle left of the circle", "a blue circle"])
    x, _ = inputs()
    maps = CrossAttentionMaps(words=("triangle", "circle"))
    comps = [WordReweight(words=("circle",), scale=2.5), maps] if with_reweight else [maps]
    with torch.no_grad(), applied(unet, *comps) as session:
        session.runtime.set_word_tokens(words)
        unet(x, 5, encoder_hidden_states=enc)
        got = maps.maps(session)
        got_mid = maps.maps(session, spatial=(4, 4))
        with pytest.raises(ValueError, match="recorded grids"):
            maps.maps(session, spatial=(2, 2))

    tri = torch.zeros(2, 12, dtype=torch.bool)
    tri[0, [3, 4]] = True
    circ = torch.zeros(2, 12, dtype=torch.bool)
    circ[0, 8] = True
    circ[1, 3] = True
    seen: dict[str, list] = {}

    def record(name, p):
        if with_reweight:
            p = wr.reference_probs(p, circ, 2.5, "logit")
        side = 4 if name.startswith("mid_block") else 8
        for word, mask in (("triangle", tri), ("circle", circ)):
            m = (p * mask[:, None, None, :]).sum(-1).mean(1).reshape(2, side, side)  # (B, h, w)
            seen.setdefault((word, side), []).append(m)
        return p

    _float64_reference(unet, x, enc, edit_cross=record)
    for word in ("triangle", "circle"):
        torch.testing.assert_close(got[word].double(), torch.stack(seen[(word, 8)]).mean(0), rtol=0, atol=1e-5)
        torch.testing.assert_close(got_mid[word].double(), torch.stack(seen[(word, 4)]).mean(0), rtol=0, atol=1e-5)
    # 8x8 grid: one down-block attention + two up-block attentions (layers_per_block + 1); row 1 has no triangle
    assert len(seen[("circle", 8)]) == 3 and got["triangle"][1].abs().max() == 0


def test_cross_maps_without_calls_names_the_problem():
    unet = tiny_unet()
    maps = CrossAttentionMaps(words=("red",))
    with applied(unet, maps) as session, pytest.raises(ValueError, match="recorded nothing"):
        maps.maps(session)
