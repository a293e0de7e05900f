"""The dispatcher: scoped, composable, restores the model, errors name unsupported models."""

from __future__ import annotations

import pytest
import torch

import registry
from components.attention.session import UnsupportedModelError, applied
from tests.helpers.compare import TOL, inputs
from tests.helpers.reference import first_real, reference
from tests.helpers.tiny import FAMILIES, tiny_model, tokenizer


TEXTS = ["once upon a time a dog ran far away and abc:012 xyz:345.", "the cat sat on a mat"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_patch_is_scoped_and_restores(family):
    """Contract over the registry: outputs return to the unpatched model after the block and after an exception.
    Patches that read per-batch inputs get the texts; patches that need fitting are fitted on a tiny train split."""
    model, tok = tiny_model(family), tokenizer()
    tok.padding_side = "left"
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    fit_rows = registry.get("kv_retrieval").create({"n_pairs": "2", "n_examples": "6"}).build("train")
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        impl = model.config._attn_implementation
        for info in registry.latest("patch"):
            if info.cls.needs_images:  # acts on image tokens: refused on a text-only model before any forward
                with pytest.raises(ValueError, match="needs a vision-language model"):
                    with info.create(info.cls.example).applied(model):
                        pass
                continue
            patch = info.create(info.cls.example)
            if info.cls.needs_fit:
                patch = patch.fit(model, tok, fit_rows)
            with patch.applied(model) as session:
                session.set_inputs(texts=TEXTS, tokenizer=tok)
                model(input_ids=ids, attention_mask=mask)
            with pytest.raises(RuntimeError, match="boom"):
                with patch.applied(model) as session:
                    session.set_inputs(texts=TEXTS, tokenizer=tok)
                    model(input_ids=ids, attention_mask=mask)
                    raise RuntimeError("boom")
            after = model(input_ids=ids, attention_mask=mask).logits
            assert torch.equal(before, after), info.ref
            assert model.config._attn_implementation == impl
            assert not any(hasattr(m, "_attnflow_stack") for m in model.modules())


def test_baseline_equals_stock_sdpa():
    model = tiny_model("llama")
    ids, mask = inputs()
    with torch.no_grad():
        stock = model(input_ids=ids, attention_mask=mask).logits
        with registry.get("baseline").create().applied(model):
            ours = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(stock, ours)


def test_patches_compose_in_one_scope_and_nested():
    model = tiny_model("llama")
    zt = registry.get("zerotuning").create({"gamma": "4", "heads": "0:*"})
    hm = registry.get("head_mask").create({"heads": "1:0", "mode": "zero"})
    ids, mask = inputs()

    def edit_probs(layer, probs, info):
        if layer == 0:
            fr = first_real(info, probs.shape[0])
            probs = probs.clone()
            for b in range(probs.shape[0]):
                probs[b, :, :, fr[b]] *= 4
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-300)
        return probs

    def edit_out(layer, out, info):
        if layer == 1:
            out = out.clone()
            out[:, 0] = 0
        return out

    with torch.no_grad():
        with applied(model, zt, hm):
            both = model(input_ids=ids, attention_mask=mask).logits
        with zt.applied(model), hm.applied(model):
            nested = model(input_ids=ids, attention_mask=mask).logits
        with reference(model, edit_probs=edit_probs, edit_out=edit_out):
            want = model(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    assert (both - want)[valid].abs().max() <= TOL
    assert (nested - want)[valid].abs().max() <= TOL


def test_output_attentions_materialises_patched_probabilities():
    model = tiny_model("llama")
    zt = registry.get("zerotuning").create({"gamma": "9", "heads": "0:0"})
    ids = torch.randint(3, 300, (1, 10))
    with torch.no_grad(), zt.applied(model):
        out = model(input_ids=ids, output_attentions=True)
    probs = out.attentions[0]  # (B, H, T, S)
    assert probs.shape == (1, 4, 10, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 10))
    assert probs[0, 0, 1:, 0].mean() > probs[0, 1, 1:, 0].mean()  # head 0 attends more to key 0


def test_check_model_rejects_out_of_range_heads_before_patching():
    model = tiny_model("llama")
    hm = registry.get("head_mask").create({"heads": "5:0"})
    with pytest.raises(ValueError, match="head_mask.heads: 5:0 out of range for a model with 2 layers x 4 heads"):
        with hm.applied(model):
            pass
    assert model.config._attn_implementation == "sdpa"


def test_unsupported_model_is_named():
    with pytest.raises(UnsupportedModelError, match="Linear cannot be patched"):
        with applied(torch.nn.Linear(2, 2)):
            pass


def test_sparse_bias_takes_the_cheaper_exact_form(monkeypatch):
    """A sparse bias on at most 1/64 of the keys is corrected from the log-sum-exp; a larger one (PASTA's spans)
    takes the extra-channel form, which costs less then; ``force="lse"`` keeps the correction. Both are exact."""
    from components.attention import math as am

    corrected: list[int] = []  # K of every sparse bias corrected from the lse
    real = am.correct_sparse_biases

    def spy(out, lse, q, k, v, biases, call, extra_logits=None):
        corrected.extend(b.index.shape[1] for b in biases)
        return real(out, lse, q, k, v, biases, call, extra_logits=extra_logits)

    monkeypatch.setattr(am, "correct_sparse_biases", spy)
    model, tok = tiny_model("llama"), tokenizer()
    text = " ".join(["once upon a time a dog ran far away and abc:012 xyz:345."] * 12)
    ids = tok([text], return_tensors="pt")["input_ids"]
    assert ids.shape[1] >= 128
    zt = registry.get("zerotuning").create({"gamma": "2"})  # one key (the first)
    pasta = registry.get("pasta").create({"alpha": "0.5", "spans": "0:60"})  # ~15 keys: > S / 64
    logits = {}
    with torch.no_grad():
        for name, patch, force in [("zt", zt, None), ("pasta", pasta, None), ("pasta_lse", pasta, "lse")]:
            corrected.clear()
            with patch.applied(model, force=force) as session:
                session.set_inputs(texts=[text], tokenizer=tok)
                logits[name] = model(input_ids=ids).logits
            logits[name + "_k"] = list(corrected)
    assert logits["zt_k"] == [1, 1]  # both layers, from the lse
    assert logits["pasta_k"] == []  # the channel form
    assert len(logits["pasta_lse_k"]) == 2 and min(logits["pasta_lse_k"]) * am.LSE_KEYS_PER_CHANNEL > ids.shape[1]
    assert (logits["pasta"] - logits["pasta_lse"]).abs().max().item() <= TOL
