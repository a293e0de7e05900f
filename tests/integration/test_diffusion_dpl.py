"""Dynamic Prompt Learning (components/diffusion/dpl.py) on a tiny random UNet + CLIP text encoder: its three
leakage losses equal a float64 reference written from the formulas, the runner's embedding update equals a
hand-written AdamW step on the noun-token embeddings, off (weights 0) and met targets equal the plain sampler bit
for bit, bad parameters and missing inputs fail before anything changes, and the scope is restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from components.base import ParamError
from components.diffusion.dispatch import applied
from components.diffusion.dpl import DynamicPromptLearning
from components.diffusion.runner import encode_prompts, prompt_ids, sample
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet
from tests.integration.test_diffusion_attention import _float64_reference, inputs

PROMPTS = ["a red triangle left of the circle", "a blue circle and the square"]
NOUNS = ("triangle", "circle", "square")
TOKENS = {("triangle", 0): [3, 4], ("circle", 0): [8], ("circle", 1): [3], ("square", 1): [6]}


def _reference_losses(unet, x, enc, boxes):
    seen = []

    def record(name, p):
        if not name.startswith("mid_block"):
            seen.append(p.mean(1))  # (B, T, S)
        return p

    _float64_reference(unet, x, enc, edit_cross=record)
    a = torch.stack(seen).mean(0)  # (B, 64, S), the 8x8 grid
    soft = torch.zeros_like(a)
    soft[..., 1:-1] = torch.softmax(100.0 * a[..., 1:-1], dim=-1)
    g = torch.exp(-(((torch.arange(3.0, dtype=torch.float64) - 1) / (2 * 0.5)) ** 2))
    kernel = (g[:, None] * g[None, :]) / (g[:, None] * g[None, :]).sum()
    bg = torch.ones(8, 8, dtype=torch.float64)
    for x0, y0, x1, y1 in boxes:
        for i in range(8):
            for j in range(8):
                if x0 <= (j + 0.5) / 8 < x1 and y0 <= (i + 0.5) / 8 < y1:
                    bg[i, j] = 0
    out = {k: torch.zeros(2, dtype=torch.float64) for k in ("at", "dj", "bg")}
    for row in range(2):
        nouns = [w for w in NOUNS if (w, row) in TOKENS]
        raw = {w: a[row][:, TOKENS[(w, row)]].sum(-1) for w in nouns}  # (64,)
        peaks = []
        for w in nouns:
            m = soft[row][:, TOKENS[(w, row)]].sum(-1).reshape(8, 8)
            padded = F.pad(m[None, None], (1, 1, 1, 1), mode="reflect")[0, 0]
            smooth = torch.stack([torch.stack([(padded[i:i + 3, j:j + 3] * kernel).sum() for j in range(8)])
                                  for i in range(8)])
            peaks.append(max(0.0, 1 - smooth.max()))
        out["at"][row] = max(peaks)
        cos = [F.cosine_similarity(raw[u], raw[v], dim=0) for i, u in enumerate(nouns) for v in nouns[:i]]
        out["dj"][row] = sum(cos) / len(cos)
        out["bg"][row] = sum(F.cosine_similarity(raw[w], bg.flatten(), dim=0) for w in nouns) / len(nouns)
    return out


def test_losses_equal_float64_reference():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    enc, words = encode_prompts(tok, te, PROMPTS)
    x, _ = inputs(seed=5)
    boxes = [(0.0, 0.0, 0.5, 0.75), (0.5, 0.25, 1.0, 1.0)]
    comp = DynamicPromptLearning(words=NOUNS, object_boxes=tuple(v for b in boxes for v in b))
    with torch.no_grad(), applied(unet, comp) as session:
        comp.begin_update(session)
        session.runtime.set_word_tokens(words)
        unet(x, 5, encoder_hidden_states=enc)
        got = comp.losses(session)
    ref = _reference_losses(unet, x, enc, boxes)
    for key in ("at", "dj", "bg"):
        torch.testing.assert_close(got[key].double(), ref[key], rtol=0, atol=2e-5)
    torch.testing.assert_close(got["total"].double(), ref["at"] + 0.2 * ref["dj"] + 0.1 * ref["bg"], rtol=0,
                               atol=3e-5)


def _setup():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, words = encode_prompts(tok, te, PROMPTS)
    uncond, _ = encode_prompts(tok, te, [""])
    return unet, te, cond, uncond, words, prompt_ids(tok, PROMPTS)


def test_embedding_update_equals_hand_written_adamw_step():
    unet, te, cond, uncond, words, ids = _setup()
    comp = DynamicPromptLearning(words=NOUNS, iterations=1, beta_at=0.0, lr=0.05)  # targets never met
    out = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, uncond=uncond, cfg_scale=2.0, components=[comp],
                 word_tokens=words, steps=1, seed=3, text_encoder=te, input_ids=ids)

    sched = DDIMScheduler(num_train_timesteps=50)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((2, 3, 8, 8), generator=gen) * sched.init_noise_sigma
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    learned = torch.zeros(2, 12, dtype=torch.bool)
    for (_, row), pos in TOKENS.items():
        learned[row, pos] = True
    emb = te.get_input_embeddings()
    param = emb(ids).detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([param], lr=0.05, weight_decay=1e-2)

    def encode(values):
        h = emb.register_forward_hook(lambda m, a, o: torch.where(learned[..., None], values, o))
        try:
            return te(ids)[0]
        finally:
            h.remove()

    with applied(unet, comp) as session:
        comp.begin_update(session)
        session.runtime.set_word_tokens(words)
        unet(x, t, encoder_hidden_states=encode(param))
        loss = comp.losses(session)["total"].sum()
        (param.grad,) = torch.autograd.grad(loss, param)
        opt.step()
        with torch.no_grad():
            new_cond = encode(param)
            session.runtime.set_word_tokens([[], []] + words)
            eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond.expand(2, -1, -1),
                                                                                     new_cond])).sample.chunk(2)
    expected = sched.step(eps_u + 2.0 * (eps_c - eps_u), t, x, generator=gen).prev_sample
    assert torch.equal(out, expected)
    assert (new_cond - cond).abs().max() > 1e-5


def test_off_and_met_targets_equal_plain_sampler_bit_for_bit():
    unet, te, cond, uncond, words, ids = _setup()
    kw = dict(uncond=uncond, cfg_scale=2.0, word_tokens=words, steps=2, seed=4, text_encoder=te, input_ids=ids)
    before = dict(unet.attn_processors)
    plain = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, **kw)
    calls = []
    handle = unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    for off in (DynamicPromptLearning(words=NOUNS, lam_at=0.0, lam_dj=0.0, lam_bg=0.0),
                DynamicPromptLearning(words=NOUNS, iterations=0), DynamicPromptLearning(words=NOUNS, steps=0),
                DynamicPromptLearning(words=NOUNS, lam_at=0.0, lam_dj=0.0)):  # background loss without boxes
        assert torch.equal(sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[off], **kw), plain)
    assert calls == [4] * 8  # no update pass
    calls.clear()
    met = DynamicPromptLearning(words=NOUNS, beta_at=10.0, beta_dj=10.0, beta_bg=10.0)
    assert torch.equal(sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[met], **kw), plain)
    assert calls == [2, 4, 2, 4]  # one update pass per step reads the losses, then stops
    calls.clear()
    learned = sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[
        DynamicPromptLearning(words=NOUNS, iterations=3, beta_at=0.0, lr=0.05)], **kw)
    handle.remove()
    assert calls == [2, 2, 2, 4] * 2 and (learned - plain).abs().max() > 1e-4
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_bad_parameters_and_missing_inputs_fail_before_anything_changes():
    for bad, match in [(dict(words=()), "dpl.words"), (dict(words=("a",), lam_dj=-1.0), "dpl.lam_dj"),
                       (dict(words=("a",), alpha_at=0.0), "dpl.alpha_at"),
                       (dict(words=("a",), iterations=-1), "dpl.iterations"),
                       (dict(words=("a",), object_boxes=(0.0, 0.0, 1.0)), "x0, y0, x1, y1 per box"),
                       (dict(words=("a",), object_boxes=(0.5, 0.0, 0.2, 1.0)), "box 0")]:
        with pytest.raises(ParamError, match=match):
            DynamicPromptLearning(**bad)
    unet, te, cond, uncond, words, ids = _setup()
    before = dict(unet.attn_processors)
    comp = DynamicPromptLearning(words=NOUNS)
    with pytest.raises(ValueError, match="dpl learn prompt-token embeddings: pass text_encoder and input_ids"):
        sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[comp], word_tokens=words, steps=1)
    with pytest.raises(ValueError, match="input_ids has 1 rows for 2 prompts"):
        sample(unet, DDIMScheduler(num_train_timesteps=50), cond, components=[comp], word_tokens=words, steps=1,
               text_encoder=te, input_ids=ids[:1])
    with pytest.raises(ValueError, match="dpl.blocks"):
        with applied(unet, DynamicPromptLearning(words=NOUNS, blocks=("nowhere",))):
            pass
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_generate_feeds_prompt_learning_and_the_inpainting_sampler_refuses_it():
    """The flows' generate() hands the text encoder and token ids to the sampler (DPL learns there, and equals the
    sampler called by hand); sample_inpaint cannot learn embeddings and says so before sampling."""
    import numpy as np
    from PIL import Image

    from components.diffusion.generate import generate
    from components.diffusion.inpaint import sample_inpaint
    from components.diffusion.pipeline import T2IModel

    model = T2IModel(unet=tiny_unet(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(),
                     scheduler=DDIMScheduler(num_train_timesteps=50), image_size=8, max_length=12)
    comp = DynamicPromptLearning(words=NOUNS, iterations=2)
    prompt = "a red circle and a blue square"
    out = generate(model, prompt, [comp], seed=1, steps=2)
    cond, words = encode_prompts(model.tokenizer, model.text_encoder, [prompt], max_length=12)
    x = sample(model.unet, DDIMScheduler(num_train_timesteps=50), cond, components=[comp], word_tokens=words,
               steps=2, seed=1, text_encoder=model.text_encoder, input_ids=prompt_ids(model.tokenizer, [prompt], 12))
    plain = sample(model.unet, DDIMScheduler(num_train_timesteps=50), cond, word_tokens=words, steps=2, seed=1)
    assert np.array_equal(np.asarray(out.image), np.asarray(model.to_images(x)[0]))
    assert not torch.equal(x, plain)  # the embeddings were learned
    src = torch.zeros(1, 3, 8, 8)
    mask = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match="dpl learn prompt-token embeddings, which the inpainting sampler"):
        sample_inpaint(model.unet, DDIMScheduler(num_train_timesteps=50), cond, source=src, mask=mask,
                       components=[comp], word_tokens=words, steps=1)
    with pytest.raises(ValueError, match="inpainting sampler"):
        generate(model, prompt, [comp], steps=1, source=Image.new("RGB", (8, 8)), mask=Image.new("L", (8, 8), 255))
