"""A-STAR (components/diffusion/astar.py) on a tiny random UNet: its segregation and retention losses equal a
float64 reference written from the paper's eqs. 2-3 (Attend-and-Excite's normalisation and smoothing), off (scale 0)
equals the plain sampler bit for bit, an update lowers the loss it follows, bad parameters fail before anything
changes, and the scope is restored."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from components.base import ParamError
from components.diffusion.astar import AStar
from components.diffusion.dispatch import applied
from components.diffusion.runner import encode_prompts, sample
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet
from tests.integration.test_diffusion_attention import _float64_reference, inputs

PROMPTS = ["a red triangle left of the circle", "a blue circle and the square"]
WORDS = ("triangle", "circle", "square")


def _ref_word_maps(unet, x, enc):
    """float64: head- and call-averaged 8x8 cross maps -> A&E softmax -> per word -> 3x3 Gaussian (sigma 0.5)."""
    seen = []

    def record(name, p):
        if not name.startswith("mid_block"):
            seen.append(p.mean(1))  # (B, T, S)
        return p

    _float64_reference(unet, x, enc, edit_cross=record)
    a = torch.stack(seen).mean(0).transpose(1, 2).reshape(2, 12, 8, 8)  # (B, S, 8, 8)
    norm = torch.zeros_like(a)
    norm[:, 1:-1] = torch.softmax(100.0 * a[:, 1:-1], dim=1)
    tokens = {("triangle", 0): [3, 4], ("circle", 0): [8], ("circle", 1): [3], ("square", 1): [6]}
    g = torch.exp(-(((torch.arange(3.0, dtype=torch.float64) - 1) / (2 * 0.5)) ** 2))
    kernel = (g[:, None] * g[None, :]) / (g[:, None] * g[None, :]).sum()
    maps = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    for (word, row), pos in tokens.items():
        m = norm[row, pos].sum(0)
        padded = torch.nn.functional.pad(m[None, None], (1, 1, 1, 1), mode="reflect")[0, 0]
        maps[row, WORDS.index(word)] = torch.stack([torch.stack([(padded[i:i + 3, j:j + 3] * kernel).sum()
                                                                 for j in range(8)]) for i in range(8)])
    present = torch.tensor([[True, True, False], [False, True, True]])
    return maps, present


def _ref_losses(maps, present, prev_masks):
    seg = torch.zeros(2, dtype=torch.float64)
    ret = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        idx = [k for k in range(3) if present[b, k]]
        for i, m in enumerate(idx):
            for n in idx[:i]:
                seg[b] += torch.minimum(maps[b, m], maps[b, n]).sum() / (maps[b, m] + maps[b, n]).sum()
            if prev_masks is not None:
                mask = prev_masks[b, m]
                ret[b] += 1 - torch.minimum(maps[b, m], mask).sum() / (maps[b, m] + mask).sum()
    return seg, ret


def test_losses_equal_float64_reference_over_two_steps():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    enc, words = encode_prompts(tok, te, PROMPTS)
    x1, _ = inputs(seed=3)
    x2, _ = inputs(seed=4)
    comp = AStar(words=WORDS, threshold=0.6)
    got = []
    with torch.no_grad(), applied(unet, comp) as session:
        for x in (x1, x2):
            comp.begin_update(session)
            session.runtime.set_word_tokens(words)
            unet(x, 5, encoder_hidden_states=enc)
            got.append(comp.losses(session))
    maps1, present = _ref_word_maps(unet, x1, enc)
    maps2, _ = _ref_word_maps(unet, x2, enc)
    masks1 = (maps1 >= 0.6 * maps1.amax((-1, -2), keepdim=True)).double()
    for out, (seg, ret) in zip(got, [_ref_losses(maps1, present, None), _ref_losses(maps2, present, masks1)]):
        torch.testing.assert_close(out["seg"].double(), seg, rtol=0, atol=2e-5)
        torch.testing.assert_close(out["ret"].double(), ret, rtol=0, atol=2e-5)
    assert got[0]["ret"].abs().max() == 0 and got[1]["ret"].min() > 0 and got[0]["seg"].min() > 0


def test_off_equals_plain_sampler_bit_for_bit_and_scope_restored():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, PROMPTS)
    uncond, _ = encode_prompts(tok, te, [""])
    kw = dict(uncond=uncond, cfg_scale=2.0, word_tokens=words, steps=3, seed=4)
    before = dict(unet.attn_processors)
    plain = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, **kw)
    calls = []
    handle = unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    for off in (AStar(words=WORDS, scale_factor=0.0), AStar(words=WORDS, steps=0),
                AStar(words=WORDS, seg_weight=0.0, ret_weight=0.0)):
        assert torch.equal(sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[off], **kw), plain)
    assert calls == [4] * 9  # one CFG pass per step, no update pass
    calls.clear()
    steered = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[AStar(words=WORDS, steps=2)],
                     **kw)
    handle.remove()
    assert calls == [2, 4, 2, 4, 4]  # an update pass over the conditional rows in the first two steps
    assert (steered - plain).abs().max() > 1e-4
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_update_step_size_schedule_and_one_update_lowers_the_loss():
    comp = AStar(words=("circle", "square"), scale_factor=20.0)
    assert comp.latent_step_size(0, 50) == 20.0
    assert comp.latent_step_size(49, 50) == pytest.approx(20 * math.sqrt(0.5))
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    enc, words = encode_prompts(tok, te, ["a blue circle and the square"])
    x, _ = inputs(batch=1, seed=7)
    comp = AStar(words=("circle", "square"), ret_weight=0.0, smooth_sigma=0.0)

    def loss_at(latent, session):
        comp.begin_update(session)
        session.runtime.set_word_tokens(words)
        unet(latent, 5, encoder_hidden_states=enc)
        return comp.latent_loss(session)

    with applied(unet, comp) as session:
        xg = x.clone().requires_grad_(True)
        before = loss_at(xg, session)
        (grad,) = torch.autograd.grad(before, xg)
        with torch.no_grad():
            after = loss_at(x - 1e-3 / grad.norm() * grad, session)
    assert grad.abs().max() > 0 and after < before


def test_bad_parameters_fail_before_anything_changes():
    for bad, match in [(dict(words=()), "astar.words"), (dict(words=("a", "A")), "twice"),
                       (dict(words=("a",), threshold=1.0), "astar.threshold"),
                       (dict(words=("a",), scale_factor=-1.0), "astar.scale_factor"),
                       (dict(words=("a",), steps=-1), "astar.steps"),
                       (dict(words=("a",), resolution=-2), "astar.resolution")]:
        with pytest.raises(ParamError, match=match):
            AStar(**bad)
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    before = dict(unet.attn_processors)
    with pytest.raises(ValueError, match="astar.blocks"):
        with applied(unet, AStar(words=("circle",), blocks=("mid_block.x",))):
            pass
    assert all(unet.attn_processors[k] is before[k] for k in before)
    cond, words = encode_prompts(tok, te, ["a red circle"])
    with pytest.raises(ValueError, match="astar.resolution=16: no cross-attention call on a 16x16 grid"):
        sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[AStar(words=("circle",), resolution=16)],
               word_tokens=words, steps=1)
    assert all(unet.attn_processors[k] is before[k] for k in before)
