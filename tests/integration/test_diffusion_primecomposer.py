"""PrimeComposer on a tiny random UNet: the correlation pass (object-only self-attention) and the generator's
steered self-attention + region-constrained cross-attention equal a float64 UNet written from the formulas, on both
paths; the compose loop with no steering equals the plain sampler bit for bit, runs one correlation pass per steered
step and keeps the background of the composite; missing passes, row mismatches and bad parameters are named; the
scope is restored after exit and after an error."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.attention_processor import AttnProcessor

from components.base import ParamError
from components.diffusion.dispatch import applied
from components.diffusion.primecomposer import PrimeComposer, compose
from components.diffusion.runner import encode_prompts, sample
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet

BOX = (0.0, 0.25, 0.5, 0.75)


def _cells(h, w):
    """Object cells of BOX, written out: rows 1..2 (of 4) / 2..5 (of 8), left half."""
    grid = torch.zeros(h, w, dtype=torch.bool)
    grid[h // 4: 3 * h // 4, : w // 2] = True
    return grid.reshape(-1)


def _run64(x, enc, hook):
    unet = tiny_unet(torch.float64)
    names = [k.removesuffix(".processor") for k in unet.attn_processors]

    class Ref(AttnProcessor):
        def __init__(self, name):
            self.layer = names.index(name)

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            cross = encoder_hidden_states is not None
            ctx = encoder_hidden_states if cross else hidden_states
            b = hidden_states.shape[0]
            d = attn.to_q.out_features // attn.heads
            q = attn.to_q(hidden_states).view(b, -1, attn.heads, d).transpose(1, 2)
            k = attn.to_k(ctx).view(b, -1, attn.heads, d).transpose(1, 2)
            v = attn.to_v(ctx).view(b, -1, attn.heads, d).transpose(1, 2)
            logits = hook(self.layer, cross, q @ k.transpose(-1, -2) * attn.scale)
            o = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, -1, attn.heads * d)
            return attn.to_out[1](attn.to_out[0](o))

    unet.set_attn_processor({k: Ref(k.removesuffix(".processor")) for k in unet.attn_processors})
    with torch.no_grad():
        return unet(x.double(), 5, encoder_hidden_states=enc.double()).sample


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_correlation_pass_and_steering_equal_float64_reference(strength):
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle and the square", "a blue circle"])
    uncond, _ = encode_prompts(tok, te, [""])
    g = torch.Generator().manual_seed(8)
    x_ref, x = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    enc_both = torch.cat([uncond.expand(2, -1, -1), cond])
    comp = PrimeComposer(box=BOX, words=("circle",), strength=strength)
    outs = {}
    with torch.no_grad():
        plain = unet(torch.cat([x, x]), 5, encoder_hidden_states=enc_both).sample
        for force in (None, "materialize"):
            with applied(unet, comp, force=force) as session:
                session.runtime.set_word_tokens(words)
                with comp.recording(session):
                    unet(x_ref, 5, encoder_hidden_states=cond)
                session.runtime.set_word_tokens([[], []] + words)
                outs[force] = unet(torch.cat([x, x]), 5, encoder_hidden_states=enc_both).sample

    store = {}

    def record(layer, cross, logits):
        if cross:
            return logits
        obj = _cells(*[int(round(logits.shape[2] ** 0.5))] * 2)
        store[layer] = logits[..., obj]
        return logits.masked_fill(~obj[None, None, None, :], float("-inf"))

    def steer(layer, cross, logits):
        side = int(round(logits.shape[2] ** 0.5))
        obj = _cells(side, side)
        out = logits.clone()
        if cross:  # "circle" is token 3 in both prompts; rows 2, 3 are the conditional ones
            out[2:, :, ~obj, 3] = float("-inf")
            return out
        s = store[layer]  # (2, H, T, n)
        cond_rows = out[2:]
        cond_rows[..., obj] = strength * s + (1 - strength) * cond_rows[..., obj]
        cond_rows[..., obj, :] = strength * s.transpose(-1, -2) + (1 - strength) * cond_rows[..., obj, :]
        out[2:] = cond_rows
        return out

    _run64(x_ref, cond, record)
    ref = _run64(torch.cat([x, x]), enc_both, steer)
    assert [w for w, p in words[0] if 3 in p] == ["circle"] and [w for w, p in words[1] if 3 in p] == ["circle"]
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(outs[None][:2], plain[:2], rtol=0, atol=1e-5)  # unconditional rows: not steered
    assert (outs[None][2:] - plain[2:]).abs().max() > 1e-3


def _count(unet):
    calls = []
    return calls, unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, DDPMScheduler])
def test_compose_without_steering_equals_the_plain_sampler_bit_for_bit(scheduler_cls):
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle"])
    uncond, _ = encode_prompts(tok, te, [""])
    composite = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    kw = dict(uncond=uncond, cfg_scale=2.5, word_tokens=words, steps=3, seed=7)
    plain = sample(unet, scheduler_cls(num_train_timesteps=50), cond, **kw)
    calls, handle = _count(unet)
    same = compose(unet, scheduler_cls(num_train_timesteps=50), cond, composite, PrimeComposer(strength=0.0),
                   tau_b=0.0, tau_c=0.0, **kw)
    handle.remove()
    assert torch.equal(same, plain) and calls == [2, 2, 2]


def test_compose_steers_early_steps_and_keeps_the_background():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle"])
    uncond, _ = encode_prompts(tok, te, [""])
    composite = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    comp = PrimeComposer(box=BOX, words=("circle",), tau_a=0.5)
    kw = dict(uncond=uncond, cfg_scale=2.5, word_tokens=words, steps=4, seed=7)
    calls, handle = _count(unet)
    out = compose(unet, DDIMScheduler(num_train_timesteps=50), cond, composite, comp, tau_b=1.0, tau_c=0.0, **kw)
    handle.remove()
    assert calls == [1, 2, 1, 2, 2, 2]  # a correlation pass in each of the int(0.5 * 4) steered steps
    background = ~_cells(8, 8).reshape(8, 8)
    assert torch.equal(out[..., background], composite[..., background])  # the last blend uses the clean composite
    free = compose(unet, DDIMScheduler(num_train_timesteps=50), cond, composite, comp, tau_b=0.0, tau_c=0.0, **kw)
    assert (free - out).abs().max() > 1e-3


def test_missing_pass_row_mismatch_and_bad_parameters_are_named():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, ["a red circle"])
    before = dict(unet.attn_processors)
    with pytest.raises(ParamError, match="primecomposer.box"):
        PrimeComposer(box=(0.6, 0.0, 0.5, 1.0))
    with pytest.raises(ParamError, match="primecomposer.tau_a"):
        PrimeComposer(tau_a=1.2)
    with pytest.raises(ValueError, match="primecomposer.blocks"), applied(unet, PrimeComposer(blocks=("nowhere",))):
        pass
    with pytest.raises(ValueError, match="composite has shape"):
        compose(unet, DDIMScheduler(num_train_timesteps=50), cond, torch.zeros(2, 3, 8, 8), PrimeComposer())
    with pytest.raises(ValueError, match="needs word_tokens"):
        compose(unet, DDIMScheduler(num_train_timesteps=50), cond, torch.zeros(1, 3, 8, 8),
                PrimeComposer(words=("circle",)))
    x = torch.randn(1, 3, 8, 8)
    comp = PrimeComposer()
    with torch.no_grad(), applied(unet, comp) as session:
        with pytest.raises(ValueError, match="no correlation pass recorded"):
            unet(x, 5, encoder_hidden_states=cond)
        with comp.recording(session):
            unet(x, 5, encoder_hidden_states=cond)
        with pytest.raises(ValueError, match="correlation pass had 1 rows, the generator steers 2"):
            unet(torch.cat([x, x]), 5, encoder_hidden_states=torch.cat([cond, cond]))
    assert all(unet.attn_processors[k] is before[k] for k in before)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), applied(unet, comp) as session, comp.recording(session):
        raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is before[k] for k in before)
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
    assert PrimeComposer.from_params(PrimeComposer.example).words == ("circle",)
