"""Benchmarks: deterministic data with answers a trivial solver finds, scored on a tiny model."""

from __future__ import annotations

import math
import re

import pytest

import registry
from components.data import DataSourceError


def solve_kv(prompt: str) -> str:
    """The trivial solver: look the queried key up in the context (``k v, k v`` words)."""
    context, query = prompt.removeprefix("Pairs: ").rsplit(". ", 1)
    table = dict(pair.split(" ") for pair in context.split(", "))
    return table[query]


def test_kv_retrieval_deterministic_and_solvable():
    b = registry.get("kv_retrieval").create({"n_pairs": "6", "n_examples": "30", "seed": "3"})
    rows = b.build("eval")
    assert rows == b.build("eval")  # deterministic
    assert rows != b.build("train")  # disjoint splits
    assert all(solve_kv(r["prompt"]) == r["answer"] for r in rows)
    assert {round(r["depth"], 3) for r in rows} == {round(i / 5, 3) for i in range(6)}


def test_kv_retrieval_scores_tiny_model(tiny_llama_dir):
    from components.modeling import load_model

    model, tok = load_model(str(tiny_llama_dir))
    b = registry.get("kv_retrieval").create({"n_examples": "8"})
    res = b.evaluate(model, tok, b.build("eval"), batch_size=4)
    assert 0.0 <= res.metrics["accuracy"] <= 1.0 and len(res.examples) == 8
    assert sum(r["n"] for r in res.breakdowns["by_depth"]) == 8


def test_perplexity_on_file_sources(tiny_llama_dir, tmp_path):
    from components.modeling import load_model

    model, tok = load_model(str(tiny_llama_dir))
    (tmp_path / "a.txt").write_text("Tom went to the park.\n\nLily saw a red ball near the river.\n")
    (tmp_path / "b.jsonl").write_text('{"body": "Tom went to the park."}\n{"body": "Lily saw a red ball."}\n')
    for src, field in [(tmp_path / "a.txt", "text"), (tmp_path / "b.jsonl", "body")]:
        b = registry.get("perplexity").create({"source": str(src), "text_field": field})
        res = b.evaluate(model, tok, b.build("eval"))
        assert math.isfinite(res.metrics["ppl"]) and res.metrics["ppl"] > 1
        assert res.metrics["nll"] == pytest.approx(math.log(res.metrics["ppl"]))
    with pytest.raises(DataSourceError, match="no field 'text'.*body"):
        registry.get("perplexity").create({"source": str(tmp_path / "b.jsonl")}).build("eval")
    with pytest.raises(DataSourceError, match="does not exist"):
        registry.get("perplexity").create({"source": str(tmp_path / "none.txt")}).build("eval")


def test_perplexity_of_a_perfect_predictor_is_near_one(tiny_llama_dir):
    """Sanity of the NLL bookkeeping: a model that always predicts the next token has ppl ~ 1."""
    import torch

    from components.modeling import load_model

    model, tok = load_model(str(tiny_llama_dir))
    text = " ".join(["abc"] * 200)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nxt: dict[int, int] = {}
    for a, b in zip(ids, ids[1:]):
        nxt.setdefault(a, b)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            logits = torch.full((*input_ids.shape, len(tok)), -30.0)
            for b in range(input_ids.shape[0]):
                for t in range(input_ids.shape[1]):
                    logits[b, t, nxt.get(int(input_ids[b, t]), 0)] = 30.0
            return type("O", (), {"logits": logits})()

    b = registry.get("perplexity").create({"max_tokens": str(len(ids))})  # the EOS separator is cut off
    res = b.evaluate(Oracle(), _NoBosTokenizer(tok), [{"text": text}])
    n_windows = math.ceil(len(ids) / 256)  # each window's first token has no context
    assert res.metrics["ppl"] < 1.01 and res.metrics["n_tokens"] == len(ids) - n_windows


def test_builtin_stories_are_deterministic():
    b = registry.get("perplexity").create({})
    rows = b.build("eval")
    assert rows == b.build("eval") and len(rows) == 200
    assert all(re.search(r"[A-Za-z]", r["text"]) for r in rows)


class _NoBosTokenizer:
    """The tiny tokenizer (which puts BOS before every text) made to add nothing, as GPT-2's and SmolLM2's."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __len__(self):
        return len(self._tok)

    def __call__(self, text, add_special_tokens=True, **kw):
        return self._tok(text, add_special_tokens=False, **kw)


def test_perplexity_windows_start_with_bos_when_the_tokenizer_adds_it(tiny_llama_dir):
    """A BOS-adding tokenizer: each window is read after BOS and all its tokens are scored (reference: the
    windows scored one by one with an explicit BOS); a tokenizer that adds nothing gets no prefix."""
    import torch

    from components.benchmarks._scoring import leading_bos
    from components.modeling import load_model

    model, tok = load_model(str(tiny_llama_dir))
    assert leading_bos(tok) == [tok.bos_token_id] and leading_bos(_NoBosTokenizer(tok)) == []
    text = "the cat sat on the mat and looked at the dog " * 30
    ids = tok(text, add_special_tokens=False)["input_ids"]
    b = registry.get("perplexity").create({"max_tokens": str(len(ids)), "max_length": "64"})
    res = b.evaluate(model, tok, [{"text": text}], batch_size=3)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), 64):
            w = torch.tensor([[tok.bos_token_id] + ids[i:i + 64]])  # (1, 1 + T)
            logits = model(input_ids=w).logits[0, :-1].double()  # (T, V)
            total += float(torch.nn.functional.cross_entropy(logits, w[0, 1:].long(), reduction="sum"))
            count += w.shape[1] - 1
    assert res.metrics["n_tokens"] == count == len(ids)
    assert abs(res.metrics["nll"] - total / count) < 1e-5
