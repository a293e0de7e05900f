"""CrossAttentionMaps on a tiny random UNet: the recorded per-word maps equal head-averaged float64 reference maps,
and they see the probabilities other components produced; the runner's test-time latent update (the capability
A-STAR-style methods use) equals a hand-written gradient step."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
from diffusers import DDIMScheduler

from components.diffusion import word_reweight as wr
from components.diffusion.cross_maps import CrossAttentionMaps
from components.diffusion.dispatch import applied
from components.diffusion.runner import encode_prompts, sample
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


@dataclasses.dataclass(frozen=True)
class _Excite(CrossAttentionMaps):
    """Test-only updater: raise the strongest attention on "circle" (Attend-and-Excite's shape, no smoothing)."""

    needs_latent_update: ClassVar[bool] = True

    def latent_update_steps(self) -> int:
        return 1

    def begin_update(self, session) -> None:
        self.reset(session)

    def latent_loss(self, session) -> torch.Tensor:
        return -self.maps(session, spatial=(8, 8))["circle"].amax(dim=(-1, -2)).sum()

    def latent_step_size(self, step: int, n_steps: int) -> float:
        return 0.05


def test_runner_latent_update_equals_hand_written_and_lowers_the_loss():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle", "a blue circle and the square"])
    comp = _Excite(words=("circle",))
    out = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[comp], word_tokens=words, steps=1,
                 seed=6)

    sched = DDIMScheduler(num_train_timesteps=50)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn((2, 3, 8, 8), generator=gen) * sched.init_noise_sigma
    sched.set_timesteps(1)
    t = sched.timesteps[0]

    def loss_at(latent, session):
        comp.begin_update(session)
        session.runtime.set_word_tokens(words)
        unet(sched.scale_model_input(latent, t), t, encoder_hidden_states=cond)
        return comp.latent_loss(session)

    with applied(unet, comp) as session:
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_at(xg, session), xg)
        x1 = (x - 0.05 * grad).detach()
        with torch.no_grad():
            before, after = loss_at(x, session), loss_at(x1, session)
            session.runtime.set_word_tokens(words)
            eps = unet(sched.scale_model_input(x1, t), t, encoder_hidden_states=cond).sample
    expected = sched.step(eps, t, x1, generator=gen).prev_sample
    assert grad.abs().max() > 0
    assert after < before  # the update moves against the loss gradient
    assert torch.equal(out, expected)
