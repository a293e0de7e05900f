"""IR-Diffusion (components/diffusion/irdiffusion.py) on a tiny random UNet: Isolation Attention on the fused and
materialised paths and Reposition Attention equal a float64 reference processor written from the formulas (boxes
to cells, nearest resize by index, masked softmax over the extended keys); both off equals the plain sampler bit
for bit; bad parameters and bad batch layouts are named before anything changes; the scope is restored."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor

from components.base import ParamError
from components.diffusion.dispatch import applied
from components.diffusion.irdiffusion import IRDiffusion
from components.diffusion.runner import encode_prompts, sample
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet
from tests.integration.test_diffusion_attention import inputs

TARGET = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.25, 1.0, 0.75)]
REF = [(0.25, 0.0, 0.75, 0.5), (0.0, 0.5, 1.0, 1.0)]


def _cells(box, h, w):
    x0, y0, x1, y1 = box
    return [(i, j) for i in range(h) for j in range(w) if x0 <= (j + 0.5) / w < x1 and y0 <= (i + 0.5) / h < y1]


def _ref_group(q, k, v, h, w, scale, isolate, repos):
    """float64, one group: q (H, T, D) of the target, k / v (3, H, T, D): two references then the target."""
    t = h * w
    iso = torch.zeros(t, t, dtype=torch.float64)
    if isolate:
        for a, ba in enumerate(TARGET):
            for b, bb in enumerate(TARGET):
                if a != b:
                    for ca in _cells(ba, h, w):
                        for cb in _cells(bb, h, w):
                            iso[ca[0] * w + ca[1], cb[0] * w + cb[1]] = float("-inf")
    logits = [q @ k[-1].transpose(-1, -2) * scale + iso]
    vals = [v[-1]]
    if repos:
        for s in range(2):
            src, dst = _cells(REF[s], h, w), _cells(TARGET[s], h, w)
            if not src or not dst:
                continue
            r0, c0 = min(i for i, _ in src), min(j for _, j in src)
            sh, sw = max(i for i, _ in src) - r0 + 1, max(j for _, j in src) - c0 + 1
            d0, e0 = min(i for i, _ in dst), min(j for _, j in dst)
            dh, dw = max(i for i, _ in dst) - d0 + 1, max(j for _, j in dst) - e0 + 1
            kk, vv = torch.zeros_like(k[s]), torch.zeros_like(v[s])
            bias = torch.full((t, t), float("-inf"), dtype=torch.float64)
            for i, j in dst:
                src_i, src_j = r0 + (i - d0) * sh // dh, c0 + (j - e0) * sw // dw  # nearest: floor(dst * in / out)
                kk[:, i * w + j] = k[s][:, src_i * w + src_j]
                vv[:, i * w + j] = v[s][:, src_i * w + src_j]
                for a, b in dst:
                    bias[a * w + b, i * w + j] = 0.0
            logits.insert(-1, q @ kk.transpose(-1, -2) * scale + bias)
            vals.insert(-1, vv)
    p = torch.softmax(torch.cat(logits, -1), -1)
    return p @ torch.cat(vals, 1)


def _float64_unet(x, enc, isolate, repos, t=5):
    class Ref(AttnProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            cross = encoder_hidden_states is not None
            ctx = encoder_hidden_states if cross else hidden_states
            b, n = hidden_states.shape[:2]
            d = attn.to_q.out_features // attn.heads
            q = attn.to_q(hidden_states).view(b, -1, attn.heads, d).transpose(1, 2)
            k = attn.to_k(ctx).view(b, -1, attn.heads, d).transpose(1, 2)
            v = attn.to_v(ctx).view(b, -1, attn.heads, d).transpose(1, 2)
            o = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1) @ v
            if not cross:
                side = int(n ** 0.5)
                for tgt in range(2, b, 3):
                    o[tgt] = _ref_group(q[tgt], k[tgt - 2: tgt + 1], v[tgt - 2: tgt + 1], side, side, attn.scale,
                                        isolate, repos)
            o = o.transpose(1, 2).reshape(b, -1, attn.heads * d)
            return attn.to_out[1](attn.to_out[0](o))

    unet64 = tiny_unet(torch.float64)
    unet64.set_attn_processor(Ref())
    with torch.no_grad():
        return unet64(x.double(), t, encoder_hidden_states=enc.double()).sample


def _comp(**kw):
    return IRDiffusion(target_boxes=tuple(v for b in TARGET for v in b), ref_boxes=tuple(v for b in REF for v in b),
                       **kw)


@pytest.mark.parametrize("repos", [False, True])
def test_isolation_and_reposition_equal_float64_reference_on_both_paths(repos):
    unet = tiny_unet()
    x, enc = inputs(batch=6, seed=8)  # two groups of (2 references, 1 target)
    comp = _comp(reposition=repos)
    outs = {}
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
        for force in (None, "materialize"):
            with applied(unet, comp, force=force):
                outs[force] = unet(x, 5, encoder_hidden_states=enc).sample
    ref = _float64_unet(x, enc, isolate=True, repos=repos)
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    targets = [2, 5]
    assert (outs[None][targets] - plain[targets]).abs().max() > 1e-3
    if not repos:  # isolation leaves the reference images alone
        assert torch.equal(outs[None][[0, 1, 3, 4]], plain[[0, 1, 3, 4]])


def test_reposition_without_isolation_equals_reference():
    unet = tiny_unet()
    x, enc = inputs(batch=3, seed=9)
    with torch.no_grad(), applied(unet, _comp(isolation=False)):
        out = unet(x, 5, encoder_hidden_states=enc).sample
    torch.testing.assert_close(out.double(), _float64_unet(x, enc, isolate=False, repos=True), rtol=0, atol=2e-5)


def test_off_equals_plain_sampler_bit_for_bit_and_scope_restored():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, _ = encode_prompts(tok, te, ["a red circle", "a blue square", "a red circle and the blue square"])
    uncond, _ = encode_prompts(tok, te, [""])
    kw = dict(uncond=uncond, cfg_scale=2.0, steps=2, seed=4)
    before = dict(unet.attn_processors)
    plain = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, **kw)
    off = sample(unet, DDIMScheduler(num_train_timesteps=50), cond,
                 components=[_comp(isolation=False, reposition=False)], **kw)
    assert torch.equal(off, plain)
    steered = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[_comp()], **kw)
    assert (steered[2] - plain[2]).abs().max() > 1e-4
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_bad_parameters_and_layouts_fail_before_anything_changes():
    for bad, match in [(dict(target_boxes=(), ref_boxes=()), "one box per subject"),
                       (dict(target_boxes=(0, 0, 1), ref_boxes=()), "x0, y0, x1, y1 per subject"),
                       (dict(target_boxes=(0, 0, 0.5, 1), ref_boxes=()), "0 boxes for 1 subjects"),
                       (dict(target_boxes=(0, 0, 0.6, 1, 0.5, 0, 1, 1), ref_boxes=(0, 0, 1, 1) * 2), "overlap"),
                       (dict(target_boxes=(0.5, 0, 0.2, 1), ref_boxes=(0, 0, 1, 1)), "box 0")]:
        with pytest.raises(ParamError, match=match):
            IRDiffusion(**bad)
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    with pytest.raises(ValueError, match="irdiffusion.blocks"):
        with applied(unet, _comp(blocks=("nowhere",))):
            pass
    x, enc = inputs(batch=2)
    with pytest.raises(ValueError, match="a batch of 2 rows is not made of groups of 2 reference images"):
        with torch.no_grad(), applied(unet, _comp()):
            unet(x, 5, encoder_hidden_states=enc)
    assert all(unet.attn_processors[k] is before[k] for k in before)
