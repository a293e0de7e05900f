"""HiDiffusion on a tiny random UNet at 2x its sample size: MSW-MSA and RAU-Net against a float64 UNet built from the
formulas (explicitly rolled 2 x 2 windows as a key mask; the downsampler conv with stride 4 / padding 2 / dilation 2
and upsampling to the skip size), fast == materialised, identity settings equal the plain UNet and sampler bit for
bit, the RAU-Net step schedule in the runner, bad parameters, restoration after exit and after an error."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor

from components.base import ParamError
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import applied
from components.diffusion.hidiffusion import HiDiffusion, shift_index
from components.diffusion.runner import encode_prompts, sample
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet


def _inputs(side=16):
    g = torch.Generator().manual_seed(11)
    return torch.randn(2, 3, side, side, generator=g), torch.randn(2, 12, 16, generator=g)


def _windows(h, w, k):
    """(T,) window id of each cell: roll the grid by -shift, cut 2 x 2 windows, read the ids back in place."""
    sy, sx = h // 2 // 4 * k, w // 2 // 4 * k
    ids = torch.arange(h * w).reshape(h, w)
    rolled = torch.roll(ids, shifts=(-sy, -sx), dims=(0, 1))
    win = torch.empty(h * w, dtype=torch.long)
    for n, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        win[rolled[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2].reshape(-1)] = n
    return win


def _reference(x, enc, shift_of_layer, raunet):
    """float64 UNet: windowed self-attention in down_blocks.0 / up_blocks.1 (key mask), RAU-Net by editing the conv
    and forcing the UNet to upsample to the skip sizes (the reference implementation's own device)."""
    unet = tiny_unet(torch.float64)
    names = [k.removesuffix(".processor") for k in unet.attn_processors]

    class Ref(AttnProcessor):
        def __init__(self, name):
            self.name, self.layer = name, names.index(name)

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            cross = encoder_hidden_states is not None
            ctx = encoder_hidden_states if cross else hidden_states
            b, t, _ = hidden_states.shape
            d = attn.to_q.out_features // attn.heads
            q = attn.to_q(hidden_states).view(b, -1, attn.heads, d).transpose(1, 2)
            k = attn.to_k(ctx).view(b, -1, attn.heads, d).transpose(1, 2)
            v = attn.to_v(ctx).view(b, -1, attn.heads, d).transpose(1, 2)
            logits = q @ k.transpose(-1, -2) * attn.scale  # (B, H, T, S)
            if not cross and self.name.split(".")[0:2] in (["down_blocks", "0"], ["up_blocks", "1"]):
                side = int(round(t ** 0.5))
                win = _windows(side, side, shift_of_layer(self.layer))
                logits = logits.masked_fill(win[:, None] != win[None, :], float("-inf"))
            o = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, -1, attn.heads * d)
            return attn.to_out[1](attn.to_out[0](o))

    unet.set_attn_processor({k: Ref(k.removesuffix(".processor")) for k in unet.attn_processors})
    if raunet:
        conv = unet.down_blocks[0].downsamplers[0].conv
        conv.stride, conv.padding, conv.dilation = (4, 4), (2, 2), (2, 2)
        unet.num_upsamplers += 12
    with torch.no_grad():
        return unet(x.double(), 5, encoder_hidden_states=enc.double()).sample


@pytest.mark.parametrize("shift,raunet", [(1, False), (3, True), (-1, True)])
def test_hidiffusion_equals_float64_reference_on_both_paths(shift, raunet):
    unet = tiny_unet()
    x, enc = _inputs()
    comp = HiDiffusion(shift=shift, raunet=raunet, seed=4)
    outs = {}
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
        for force in (None, "materialize"):
            with applied(unet, comp, force=force):
                outs[force] = unet(x, 5, encoder_hidden_states=enc).sample
    ref = _reference(x, enc, lambda layer: shift if shift >= 0 else shift_index(4, None, layer), raunet)
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    assert (outs[None] - plain).abs().max() > 1e-3
    if shift == -1:  # the seeded draw gives different shifts across the windowed layers of this UNet
        assert len({shift_index(4, None, layer) for layer in (0, 2, 4)}) > 1


class _SelfBias(DiffusionComponent):
    """Test-only: a fixed random score bias on every self-attention call (windowed with the kernel's tokens)."""

    def acts_on(self, call):
        return call.is_self

    def score_bias(self, call):
        g = torch.Generator().manual_seed(call.layer)
        return torch.randn(1, call.n_heads, call.q_len, call.kv_len, generator=g)


def test_windowed_kernel_windows_other_components_biases():
    unet = tiny_unet()
    x, enc = _inputs()
    outs = []
    with torch.no_grad():
        for force in (None, "materialize"):
            with applied(unet, _SelfBias(), HiDiffusion(raunet=False, shift=2), force=force):
                outs.append(unet(x, 5, encoder_hidden_states=enc).sample)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=2e-5)


