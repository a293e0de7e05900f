"""The minimal sampling loop (components/diffusion/runner.py) on a tiny random UNet: guidance weight 0 equals the
plain pipeline bit for bit, the extra pass is run only when declared and weighted, the guided step equals a
hand-written one, and SoftPAG at strength 1 equals diffusers' own PAG identity processor."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.attention_processor import PAGIdentitySelfAttnProcessor2_0

from components.diffusion.dispatch import applied
from components.diffusion.runner import encode_prompts, sample
from components.diffusion.softpag import SoftPAG
from components.diffusion.word_reweight import WordReweight
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet


def _count_forwards(unet):
    calls = []
    handle = unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return calls, handle


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DDPMScheduler])
def test_guidance_weight_zero_equals_plain_bit_for_bit(scheduler_cls):
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle", "a blue square"])
    uncond, _ = encode_prompts(tok, te, [""])
    kw = dict(uncond=uncond, cfg_scale=2.0, word_tokens=words, steps=3, seed=4)
    plain = sample(unet, scheduler_cls(num_train_timesteps=50), cond, **kw)
    calls, handle = _count_forwards(unet)
    zero = sample(unet, scheduler_cls(num_train_timesteps=50), cond, components=[SoftPAG(scale=0.0)], **kw)
    handle.remove()
    assert torch.equal(zero, plain)
    assert calls == [4, 4, 4]  # one CFG pass per step, no extra pass
    calls, handle = _count_forwards(unet)
    guided = sample(unet, scheduler_cls(num_train_timesteps=50), cond, components=[SoftPAG(scale=2.0)], **kw)
    handle.remove()
    assert calls == [4, 2] * 3  # the declared extra pass over the conditional rows
    assert (guided - plain).abs().max() > 1e-4


def test_guided_step_equals_hand_written_pag_step():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, _ = encode_prompts(tok, te, ["a red circle"])
    uncond, _ = encode_prompts(tok, te, [""])
    comp = SoftPAG(strength=0.6, scale=1.5, blocks=("mid_block", "up_blocks.1"))
    out = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, uncond=uncond, cfg_scale=3.0,
                 components=[comp], steps=1, seed=9)

    sched = DDIMScheduler(num_train_timesteps=50)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn((1, 3, 8, 8), generator=gen) * sched.init_noise_sigma
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    with torch.no_grad(), applied(unet, comp) as session:
        eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        with session.runtime.pass_of("perturbed", comp):
            eps_p = unet(x, t, encoder_hidden_states=cond).sample
    eps = eps_u + 3.0 * (eps_c - eps_u) + 1.5 * (eps_c - eps_p)
    expected = sched.step(eps, t, x, generator=gen).prev_sample
    assert torch.equal(out, expected)


def test_softpag_strength_one_equals_diffusers_pag_identity_processor():
    unet = tiny_unet()
    g = torch.Generator().manual_seed(2)
    x, enc = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 12, 16, generator=g)
    comp = SoftPAG(strength=1.0, blocks=("mid_block",))
    with torch.no_grad():
        with applied(unet, comp) as session, session.runtime.pass_of("perturbed", comp):
            ours = unet(x, 5, encoder_hidden_states=enc).sample
        originals = dict(unet.attn_processors)
        procs = {k: (PAGIdentitySelfAttnProcessor2_0() if k.startswith("mid_block") and ".attn1." in k else p)
                 for k, p in originals.items()}
        unet.set_attn_processor(procs)
        theirs = unet(torch.cat([x, x]), 5, encoder_hidden_states=torch.cat([enc, enc])).sample[1:]
        unet.set_attn_processor(originals)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_runner_feeds_word_tokens_and_rejects_missing_ones():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle"])
    uncond, _ = encode_prompts(tok, te, [""])
    comp = WordReweight(words=("circle",), scale=4.0)
    plain = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, uncond=uncond, cfg_scale=2.0, steps=2)
    steered = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, uncond=uncond, cfg_scale=2.0, steps=2,
                     components=[comp], word_tokens=words)
    assert (steered - plain).abs().max() > 1e-4
    with pytest.raises(ValueError, match="word_reweight read prompt-word positions"):
        sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[comp], steps=1)
    with pytest.raises(ValueError, match="word_tokens has 2 entries for 1 prompts"):
        sample(unet, DDIMScheduler(num_train_timesteps=50), cond, word_tokens=words * 2, steps=1)


def test_calls_see_the_step_index_and_count():
    from tests.integration.test_diffusion_attention import _Recorder
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, _ = encode_prompts(tok, te, ["a red circle"])
    rec = _Recorder()
    sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[rec], steps=3)
    per_step = len(unet.attn_processors)
    assert [c.step for c in rec.calls] == [i for i in range(3) for _ in range(per_step)]
    assert {c.n_steps for c in rec.calls} == {3}
