"""KV-cache presses on tiny random Llama models: scores vs the written-out formulas, top-k selection, padding,
ratio 0 = unpressed, measured cache shrinkage, decode-time eviction within budget."""

from __future__ import annotations

import pytest
import torch

from components.presses import _scoring
from components.presses.adakv import reference_counts
from components.presses.base import LayerInput, cache_bytes
from components.presses.h2o import reference_accumulated
from components.presses.knorm import reference_scores as knorm_ref
from components.presses.pyramidkv import pyramid_budgets
from components.presses.snapkv import reference_scores as snap_ref
from components.presses.streaming_llm import reference_scores as stream_ref
from components.presses.tova import reference_scores as tova_ref
from registry.specs import parse
from tests.helpers.tiny import tiny_model

PRESSES = ["streaming_llm", "knorm", "snapkv(window=8)", "tova", "h2o", "pyramidkv(window=8)", "adakv(press=knorm)"]


def _inputs(b=2, t=40, pad=(0, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for i, p in enumerate(pad[:b]):
        ids[i, :p], mask[i, :p] = 0, 0
    return ids, mask


def _capture(model, ids, mask, press):
    """Run a press on a prefill and return per-layer LayerInputs as the press saw them (uncompressed cache)."""
    seen = {}
    orig = type(press).score

    def spy(self, inp):
        seen[inp.layer] = LayerInput(inp.layer, inp.n_layers, inp.module, inp.keys.clone(), inp.values.clone(),
                                     inp.hidden, inp.cos_sin, inp.valid, {})
        return orig(self, inp)

    type(press).score = spy
    try:
        with torch.no_grad(), press.applied(model) as st:
            model(input_ids=ids, attention_mask=mask, use_cache=True)
    finally:
        type(press).score = orig
    return seen, st


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=2, heads=4, kv_heads=2)


def test_scores_match_reference_formulas(model):
    ids, mask = _inputs()
    valid = mask.bool()
    for spec in ("streaming_llm(n_sink=3)", "knorm", "snapkv(window=8,kernel=3)",
                 "snapkv(window=8,kernel=3,pooling=max)",
                 "tova", "h2o(recent=0)"):
        press = parse(spec).create("press")
        seen, _ = _capture(model, ids, mask, press)
        for layer, inp in seen.items():
            got = press.score(LayerInput(inp.layer, inp.n_layers, inp.module, inp.keys, inp.values, inp.hidden,
                                         inp.cos_sin, valid, {}))
            n_kv = inp.keys.shape[1]
            scale = inp.module.scaling
            if spec.startswith("streaming"):
                ref = stream_ref(valid, n_kv, 3)
            elif spec == "knorm":
                ref = knorm_ref(inp.keys)
            elif spec.startswith("snapkv"):
                q = _scoring.queries(inp, 8)
                ref = snap_ref(q, inp.keys, valid, scale, 8, 3, "max" if "max" in spec else "avg")
            elif spec == "tova":
                ref = tova_ref(_scoring.queries(inp, 1)[:, :, 0], inp.keys, valid, scale)
            else:
                ref = reference_accumulated(_scoring.queries(inp), inp.keys, valid, scale)
            fin = torch.isfinite(ref)
            assert torch.equal(fin, torch.isfinite(got)), spec
            torch.testing.assert_close(got[fin].float(), ref[fin].float(), rtol=1e-4, atol=1e-5, msg=spec)


@pytest.mark.parametrize("spec", PRESSES)
def test_kept_are_topk_and_no_pads(model, spec):
    press = parse(spec).create("press").with_ratio(0.5)
    ids, mask = _inputs(pad=(0, 9))
    with torch.no_grad(), press.applied(model) as st:
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    for layer in range(2):
        ls = st.layer_state[layer]
        scores, idx = ls["last_scores"], ls["last_idx"]
        k = idx.shape[-1]
        if ls.get("head_valid") is None:
            top = scores.topk(k, -1).values.min(-1, keepdim=True).values  # (B, Hkv, 1) k-th best score
            assert bool((scores.gather(2, idx) >= top).all()), "a kept position scores below the k-th best"
        real = mask.sum(1)  # (B,)
        pads = (~mask.bool())[:, None, :].expand(-1, idx.shape[1], -1).gather(2, idx)  # (B, Hkv, k)
        if ls.get("head_valid") is not None:  # head-wise budgets: a stored pad slot must be masked for its head
            assert not bool((pads & ls["head_valid"]).any()), "a pad position is attended"
            continue
        pads_kept = pads.sum(-1)  # (B, Hkv)
        # a pad is kept only when the row has fewer real tokens than the budget (it then stays masked)
        assert bool((pads_kept <= (k - real).clamp_min(0)[:, None]).all()), "a pad position was kept"
        assert out.past_key_values.layers[layer].keys.shape[2] == k


def test_adakv_counts_match_reference(model):
    press = parse("adakv(press=knorm,alpha=0.25)").create("press").with_ratio(0.5)
    ids, mask = _inputs(pad=(0, 0))
    with torch.no_grad(), press.applied(model) as st:
        model(input_ids=ids, attention_mask=mask, use_cache=True)
    ls = st.layer_state[0]
    counts = ls["head_valid"].sum(-1)  # (B, Hkv)
    assert torch.equal(counts, reference_counts(ls["last_scores"], 20, 0.25))


def test_pyramid_budgets():
    b = pyramid_budgets(100, 5, 3.0, 10_000)
    assert b[0] == 150 and b[-1] == 50 and abs(sum(b) / 5 - 100) <= 1


@pytest.mark.parametrize("spec", PRESSES)
def test_ratio_zero_equals_unpressed(model, spec):
    press = parse(spec).create("press").with_ratio(0.0)
    ids, mask = _inputs(pad=(0, 5))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        ref_gen = model.generate(input_ids=ids, attention_mask=mask, **kw)
        with press.applied(model):
            got = model(input_ids=ids, attention_mask=mask).logits
            got_gen = model.generate(input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(ref, got)
    assert torch.equal(ref_gen, got_gen)


def test_compressed_decode_matches_manual_reference(model):
    """Decoding on a StreamingLLM-compressed cache equals attending to the kept positions only (explicit mask)."""
    press = parse("streaming_llm(n_sink=2)").create("press").with_ratio(0.5)
    ids, mask = _inputs(b=1, t=20, pad=(0,))
    nxt = torch.tensor([[17]])
    with torch.no_grad():
        with press.applied(model):
            out = model(input_ids=ids, use_cache=True)
            got = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True).logits[:, -1]
        # reference: full model, the new token sees keys {0,1} + {12..19} + itself only (per layer)
        keep = torch.zeros(21, dtype=torch.bool)
        keep[:2], keep[12:] = True, True
        full = torch.cat([ids, nxt], 1)
        allowed = torch.ones(21, 21, dtype=torch.bool).tril()
        allowed[-1] = keep
        add = torch.zeros(1, 1, 21, 21).masked_fill(~allowed, torch.finfo(torch.float32).min)
        ref = model(input_ids=full, attention_mask=add).logits[:, -1]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", ["streaming_llm", "knorm", "snapkv(window=8)", "tova", "h2o"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_cache_really_shrinks(model, spec, ratio):
    press = parse(spec).create("press").with_ratio(ratio)
    ids, mask = _inputs(b=2, t=64, pad=(0, 0))
    with torch.no_grad():
        full = cache_bytes(model(input_ids=ids, use_cache=True).past_key_values)
        with press.applied(model) as st:
            kept = cache_bytes(model(input_ids=ids, use_cache=True).past_key_values)
    want = round(64 * (1 - ratio)) / 64
    assert abs(kept / full - want) <= 0.05 * want
    assert st.full_bytes == full and st.kept_bytes == kept


@pytest.mark.parametrize("spec", ["streaming_llm(budget=12,evict_every=3)", "knorm(budget=12,evict_every=1)",
                                  "h2o(budget=12,evict_every=4)"])
def test_decode_eviction_within_budget(model, spec):
    press = parse(spec).create("press")
    ids, mask = _inputs(b=2, t=30, pad=(0, 4))
    every = press.evict_every
    with torch.no_grad(), press.applied(model):
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache, m = out.past_key_values, mask
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        for step in range(1, 13):
            m = torch.cat([m, torch.ones(2, 1, dtype=torch.long)], 1)
            out = model(input_ids=tok, attention_mask=m, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            n = cache.layers[0].keys.shape[2]
            if step % every == 0:
                assert all(cache.layers[layer].keys.shape[2] == 12 for layer in range(2))
            assert n <= 12 + every - 1


def test_bad_parameters():
    with pytest.raises(ValueError, match="evict_every"):
        parse("snapkv(budget=8,evict_every=2)").create("press")
    with pytest.raises(ValueError, match="ratio"):
        parse("knorm(ratio=1.0)").create("press")


def test_query_agnostic_generation_ratio_zero_equals_generate(model):
    from components.presses._decode import generate_on_cache

    ids, mask = _inputs(b=2, t=30, pad=(0, 6))
    question = torch.randint(3, 300, (2, 5), generator=torch.Generator().manual_seed(1))
    press = parse("snapkv(window=4)").create("press").with_ratio(0.0)
    got, _ = generate_on_cache(model, press, ids, mask, question, 5)
    full_mask = torch.cat([mask, torch.ones_like(question)], 1)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.cat([ids, question], 1), attention_mask=full_mask, max_new_tokens=5,
                             do_sample=False, pad_token_id=0)[:, -5:]
    assert torch.equal(got, ref)


def test_recomputed_window_attention_equals_the_models_attention():
    """The queries a press recomputes from the layer input reproduce the model's own attention rows (eager path,
    left padding included): the scores are taken from the attention the model really computes."""
    m = tiny_model("llama", layers=2, heads=4, kv_heads=2)
    m.config._attn_implementation = "eager"
    ids, mask = _inputs(b=2, t=30, pad=(0, 6))
    cap = {}

    def post(mod, args, kwargs, out):
        cap[mod.layer_idx] = (kwargs["hidden_states"], kwargs["position_embeddings"], out[1])

    handles = [layer.self_attn.register_forward_hook(post, with_kwargs=True) for layer in m.model.layers]
    try:
        with torch.no_grad():
            out = m(input_ids=ids, attention_mask=mask, use_cache=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    for layer, (hid, cos_sin, weights) in cap.items():
        cl = out.past_key_values.layers[layer]
        inp = LayerInput(layer, 2, m.model.layers[layer].self_attn, cl.keys, cl.values, hid, cos_sin, mask.bool(), {})
        got = _scoring.window_attention(inp, 5)  # (B, H, 5, T)
        torch.testing.assert_close(got, weights[:, :, -5:].float(), rtol=1e-5, atol=1e-6)
