"""The dispatcher on the real models' architectures: Gemma-3 (sliding-window layers, query_pre_attn_scalar
scaling, one KV head, optional bidirectional attention) and Llama with GQA 9:3 (SmolLM2's layout).

On a ragged, left-padded batch longer than the sliding window: the ``baseline`` patch gives stock transformers'
logits (eager and sdpa) at prefill and at every KV-cache decode step, and every patch's fast path (and its
``channels``/``bias`` forms) equals its materialised form. ``scripts``-style checks on the real checkpoints are in
bench/real_model_parity.py (docs/real-models.md)."""

from __future__ import annotations

import pytest
import torch

import registry
from components.attention.session import applied
from tests.helpers.compare import TOL, _step_logits
from tests.helpers.tiny import REAL_ARCHS, tiny_model, tokenizer

TEXTS = ["once upon a time a dog ran far away and abc:012 xyz:345. the dog was happy and ran home to see mom",
         "the cat sat on a mat"]
STEPS = 4
ARCHS = [(a, False) for a in REAL_ARCHS] + [("gemma3", True)]


def _model(arch: str, bidirectional: bool):
    return tiny_model(arch, layers=3, bidirectional=bidirectional)


def _batch():
    tok = tokenizer()
    tok.padding_side = "left"
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return tok, enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _run(model, ids, mask, *patches, force=None, impl=None, texts=TEXTS):
    """(prefill logits, greedy tokens, per-step decode logits with a KV cache)."""
    full = torch.cat([mask, torch.ones(mask.shape[0], STEPS, dtype=torch.long)], 1)
    if impl:
        model.set_attn_implementation(impl)
        logits = model(input_ids=ids, attention_mask=mask).logits
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False,
                             pad_token_id=0)
        return logits, gen, _step_logits(model, gen, full, ids.shape[1])
    with applied(model, *patches, force=force) as session:
        session.set_inputs(texts=texts, tokenizer=tokenizer())
        logits = model(input_ids=ids, attention_mask=mask).logits
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, do_sample=False,
                             pad_token_id=0)
        session.set_inputs(texts=texts, tokenizer=tokenizer())
        return logits, gen, _step_logits(model, gen, full, ids.shape[1])


def test_batch_is_longer_than_the_window_and_left_padded():
    model = _model("gemma3", False)
    _, ids, mask = _batch()
    assert ids.shape[1] > 4 * model.config.sliding_window and not mask[1, 0]
    assert model.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    assert model.model.layers[0].self_attn.scaling != model.config.head_dim ** -0.5


@pytest.mark.parametrize("arch, bidirectional", ARCHS)
def test_baseline_equals_stock_eager_and_sdpa(arch, bidirectional):
    model = _model(arch, bidirectional)
    _, ids, mask = _batch()
    valid = mask.bool()
    eager = _run(model, ids, mask, impl="eager")
    sdpa = _run(model, ids, mask, impl="sdpa")
    ours = _run(model, ids, mask, registry.get("baseline").create())
    for stock in (eager, sdpa):
        assert (ours[0] - stock[0])[valid].abs().max() <= TOL
        assert torch.equal(ours[1], stock[1])
        assert (ours[2] - stock[2]).abs().max() <= TOL


@pytest.mark.parametrize("arch, bidirectional", ARCHS)
def test_every_fast_path_equals_its_materialised_form(arch, bidirectional):
    """Every registered patch (its example parameters) on prefill and KV-cache decode steps."""
    model = _model(arch, bidirectional)
    model.set_attn_implementation("sdpa")
    tok, ids, mask = _batch()
    valid = mask.bool()
    fit_rows = registry.get("kv_retrieval").create({"n_pairs": "2", "n_examples": "6"}).build("train")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    for info in [i for i in registry.latest("patch") if not i.cls.needs_images]:  # image patches: tiny VLM tests
        patch = info.create(info.cls.example)
        if info.cls.needs_fit:
            patch = patch.fit(model, tok, fit_rows)
        want = _run(model, ids, mask, patch, force="materialize")
        if info.name != "baseline":
            assert (want[0] - plain)[valid].abs().max() > 1e-3, info.ref  # the patch acts on this model
        for force in (None, "channels", "bias"):
            got = _run(model, ids, mask, patch, force=force)
            assert (got[0] - want[0])[valid].abs().max() <= TOL, (info.ref, force, "prefill")
            assert torch.equal(got[1], want[1]), (info.ref, force, "tokens")
            assert (got[2] - want[2]).abs().max() <= TOL, (info.ref, force, "decode")
