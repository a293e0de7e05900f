"""Diffusion attention dispatcher on a tiny random UNet2DConditionModel (+ tiny CLIP text encoder, a WordPiece
tokenizer built in memory): stock parity, scoping, call info, fast == materialised, SoftPAG and word reweighting
against float64 references of their formulas."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from components.diffusion import softpag as sp
from components.diffusion import word_reweight as wr
from components.diffusion.base import DiffusionComponent
from components.diffusion.dispatch import UnsupportedModelError, applied, word_token_indices
from components.diffusion.softpag import SoftPAG
from components.diffusion.word_reweight import WordReweight
from components.heads import HeadSet
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet


def inputs(batch=2, dtype=torch.float32, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 8, 8, generator=g).to(dtype)
    enc = torch.randn(batch, 12, 16, generator=g).to(dtype)
    return x, enc


def test_word_token_indices_follow_offsets():
    tok = tiny_tokenizer()
    words = word_token_indices(tok, "a red triangle left of the circle")
    assert words == [("a", [1]), ("red", [2]), ("triangle", [3, 4]), ("left", [5]), ("of", [6]), ("the", [7]),
                     ("circle", [8])]


def test_baseline_processor_equals_stock_bit_for_bit_and_scope_restores():
    unet = tiny_unet()
    x, enc = inputs()
    before = dict(unet.attn_processors)
    assert all(isinstance(p, AttnProcessor2_0) for p in before.values())
    with torch.no_grad():
        ref = unet(x, 5, encoder_hidden_states=enc).sample
        with applied(unet) as session:
            assert all(type(p).__name__ == "AttnflowProcessor" for p in unet.attn_processors.values())
            out = unet(x, 5, encoder_hidden_states=enc).sample
        assert torch.equal(out, ref)
        assert session.runtime.latent_shape == (2, 3, 8, 8) and int(session.runtime.timestep) == 5
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not unet._forward_pre_hooks


def test_scope_restores_on_error_and_rejects_unsupported_processors():
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with applied(unet, SoftPAG()):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is before[k] for k in before)
    from diffusers.models.attention_processor import AttnAddedKVProcessor
    unet.set_attn_processor(AttnAddedKVProcessor())
    odd = dict(unet.attn_processors)
    with pytest.raises(UnsupportedModelError, match="AttnAddedKVProcessor"):
        with applied(unet):
            pass
    assert all(unet.attn_processors[k] is odd[k] for k in odd)


def test_bad_parameters_fail_before_anything_changes():
    unet = tiny_unet()
    before = dict(unet.attn_processors)
    with pytest.raises(ValueError, match="softpag.blocks"):
        with applied(unet, SoftPAG(blocks=("nowhere",))):
            pass
    with pytest.raises(ValueError, match="softpag.heads"):
        with applied(unet, SoftPAG(heads=HeadSet.parse("0:7"))):
            pass
    with pytest.raises(ValueError, match="softpag.strength"):
        SoftPAG(strength=1.5)
    assert all(unet.attn_processors[k] is before[k] for k in before)


class _Recorder(DiffusionComponent):
    def __init__(self):
        object.__setattr__(self, "calls", [])

    def edit_output(self, call, out):
        self.calls.append(call)
        return out


def test_call_info_self_cross_spatial_words_timestep():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    from components.diffusion.runner import encode_prompts
    enc, words = encode_prompts(tok, te, ["a red circle", "a blue triangle"])
    rec = _Recorder()
    x, _ = inputs()
    with torch.no_grad(), applied(unet, rec) as session:
        session.runtime.set_word_tokens(words)
        unet(x, 7, encoder_hidden_states=enc)
    names = [c.name for c in rec.calls]
    assert len(names) == len(unet.attn_processors)
    mid = next(c for c in rec.calls if c.name.startswith("mid_block") and c.is_self)
    assert mid.spatial == (4, 4) and mid.q_len == 16 and mid.kv_len == 16 and mid.word_tokens is None
    cross = next(c for c in rec.calls if c.block == "down_blocks.0" and c.is_cross)
    assert cross.spatial == (8, 8) and cross.kv_len == 12 and int(cross.timestep) == 7
    assert cross.n_heads == 4 and cross.head_dim == 2
    mask = cross.token_mask(("triangle", "RED"), "test")
    assert mask.nonzero().tolist() == [[0, 2], [1, 3], [1, 4]]


def _float64_reference(unet, x, enc, edit_self=None, edit_cross=None):
    """Run the UNet with a processor that materialises P in float64 and applies the reference edits."""
    from diffusers.models.attention_processor import AttnProcessor

    class Ref(AttnProcessor):
        def __init__(self, name):
            self.name = name

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            cross = encoder_hidden_states is not None
            ctx = encoder_hidden_states if cross else hidden_states
            b = hidden_states.shape[0]
            q = attn.to_q(hidden_states).view(b, -1, attn.heads, attn.to_q.out_features // attn.heads).transpose(1, 2)
            k = attn.to_k(ctx).view(b, -1, attn.heads, q.shape[-1]).transpose(1, 2)
            v = attn.to_v(ctx).view(b, -1, attn.heads, q.shape[-1]).transpose(1, 2)
            p = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1)
            edit = edit_cross if cross else edit_self
            if edit is not None:
                p = edit(self.name, p)
            o = (p @ v).transpose(1, 2).reshape(b, -1, attn.heads * q.shape[-1])
            return attn.to_out[1](attn.to_out[0](o))

    unet64 = tiny_unet(torch.float64)
    unet64.set_attn_processor({k: Ref(k.removesuffix(".processor")) for k in unet64.attn_processors})
    with torch.no_grad():
        return unet64(x.double(), 5, encoder_hidden_states=enc.double()).sample


@pytest.mark.parametrize("strength", [0.0, 0.4, 1.0])
def test_softpag_fast_and_materialised_equal_float64_reference(strength):
    unet = tiny_unet()
    x, enc = inputs()
    comp = SoftPAG(strength=strength, blocks=("mid_block", "up_blocks.1"), heads=HeadSet.parse("*:0,*:2"))
    outs = {}
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
        for force in (None, "materialize"):
            with applied(unet, comp, force=force) as session, session.runtime.pass_of("perturbed", comp):
                outs[force] = unet(x, 5, encoder_hidden_states=enc).sample
    names = list(unet.attn_processors)

    def edit(name, p):
        if name.split(".")[0] == "mid_block" or name.startswith("up_blocks.1"):
            return sp.reference_probs(p, [0, 2], strength)
        return p

    ref = _float64_reference(unet, x, enc, edit_self=edit)
    assert names
    torch.testing.assert_close(outs[None].double(), ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(outs["materialize"].double(), ref, rtol=0, atol=2e-5)
    if strength == 0.0:
        assert torch.equal(outs[None], plain)
    else:
        assert (outs[None] - plain).abs().max() > 1e-3


def test_softpag_acts_only_in_its_perturbed_pass():
    unet = tiny_unet()
    x, enc = inputs()
    comp, other = SoftPAG(), SoftPAG(strength=0.5)
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
        with applied(unet, comp) as session:
            assert torch.equal(unet(x, 5, encoder_hidden_states=enc).sample, plain)  # plain pass: untouched
            with session.runtime.pass_of("perturbed", other):
                assert torch.equal(unet(x, 5, encoder_hidden_states=enc).sample, plain)


@pytest.mark.parametrize("mode", ["logit", "p2p"])
def test_word_reweight_equals_float64_reference_on_both_paths(mode):
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    from components.diffusion.runner import encode_prompts
    enc, words = encode_prompts(tok, te, ["a red triangle", "a blue circle and the square"])
    x, _ = inputs()
    comp = WordReweight(words=("triangle", "square"), scale=3.0, mode=mode)
    outs = {}
    with torch.no_grad():
        for force in (None, "materialize"):
            with applied(unet, comp, force=force) as session:
                session.runtime.set_word_tokens(words)
                outs[force] = unet(x, 5, encoder_hidden_states=enc).sample
    token_mask = torch.zeros(2, 12, dtype=torch.bool)
    token_mask[0, [3, 4]] = True  # tri ##angle
    token_mask[1, 6] = True  # square
    ref = _float64_reference(unet, x, enc, edit_cross=lambda n, p: wr.reference_probs(p, token_mask, 3.0, mode))
    for out in outs.values():
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5)
    with torch.no_grad():
        plain = unet(x, 5, encoder_hidden_states=enc).sample
    assert (outs[None] - plain).abs().max() > 1e-3


def test_word_reweight_without_word_tokens_names_the_problem():
    unet = tiny_unet()
    x, enc = inputs()
    with pytest.raises(ValueError, match="word_reweight reads prompt-word positions"):
        with torch.no_grad(), applied(unet, WordReweight(words=("red",))):
            unet(x, 5, encoder_hidden_states=enc)


def test_fast_equals_materialised_with_two_components_on_a_batch():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    from components.diffusion.runner import encode_prompts
    enc, words = encode_prompts(tok, te, ["a red circle", "the blue square", "a red triangle left of the circle"])
    x, _ = inputs(batch=3)
    comps = (WordReweight(words=("red",), scale=0.5), SoftPAG(strength=0.7, blocks=()))
    outs = []
    with torch.no_grad():
        for force in (None, "materialize"):
            with applied(unet, *comps, force=force) as session, session.runtime.pass_of("perturbed", comps[1]):
                session.runtime.set_word_tokens(words)
                outs.append(unet(x, 5, encoder_hidden_states=enc).sample)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=2e-5)


@pytest.mark.parametrize("comp, materialised", [
    (SoftPAG(strength=0.5, blocks=()), False),  # output form after the fused kernel
    (WordReweight(words=("red",), mode="logit"), False),  # bias in the kernel's float mask
    (WordReweight(words=("red",), mode="p2p"), True),  # no fused form
])
def test_routing_keeps_the_fused_kernel_where_the_edit_allows(comp, materialised, monkeypatch):
    from components.diffusion import dispatch
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    from components.diffusion.runner import encode_prompts
    enc, words = encode_prompts(tok, te, ["a red circle", "the blue square"])
    x, _ = inputs()
    seen = []
    original = dispatch.AttnflowProcessor._materialized
    monkeypatch.setattr(dispatch.AttnflowProcessor, "_materialized",
                        staticmethod(lambda call, *a: seen.append(call.name) or original(call, *a)))
    with torch.no_grad(), applied(unet, comp) as session, session.runtime.pass_of("perturbed", comp):
        session.runtime.set_word_tokens(words)
        unet(x, 5, encoder_hidden_states=enc)
    n_cross = sum(".attn2." in k for k in unet.attn_processors)
    assert len(seen) == (n_cross if materialised else 0)


def test_nested_scopes_compose_and_only_the_outermost_restores():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    from components.diffusion.runner import encode_prompts
    enc, words = encode_prompts(tok, te, ["a red circle", "the blue square"])
    x, _ = inputs()
    outer, inner = WordReweight(words=("red",), scale=3.0), SoftPAG(strength=0.5, blocks=())
    before = dict(unet.attn_processors)
    with torch.no_grad():
        with applied(unet, outer, inner) as both:
            both.runtime.set_word_tokens(words)
            with both.runtime.pass_of("perturbed", inner):
                together = unet(x, 5, encoder_hidden_states=enc).sample
        with applied(unet, outer) as session:
            session.runtime.set_word_tokens(words)
            only_outer = unet(x, 5, encoder_hidden_states=enc).sample
            with applied(unet, inner) as nested:
                assert nested.runtime is session.runtime
                with session.runtime.pass_of("perturbed", inner):
                    stacked = unet(x, 5, encoder_hidden_states=enc).sample
            assert torch.equal(unet(x, 5, encoder_hidden_states=enc).sample, only_outer)  # inner scope gone
            assert all(type(p).__name__ == "AttnflowProcessor" for p in unet.attn_processors.values())
    assert torch.equal(stacked, together)
    assert all(unet.attn_processors[k] is before[k] for k in before)
