"""Query-agnostic press evaluation (the context compressed alone, the question on its cache) and presses composed
with attention patches, on a tiny random Llama."""

from __future__ import annotations

import pytest

import registry
from components.benchmarks import _scoring
from components.presses._query import query_agnostic, split_ids
from registry.specs import parse


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    from components.modeling import load_model

    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def rows(tiny_llama_dir):
    kv = registry.get("kv_retrieval").create({"n_pairs": "10", "n_examples": "3"}).build("eval")
    niah = registry.get("niah_multikey").create({"lengths": "400,500", "n_per_length": "2", "n_keys": "3",
                                                 "tokenizer": str(tiny_llama_dir)}).build("eval")
    return kv, niah


def _splits(name, rows, **params):
    bench = registry.get(name).create(params)
    return {r["prompt"]: bench.question_start(r) for r in rows}


@pytest.mark.parametrize("batch_size", [1, 4])
def test_ratio_zero_query_agnostic_equals_unpressed_greedy(loaded, rows, tiny_llama_dir, batch_size):
    model, tok = loaded
    kv, niah = rows
    for name, data, params in [("kv_retrieval", kv, {}), ("niah_multikey", niah, {"tokenizer": str(tiny_llama_dir)})]:
        prompts = [r["prompt"] for r in data]
        ref = _scoring.greedy_continuations(model, tok, prompts, 12, batch_size=1)
        press = parse("snapkv(window=4)").create("press").with_ratio(0.0)
        with press.applied(model) as state, query_agnostic(_splits(name, data, **params)):
            got = _scoring.greedy_continuations(model, tok, prompts, 12, batch_size=batch_size)
        assert got == ref, name
        assert state.n_prefills == -(-len(prompts) // batch_size)
        assert any(c.strip() for c in got)


def test_the_context_alone_is_compressed_before_the_question(loaded, rows, tiny_llama_dir):
    model, tok = loaded
    _, niah = rows
    row = niah[0]
    start = registry.get("niah_multikey").create({"tokenizer": str(tiny_llama_dir)}).question_start(row)
    ids, n_ctx = split_ids(tok, row["prompt"], start)
    assert tok.decode(ids[n_ctx:]).strip().startswith("What are all")  # the question tokens
    seen = []
    press = parse("knorm").create("press").with_ratio(0.5)
    orig = type(press).score

    def spy(self, inp):
        seen.append(inp.keys.shape[2])
        return orig(self, inp)

    type(press).score = spy
    try:
        with press.applied(model) as state, query_agnostic({row["prompt"]: start}):
            _scoring.greedy_continuations(model, tok, [row["prompt"]], 4, batch_size=1)
    finally:
        type(press).score = orig
    assert seen == [n_ctx, n_ctx]  # both layers scored the context only, once
    assert state.prefill_len == n_ctx and state.seen > n_ctx  # the question came after, on the compressed cache
    assert abs(state.kept_bytes / state.full_bytes - 0.5) <= 0.05
    with pytest.raises(ValueError, match="no context/question split"):
        with press.applied(model), query_agnostic({}):
            _scoring.greedy_continuations(model, tok, [row["prompt"]], 2)


def test_query_agnostic_and_query_aware_differ_under_compression(loaded, rows, tiny_llama_dir):
    """At ratio 0.75 compressing the question too (query-aware) is not the same computation as keeping it out."""
    model, tok = loaded
    _, niah = rows
    prompts = [r["prompt"] for r in niah]
    press = parse("streaming_llm(n_sink=2)").create("press").with_ratio(0.75)
    with press.applied(model) as aware:
        _scoring.greedy_continuations(model, tok, prompts, 3, batch_size=4)
    splits = _splits("niah_multikey", niah, tokenizer=str(tiny_llama_dir))
    with press.applied(model) as agnostic, query_agnostic(splits):
        _scoring.greedy_continuations(model, tok, prompts, 3, batch_size=4)
    assert agnostic.total_full_bytes < aware.total_full_bytes  # only the contexts were prefilled (and pressed)


@pytest.mark.parametrize("patch", ["zerotuning(gamma=3.0)", "head_mask(heads=0:1;1:0)"])
def test_press_composes_with_an_attention_patch(loaded, rows, patch):
    model, tok = loaded
    kv, _ = rows
    prompts = [r["prompt"] for r in kv]
    p = parse(patch).create("patch")
    plain = _scoring.greedy_continuations(model, tok, prompts, 6, batch_size=3)
    with p.applied(model) as session:
        alone = _scoring.greedy_continuations(model, tok, prompts, 6, batch_size=3, session=session)
    assert alone != plain  # the patch changes the answers on this model
    press = parse("tova").create("press")
    with press.with_ratio(0.0).applied(model), p.applied(model) as session:
        both = _scoring.greedy_continuations(model, tok, prompts, 6, batch_size=3, session=session)
    assert both == alone
    with press.with_ratio(0.5).applied(model) as state, p.applied(model) as session:
        _scoring.greedy_continuations(model, tok, prompts, 6, batch_size=3, session=session)
    assert abs(state.total_kept_bytes / state.total_full_bytes - 0.5) <= 0.05
