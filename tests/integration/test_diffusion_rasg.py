"""RASG (HD-Painter) on a tiny random UNet: a sampling run equals a float64 hand-written DDIM-with-guidance loop
(BCE of the cross-attention logits against the mask, normalised gradient as the DDIM noise), eta 0 equals the plain
sampler bit for bit with no extra pass, bad parameters and an unwrapped scheduler are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.attention_processor import AttnProcessor

from components.base import ParamError
from components.diffusion.dispatch import applied
from components.diffusion.rasg import RASG
from components.diffusion.runner import encode_prompts, sample
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet

BOX = (0.25, 0.0, 1.0, 0.75)


def _ddim():
    return DDIMScheduler(num_train_timesteps=50, clip_sample=False)


class _Logits(AttnProcessor):
    """Stock attention that also records the raw cross-attention logits q k^T * scale on the 8x8 grid."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if encoder_hidden_states is not None and hidden_states.shape[1] == 64:
            b = hidden_states.shape[0]
            q = attn.to_q(hidden_states).view(b, 64, attn.heads, -1).transpose(1, 2)
            k = attn.to_k(encoder_hidden_states).view(b, -1, attn.heads, q.shape[-1]).transpose(1, 2)
            self.store.append(q @ k.transpose(-1, -2) * attn.scale)  # (B, H, T, L)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _hand_written(cond, uncond, tokens, eta, steps, seed, cfg):
    """float64: x_{t-1} = DDIM(eta) with variance noise -grad L / std, L = sum_k BCE(sim_k - 1, box region)."""
    unet = tiny_unet(torch.float64)
    store: list = []
    unet.set_attn_processor(_Logits(store))
    cond, uncond = cond.double(), uncond.double()
    c = (torch.arange(8, dtype=torch.float64) + 0.5) / 8
    region = (((c >= 0.0) & (c < 0.75))[:, None] & ((c >= 0.25) & (c < 1.0))[None, :]).reshape(-1).double()
    sched = _ddim()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 3, 8, 8), generator=gen, dtype=torch.float32).double() * sched.init_noise_sigma
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        store.clear()
        xg = x.clone().requires_grad_(True)
        unet(xg, t, encoder_hidden_states=cond)
        sim = torch.cat(store, 1).mean(1)[0]  # (T, L): mean over the three 8x8 calls and their heads
        loss = sum(F.binary_cross_entropy_with_logits(sim[:, k] - 1.0, region) for k in tokens)
        (grad,) = torch.autograd.grad(loss, xg)
        with torch.no_grad():
            eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        eps = eps_u + cfg * (eps_c - eps_u)
        noise = -grad / grad.std()
        x = sched.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    return x


def _prompts():
    tok, te = tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle"])
    uncond, _ = encode_prompts(tok, te, [""])
    return cond, uncond, words


def test_rasg_sampling_equals_float64_hand_written_ddim_with_guidance():
    unet = tiny_unet()
    cond, uncond, words = _prompts()
    rasg = RASG(eta=0.8, box=BOX, factors=(1,))
    out = sample(unet, rasg.scheduler(_ddim()), cond, uncond=uncond, cfg_scale=2.5, components=[rasg],
                 word_tokens=words, steps=3, seed=7)
    ref = _hand_written(cond, uncond, [1, 2, 3, 4], 0.8, 3, 7, 2.5)  # "a red circle" + end-of-text
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)
    plain = sample(unet, _ddim(), cond, uncond=uncond, cfg_scale=2.5, word_tokens=words, steps=3, seed=7)
    assert (out - plain).abs().max() > 1e-3  # the guided noise is not a no-op
    assert not unet._forward_pre_hooks and not rasg._pending


def test_rasg_eta_zero_equals_plain_ddim_bit_for_bit_without_a_pass():
    unet = tiny_unet()
    cond, uncond, words = _prompts()
    kw = dict(uncond=uncond, cfg_scale=2.0, word_tokens=words, steps=3, seed=1)
    plain = sample(unet, _ddim(), cond, **kw)
    calls = []
    handle = unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    rasg = RASG(eta=0.0, box=BOX, factors=(1,))
    zero = sample(unet, rasg.scheduler(_ddim()), cond, components=[rasg], **kw)
    handle.remove()
    assert torch.equal(zero, plain) and calls == [2, 2, 2]


def test_rasg_refuses_bad_parameters_and_a_scheduler_it_cannot_guide():
    unet = tiny_unet()
    cond, uncond, words = _prompts()
    before = dict(unet.attn_processors)
    with pytest.raises(ParamError, match="rasg.eta"):
        RASG(eta=-1.0, box=BOX)
    with pytest.raises(ParamError, match="rasg.factors"):
        RASG(box=BOX, factors=())
    with pytest.raises(ParamError, match="rasg.box"):
        RASG(box=(0.2, 0.2, 0.1, 0.9))
    with pytest.raises(ParamError, match="region to fill"):
        with applied(unet, RASG()):
            pass
    with pytest.raises(ValueError, match="RASG guides a DDIM step"):
        RASG(box=BOX).scheduler(DDPMScheduler(num_train_timesteps=50))
    with pytest.raises(ParamError, match="0 \\(keep\\) or 1"):
        RASG().with_mask(torch.full((8, 8), 0.3))
    assert all(unet.attn_processors[k] is before[k] for k in before)
    rasg = RASG(eta=0.5, box=BOX, factors=(1,))
    with pytest.raises(ValueError, match="RASG guides a DDIM step"):  # the samplers wrap; only DDIM can be
        sample(unet, DDPMScheduler(num_train_timesteps=50), cond, components=[rasg], word_tokens=words, steps=2)
    with pytest.raises(ValueError, match="another RASG component"):
        sample(unet, RASG(eta=0.5, box=BOX).scheduler(_ddim()), cond, components=[rasg], word_tokens=words, steps=2)
    assert all(unet.attn_processors[k] is before[k] for k in before) and not unet._forward_pre_hooks


def test_the_samplers_wrap_a_plain_ddim_scheduler_themselves():
    """sample(plain DDIM, [rasg]) == sample(rasg.scheduler(DDIM), [rasg]) bit for bit (the flows pass plain ones)."""
    unet = tiny_unet()
    cond, uncond, words = _prompts()
    rasg = RASG(eta=0.8, box=BOX, factors=(1,))
    kw = dict(uncond=uncond, cfg_scale=2.5, components=[rasg], word_tokens=words, steps=3, seed=7)
    assert torch.equal(sample(unet, _ddim(), cond, **kw), sample(unet, rasg.scheduler(_ddim()), cond, **kw))


def test_rasg_tensor_mask_matches_the_box():
    unet = tiny_unet()
    cond, uncond, words = _prompts()
    mask = torch.zeros(8, 8)
    mask[0:6, 2:8] = 1  # the cells of BOX on the 8x8 grid
    outs = []
    for rasg in (RASG(eta=0.6, box=BOX, factors=(1,)), RASG(eta=0.6, factors=(1,)).with_mask(mask)):
        outs.append(sample(unet, rasg.scheduler(_ddim()), cond, components=[rasg], word_tokens=words, steps=2,
                           seed=3))
    assert torch.equal(outs[0], outs[1])
