"""retrieval_score on a model whose head is forced to copy the needle, against an independent decoding loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import registry
from components.analyzers.retrieval_score import needle_span
from components.attention.session import applied
from components.benchmarks import _needle
from components.patches.base import AttentionPatch
from tests.helpers.reference import reference
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny import tiny_model, tokenizer


def copy_model(vocab: int) -> LlamaForCausalLM:
    """One layer, two heads: head 0 writes its attended token's embedding (x20) into the residual stream, so the
    greedy token is whatever head 0 attends to; head 1 is random; the MLP is off; embeddings are tied."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=4, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        emb = torch.randn(vocab, 64)
        model.model.embed_tokens.weight.copy_(emb / emb.norm(dim=1, keepdim=True))
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight.zero_()
        attn.v_proj.weight[:64] = torch.eye(64)
        attn.o_proj.weight.zero_()
        attn.o_proj.weight[:, :64] = 20 * torch.eye(64)
        model.model.layers[0].mlp.down_proj.weight.zero_()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


@dataclass(frozen=True)
class ForceCopy(AttentionPatch):
    """Test patch: at decoding step t, head 0 attends only to prompt position start + t (the needle, in order)."""

    start: int = 0
    prompt_len: int = 0
    edits_probabilities: ClassVar[bool] = True
    has_fast_path: ClassVar[bool] = False

    def active(self, call):
        return call.is_decode

    def edit_probs(self, call, probs):
        probs = probs.clone()
        probs[:, 0, -1] = 0.0
        probs[:, 0, -1, min(self.start + call.kv_len - self.prompt_len, call.kv_len - 1)] = 1.0
        return probs


def reference_scores(model, tok, ids, span, max_new):
    """Independent: full forwards without a cache, float64 reference attention, events counted by loops."""
    s, e = span
    plen = len(ids)

    def force(layer, probs, info):
        probs = probs.clone()
        probs[:, 0, -1] = 0.0
        probs[:, 0, -1, min(s + info.kv_len - plen, info.kv_len - 1)] = 1.0
        return probs

    seq, score, gen = list(ids), torch.zeros(1, 2, dtype=torch.float64), []
    with reference(model, edit_probs=force), torch.no_grad():
        for _ in range(max_new):
            out = model(input_ids=torch.tensor([seq]), output_attentions=True)
            token = int(out.logits[0, -1].argmax())
            for head in range(2):
                j = int(out.attentions[0][0, head, -1].argmax())
                if s <= j < e and ids[j] == token:
                    score[0, head] += 1 / (e - s)
            gen.append(token)
            seq.append(token)
            if token == tok.eos_token_id or "\n" in tok.decode([token]):
                break
    return score, tok.decode(gen, skip_special_tokens=True)


def test_forced_copy_head_is_the_retrieval_head():
    tok = tokenizer()
    model = copy_model(len(tok))
    rs = registry.get("retrieval_score").create({"lengths": "20", "depths": "0,0.5,1", "n_per_cell": "1",
                                                 "max_new_tokens": "8"})
    rows = rs.build()
    for row in rows:
        ids, span = needle_span(tok, row["prompt"], row["answer_start"], row["answer_end"])
        assert tok.decode(ids[span[0]:span[1]]).strip() == row["answer"]
        with applied(model, ForceCopy(start=span[0], prompt_len=len(ids))):
            res = rs.analyze(model, tok, [row])
        want, response = reference_scores(model, tok, ids, span, rs.max_new_tokens)
        assert res.tables["tests"][0]["response"] == _needle.answer_response(response)
        assert res.metrics["n_counted"] == 1  # the answer recalls the needle
        assert torch.allclose(torch.from_numpy(res.arrays["retrieval_score"]), want)
        assert res.arrays["retrieval_score"][0, 0] == pytest.approx(1.0)  # every answer token copied by head 0
        assert res.heads["retrieval_heads"][0] == (0, 0)


def test_without_copying_no_test_counts():
    tok = tokenizer()
    model = copy_model(len(tok))
    rs = registry.get("retrieval_score").create({"lengths": "20", "depths": "0,1", "n_per_cell": "1",
                                                 "max_new_tokens": "6"})
    res = rs.analyze(model, tok, rs.build())
    assert res.metrics["n_counted"] == 0 and res.metrics["n_tests"] == 2
    assert res.heads["retrieval_heads"] == [] and res.arrays["retrieval_score"].max() == 0.0


def eager_reference(model, tok, ids, span, max_new):
    """The formula from materialised eager attention: full forwards without a cache, per test; at every step each
    head's top-1 attended key of the last query, an event when it lies in the span and holds the generated token."""
    s, e = span
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    seq, score, gen = list(ids), torch.zeros(n_layers, n_heads, dtype=torch.float64), []
    for _ in range(max_new):
        out = model(input_ids=torch.tensor([seq]), output_attentions=True)
        token = int(out.logits[0, -1].argmax())
        for layer in range(n_layers):
            for head in range(n_heads):
                j = int(out.attentions[layer][0, head, -1].argmax())
                if s <= j < e and ids[j] == token:
                    score[layer, head] += 1 / (e - s)
        gen.append(token)
        seq.append(token)
        if token == tok.eos_token_id or "\n" in tok.decode([token]):
            break
    return score, gen


def echo_model(family: str) -> torch.nn.Module:
    """A random GQA model (4 heads, 2 KV heads) whose greedy token is its input token (unit embeddings shared by
    the output layer, attention and MLP outputs scaled down), so heads that attend to that token's occurrences in
    the prompt make copy events; float64 keeps top-1 choices far from float rounding."""
    model = tiny_model(family, layers=3, heads=4, kv_heads=2).double()
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.div_(emb.norm(dim=1, keepdim=True).clamp(min=1e-6))  # (the padding row stays zero)
        model.lm_head.weight.copy_(emb)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.05)
            layer.mlp.down_proj.weight.mul_(0.05)
    return model


@pytest.mark.parametrize("family", ["llama", "mistral"])  # GQA 4 heads / 2 KV heads; mistral: sliding window 12
def test_batched_fast_path_equals_the_eager_formula(family):
    tok = tokenizer()
    model = echo_model(family)
    rs = registry.get("retrieval_score").create({"lengths": "12,20,31", "depths": "0.5", "n_per_cell": "1",
                                                 "max_new_tokens": "8", "batch_size": "3"})
    tests = []
    for row in rs.build():
        ids, _ = needle_span(tok, row["prompt"], row["answer_start"], row["answer_end"])
        tests.append((ids, (1, len(ids))))  # the whole prompt as the span: copy events happen on a random model
    assert len({len(ids) for ids, _ in tests}) == 3  # ragged: the batch is left-padded
    with applied(model):
        fast = rs.score_batch(model, tok, tests)
    model.set_attn_implementation("eager")
    events = 0.0
    with torch.no_grad():
        for (ids, span), (score, gen) in zip(tests, fast):
            want, want_gen = eager_reference(model, tok, ids, span, rs.max_new_tokens)
            assert gen == want_gen
            assert torch.equal(score, want)
            events += float(want.sum())
    assert events > 0  # the comparison covers real events, not only zeros