def test_identity_settings_equal_plain_exactly():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    x, enc = _inputs()
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
        with applied(unet, HiDiffusion(msw_msa=False, raunet=False)):
            assert torch.equal(unet(x, 5, encoder_hidden_states=enc).sample, plain)
        with applied(unet, HiDiffusion(msw_msa=False, t1_ratio=0.0)):
            assert torch.equal(unet(x, 5, encoder_hidden_states=enc).sample, plain)
    cond, _ = encode_prompts(tok, te, ["a red circle"])
    kw = dict(steps=2, seed=3, sample_size=(16, 16))
    base = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, **kw)
    same = sample(unet, DDIMScheduler(num_train_timesteps=50), cond,
                  components=[HiDiffusion(msw_msa=False, raunet=False)], **kw)
    assert torch.equal(same, base)


def test_raunet_follows_the_step_schedule_in_the_runner():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, _ = encode_prompts(tok, te, ["a red circle"])
    sizes = []
    handle = unet.down_blocks[0].downsamplers[0].register_forward_hook(lambda m, a, o: sizes.append(o.shape[-1]))
    out = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[HiDiffusion(t1_ratio=0.5)],
                 steps=4, seed=1, sample_size=(16, 16))
    handle.remove()
    assert sizes == [4, 4, 8, 8]  # int(0.5 * 4) = 2 steps at a 4x reduction, then the stock 2x
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def _snapshot(unet):
    conv = unet.down_blocks[0].downsamplers[0].conv
    return ({k: v.clone() for k, v in unet.state_dict().items()}, dict(unet.attn_processors),
            "forward" in conv.__dict__, len(unet.up_blocks[0].upsamplers[0]._forward_pre_hooks))


def _same(unet, snap):
    state, procs, conv_forward, hooks = snap
    now = _snapshot(unet)
    assert now[0].keys() == state.keys() and all(torch.equal(now[0][k], state[k]) for k in state)
    assert all(now[1][k] is procs[k] for k in procs) and now[2:] == (conv_forward, hooks)


def test_scope_restores_after_exit_and_after_an_error():
    unet = tiny_unet()
    x, enc = _inputs()
    snap = _snapshot(unet)
    with torch.no_grad(), applied(unet, HiDiffusion()):
        assert "forward" in unet.down_blocks[0].downsamplers[0].conv.__dict__
        unet(x, 5, encoder_hidden_states=enc)
    _same(unet, snap)
    with pytest.raises(RuntimeError, match="boom"), applied(unet, HiDiffusion()):
        raise RuntimeError("boom")
    _same(unet, snap)
    with torch.no_grad():
        plain = tiny_unet()(x, 5, encoder_hidden_states=enc).sample
        assert torch.equal(unet(x, 5, encoder_hidden_states=enc).sample, plain)


def test_sd3_is_refused_before_anything_changes():
    from tests.integration.test_diffusion_joint import tiny_sd3

    model = tiny_sd3()
    before = dict(model.attn_processors)
    with pytest.raises(ValueError, match="hidiffusion.window_blocks"), applied(model, HiDiffusion()):
        pass
    with pytest.raises(ValueError, match="needs a UNet with down_blocks"), applied(model, HiDiffusion(msw_msa=False)):
        pass
    assert all(model.attn_processors[k] is before[k] for k in before) and not model._forward_pre_hooks


def test_bad_parameters_are_refused_before_anything_changes():
    with pytest.raises(ParamError, match="hidiffusion.shift"):
        HiDiffusion(shift=4)
    with pytest.raises(ParamError, match="hidiffusion.t1_ratio"):
        HiDiffusion(t1_ratio=1.5)
    unet = tiny_unet()
    snap = _snapshot(unet)
    with pytest.raises(ValueError, match="hidiffusion.window_blocks"), applied(unet, HiDiffusion(
            window_blocks=("nowhere",))):
        pass
    with pytest.raises(ValueError, match="down_blocks.1 needs a downsampler"), applied(unet, HiDiffusion(down_block=1)):
        pass
    _same(unet, snap)
    x, enc = _inputs()
    with torch.no_grad(), pytest.raises(ValueError, match="each replace the attention kernel"), applied(
            unet, HiDiffusion(raunet=False), HiDiffusion(raunet=False, shift=1)):
        unet(x, 5, encoder_hidden_states=enc)
    x, enc = _inputs(side=10)  # the mid block runs on a 5x5 grid: no 2 x 2 windows of whole cells
    with torch.no_grad(), pytest.raises(ValueError, match="needs even sides"), applied(
            unet, HiDiffusion(raunet=False, window_blocks=("mid_block",))):
        unet(x, 5, encoder_hidden_states=enc)
    _same(unet, snap)
