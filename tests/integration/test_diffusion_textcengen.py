"""TextCenGen on a tiny random UNet: the edited cross-attention equals a float64 re-derivation of the reference
code's steps (soft threshold, conflict, repulsive + margin forces, affine warp by hand-written bilinear sampling,
spatial exclusion); a blob inside the region moves out; identity settings equal the plain sampler bit for bit; bad
parameters are refused before anything changes."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from components.base import ParamError
from components.diffusion.dispatch import applied
from components.diffusion.region_mask import inside_box
from components.diffusion.runner import encode_prompts, sample
from components.diffusion.textcengen import TextCenGen, relocate
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet
from tests.integration.test_diffusion_attention import _float64_reference, inputs

EPS = float(torch.finfo(torch.float32).eps)


def _bilinear(img, sx, sy):
    """img (h, w); sample at pixel coordinates (sx, sy) (each (h, w)), zeros outside the grid."""
    h, w = img.shape
    x0, y0 = sx.floor(), sy.floor()
    out = torch.zeros_like(sx)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wt = (1 - (sx - xi).abs()) * (1 - (sy - yi).abs())
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out = out + torch.where(ok, wt * img[yi.clamp(0, h - 1).long(), xi.clamp(0, w - 1).long()], 0.0)
    return out


def _ref_relocate(maps, region, c):
    """float64, straight from the steps in components/diffusion/textcengen.py (one row: (heads, K, h, w))."""
    heads, k, h, w = maps.shape

    def mm(x):
        flat = x.reshape(k, -1)
        lo, hi = flat.min(1).values, flat.max(1).values
        return (x - lo[:, None, None]) / (hi - lo + EPS)[:, None, None]

    def centroid(m):
        ys = torch.arange(h, dtype=m.dtype).view(1, h, 1)
        xs = torch.arange(w, dtype=m.dtype).view(1, 1, w)
        tot = m.sum((1, 2)) + EPS
        return torch.stack([(ys * m).sum((1, 2)) / tot, (xs * m).sum((1, 2)) / tot], 1)

    m = mm(torch.sigmoid(c.sharpness * (mm(maps.mean(0)) - c.threshold)))
    r = region.double()
    conflict = torch.tensor([float((m[i] * r).sum() / r.sum() > c.theta) for i in range(k)], dtype=torch.float64)
    if conflict.sum() == 0:
        return maps
    cr = centroid(r[None])[0]
    cen = centroid(m)
    d = cen - cr
    n = torch.sqrt((d**2).sum()) + EPS
    rep = torch.clamp(-(c.repulsive**2) * n * n / d, -c.move, c.move)
    mar = torch.zeros(k, 2, dtype=torch.float64)
    edges = ((cen[:, 0], (1, 0)), (h - cen[:, 0], (-1, 0)), (cen[:, 1], (0, 1)), (w - cen[:, 1], (0, -1)))
    for dist, (uy, ux) in edges:
        f = -c.margin / (dist**2 + EPS)
        mar[:, 0] += f * uy
        mar[:, 1] += f * ux
    disp = (rep + torch.clamp(mar, -c.move, c.move)) * conflict[:, None]
    out = torch.empty_like(maps)
    for i in range(k):
        ny, nx = cen[i, 0] + disp[i, 0] * h, cen[i, 1] + disp[i, 1] * w
        cy, cx = min(max(ny, 0.0), h - 1.0), min(max(nx, 0.0), w - 1.0)
        s_y, s_x = min(1.0, (h - 1) / cy) if cy > 0 else 1.0, min(1.0, (w - 1) / cx) if cx > 0 else 1.0
        o_y, o_x = disp[i, 0] * h + (cy - ny), disp[i, 1] * w + (cx - nx)
        jj, ii = torch.meshgrid(torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64),
                                indexing="xy")
        xn, yn = (2 * jj + 1) / w - 1, (2 * ii + 1) / h - 1  # output pixel centres, normalised
        gx, gy = s_x * xn + o_x / w, s_y * yn + o_y / h
        px, py = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
        for head in range(heads):
            out[head, i] = _bilinear(maps[head, i], px, py)
    return c.region_exclusion * out + (1 - c.region_exclusion) * out * (1 - r)


PROMPTS = ["a red circle left of the square", "a blue triangle"]


@pytest.mark.parametrize("kw", [dict(theta=0.05), dict(theta=0.05, words=("circle",), box=(0.0, 0.0, 0.6, 0.5)),
                                dict()])
def test_textcengen_equals_float64_reference(kw):
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    enc, words = encode_prompts(tok, te, PROMPTS)
    x, _ = inputs()
    comp = TextCenGen(**kw)
    outs = {}
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
        for force in (None, "materialize"):
            with applied(unet, comp, force=force) as session:
                session.runtime.set_word_tokens(words)
                outs[force] = unet(x, 5, encoder_hidden_states=enc).sample
    moved = []

    def tokens_of(row):
        return sorted({p for word, pos in row if not comp.words or word in comp.words for p in pos})

    def edit(name, p):
        side = int(round(p.shape[2] ** 0.5))
        region = inside_box(comp.box, side, side).reshape(side, side)
        out = p.clone()
        for b, toks in enumerate(tokens_of(words[b]) for b in range(2)):
            if not toks:
                continue
            maps = p[b][:, :, toks].transpose(1, 2).reshape(p.shape[1], len(toks), side, side)
            new = _ref_relocate(maps, region, comp)
            moved.append(not torch.equal(new, maps))
            out[b][:, :, toks] = new.reshape(p.shape[1], len(toks), -1).transpose(1, 2)
        return out

    ref = _float64_reference(unet, x, enc, edit_cross=edit)
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    if kw:  # a low conflict threshold: some maps are moved and the output changes
        assert any(moved) and (outs[None] - plain).abs().max() > 1e-4


def test_a_blob_inside_the_region_moves_out_and_is_dimmed():
    h = w = 16
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    blob = torch.exp(-((ys - 7.0) ** 2 + (xs - 6.0) ** 2) / 16.0)  # centred inside the region, left of its centre
    maps = blob[None, None].repeat(2, 1, 1, 1) / blob.sum()  # (heads, K, h, w)
    region = inside_box((0.25, 0.25, 0.75, 0.75), h, w).reshape(h, w)
    out = relocate(maps, region, f_rep=50.0, f_margin=0.4, move=1.0, threshold=0.5, sharpness=1.0, rho=0.75,
                   theta=0.25)
    inside_before = (maps[0, 0] * region).sum()
    inside_after = (out[0, 0] * region).sum()
    cx_before = (maps[0, 0] * xs).sum() / maps[0, 0].sum()
    cx_after = (out[0, 0] * xs).sum() / out[0, 0].sum()
    assert inside_after < 0.5 * inside_before and cx_after < cx_before - 1  # pushed up-left, out of the region


def test_identity_settings_equal_the_plain_sampler_bit_for_bit():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, PROMPTS)
    uncond, _ = encode_prompts(tok, te, [""])
    kw = dict(uncond=uncond, cfg_scale=2.0, word_tokens=words, steps=2, seed=5)
    plain = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, **kw)
    same = sample(unet, DDIMScheduler(num_train_timesteps=50), cond,
                  components=[TextCenGen(repulsive=0.0, margin=0.0, region_exclusion=1.0)], **kw)
    moved = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[TextCenGen(theta=0.05)], **kw)
    assert torch.equal(same, plain) and (moved - plain).abs().max() > 1e-4


def test_bad_parameters_are_refused_before_anything_changes():
    with pytest.raises(ParamError, match="textcengen.box"):
        TextCenGen(box=(0.5, 0.0, 0.2, 1.0))
    with pytest.raises(ParamError, match="textcengen.move"):
        TextCenGen(move=0.0)
    with pytest.raises(ParamError, match="textcengen.region_exclusion"):
        TextCenGen(region_exclusion=1.5)
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    with pytest.raises(ValueError, match="textcengen.blocks"), applied(unet, TextCenGen(blocks=("mid",))):
        pass
    tok, te = tiny_tokenizer(), tiny_text_encoder()
    enc, words = encode_prompts(tok, te, PROMPTS[:1])
    x, _ = inputs()
    with torch.no_grad(), applied(unet, TextCenGen()) as session, pytest.raises(ValueError, match="set for 1 rows"):
        session.runtime.set_word_tokens(words)
        unet(x, 5, encoder_hidden_states=enc.expand(2, -1, -1))
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), applied(unet, TextCenGen()):
        raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is before[k] for k in before)
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
    assert TextCenGen.from_params(TextCenGen.example).box == (0.3, 0.3, 0.7, 0.7)
