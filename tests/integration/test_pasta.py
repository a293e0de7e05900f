"""PASTA steering equals its formula (attention to prompt tokens outside the spans x alpha, renormalised; generated
tokens untouched) on a materialised reference, with spans mapped from characters to tokens."""

from __future__ import annotations

import pytest
import torch

import registry
from components.base import ParamError, unescape
from components.patches.pasta import char_spans, parse_ranges, reference_probs
from tests.helpers.compare import TOL, _step_logits
from tests.helpers.reference import reference
from tests.helpers.tiny import tiny_model, tokenizer

TEXTS = ["once upon a time [a dog ran far] and abc:012 xyz:345.", "the cat [sat] on a mat"]


def outside_flags(text, spans):
    """Token-level flags written directly from the offsets: outside every span, special tokens included."""
    offs = tokenizer()(text, return_offsets_mapping=True)["offset_mapping"]
    return [not any(s < hi and e > lo for lo, hi in spans) for s, e in offs]


def pasta_reference(pasta, flags, pad, n_heads=4):
    def edit(layer, probs, info):  # probs (B, H, q, S); keys at absolute positions off..off+S
        heads = [h for h in range(n_heads) if (layer, h) in pasta.heads]
        off = info.attention_mask_2d.shape[1] - info.kv_len
        outside = torch.zeros(probs.shape[0], info.kv_len, dtype=torch.bool)  # (B, S)
        for b, (fl, p) in enumerate(zip(flags, pad)):
            outside[b, [p + t - off for t, f in enumerate(fl) if f and p + t - off >= 0]] = True
        return reference_probs(probs, outside, heads, pasta.alpha)

    return edit


def run(model, pasta, texts, decode_steps=3, force=None):
    tok = tokenizer()
    tok.padding_side = "left"
    enc = tok(texts, padding=True, return_tensors="pt")
    spans = [char_spans(t, parse_ranges(pasta.spans), pasta.span_start, pasta.span_end) for t in texts]
    flags = [outside_flags(t, s) for t, s in zip(texts, spans)]
    pad = [int((m == 0).sum()) for m in enc["attention_mask"]]
    valid = enc["attention_mask"].bool()
    with torch.no_grad():
        with pasta.applied(model, force=force) as session:
            session.set_inputs(texts=texts, tokenizer=tok)
            got = model(**enc).logits
            gen = model.generate(**enc, max_new_tokens=decode_steps, do_sample=False, pad_token_id=0)
            full = torch.cat([enc["attention_mask"], torch.ones(len(texts), decode_steps, dtype=torch.long)], 1)
            dec = _step_logits(model, gen, full, enc["input_ids"].shape[1])
        with reference(model, edit_probs=pasta_reference(pasta, flags, pad)):
            want = model(**enc).logits
            ref_dec = _step_logits(model, gen, full, enc["input_ids"].shape[1])
        base = model(**enc).logits
    return {"prefill": (got - want)[valid].abs().max().item(), "decode": (dec - ref_dec).abs().max().item(),
            "effect": (got - base)[valid].abs().max().item()}


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
def test_pasta_markers_match_formula(family):
    pasta = registry.get("pasta").create({"alpha": "0.2", "span_start": "[", "span_end": "]", "heads": "0:*,1:2"})
    d = run(tiny_model(family), pasta, TEXTS)
    assert d["prefill"] <= TOL and d["decode"] <= TOL and d["effect"] > 1e-3, d


# dense channel form; sparse bias in its cheaper form (the channel, on these short rows); sparse bias corrected
# from the log-sum-exp
@pytest.mark.parametrize("sparse_max, force", [(0, None), (1000, None), (1000, "lse")])
def test_pasta_ranges_both_bias_forms(sparse_max, force):
    pasta = registry.get("pasta").create({"alpha": "3", "spans": "2:9,-6:", "heads": "1:*",
                                          "sparse_max": str(sparse_max)})
    d = run(tiny_model("llama"), pasta, TEXTS, force=force)
    assert d["prefill"] <= TOL and d["decode"] <= TOL and d["effect"] > 1e-3, d


def test_spans_and_validation():
    assert parse_ranges("0:5, -3:, :2") == [(0, 5), (-3, None), (None, 2)]
    assert char_spans("ab<u>cd</u>ef<u>g", [], "<u>", "</u>") == [(5, 7), (16, 17)]
    assert char_spans("abcdef", [(-2, None), (1, 3)], "", "") == [(4, 6), (1, 3)]
    assert char_spans("a -> B\nb -> C\nc ->", [], "->", unescape("\\n")) == [(4, 6), (11, 13)]  # label tokens
    with pytest.raises(ParamError, match="pasta.spans: span 'x:1' is not a character range"):
        registry.get("pasta").create({"spans": "x:1"})
    with pytest.raises(ParamError, match="give spans"):
        registry.get("pasta").create({})


def test_pasta_without_texts_names_the_problem():
    pasta = registry.get("pasta").create({"spans": "0:3"})
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="pasta needs the prompt texts"):
        with pasta.applied(model), torch.no_grad():
            model(input_ids=torch.tensor([[1, 5, 6, 7]]))
