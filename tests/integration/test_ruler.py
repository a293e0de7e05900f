"""RULER-style benchmarks: deterministic data, planted answers recoverable from the context, lengths in model
tokens within tolerance, RULER's string-match scoring, bad input refused before compute."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import pytest

import registry
from components.base import ParamError
from components.benchmarks import _ruler

TOL = 40  # one filler sentence / a few list items of the tiny tokenizer (which splits words into many tokens)


def _build(name, tiny_llama_dir, **params):
    b = registry.get(name).create({"tokenizer": str(tiny_llama_dir), "lengths": "400,500", "n_per_length": "3",
                                   **{k: str(v) for k, v in params.items()}})
    return b, b.build("eval")


def _check_common(b, rows, tiny_llama_dir):
    tok = _ruler.load_tokenizer(str(tiny_llama_dir))
    assert rows == b.build("eval") and rows != b.build("train")  # deterministic, disjoint splits
    assert len(rows) == 6 and [r["length"] for r in rows] == [400] * 3 + [500] * 3
    for r in rows:
        assert r["prompt"] == r["context"] + r["question"] and b.question_start(r) == len(r["context"])
        n = len(tok(r["prompt"])["input_ids"])
        assert n == r["n_tokens"] and r["length"] - b.max_new_tokens - TOL <= n <= r["length"] - b.max_new_tokens


def test_niah_single_and_multikey_answers_are_in_the_context(tiny_llama_dir):
    for name, params, n_needles in [("niah_single", {}, 1), ("niah_multikey", {"n_keys": 3}, 3),
                                    ("niah_multivalue", {"n_values": 2}, 2)]:
        b, rows = _build(name, tiny_llama_dir, **params)
        _check_common(b, rows, tiny_llama_dir)
        for r in rows:
            key = re.search(r"numbers for (\S+) mentioned", r["question"]).group(1)
            planted = re.findall(r"One of the special magic numbers for (\S+) is: (\d+)\.", r["context"])
            assert len(planted) == n_needles
            assert sorted(v for k, v in planted if k == key) == sorted(r["outputs"])  # the solver finds the answers
            assert all(len(v) == 7 for v in r["outputs"])
            if name == "niah_multikey":
                assert len({k for k, _ in planted}) == 3  # two distractor keys
    b, _ = _build("niah_single", tiny_llama_dir)
    assert len({r["depth"] for r in b.build("eval")}) > 1  # needles at several depths


def test_variable_tracking_chain_is_recoverable(tiny_llama_dir):
    b, rows = _build("variable_tracking", tiny_llama_dir, n_chains=2, n_hops=2)
    _check_common(b, rows, tiny_llama_dir)
    for r in rows:
        value = re.search(r"assigned the value (\d+) in", r["question"]).group(1)
        assigned: set[str] = set()
        for name, rhs in re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", r["context"]):  # in text order
            if rhs == value or rhs.removeprefix("VAR ") in assigned:
                assigned.add(name)
        assert assigned == set(r["outputs"]) and len(r["outputs"]) == 3
        assert len(re.findall(r"VAR [A-Z]{5} = ", r["context"])) == 6


def test_common_words_top_k_is_recoverable(tiny_llama_dir):
    b, rows = _build("common_words", tiny_llama_dir, num_cw=3, freq_cw=5, freq_ucw=1, max_new_tokens=16)
    _check_common(b, rows, tiny_llama_dir)
    for r in rows:
        words = re.findall(r"\d+\. ([a-z]+)", r["context"])
        counts = Counter(words)
        assert sorted(w for w, _ in counts.most_common(3)) == sorted(r["outputs"])
        assert all(counts[w] == 5 for w in r["outputs"]) and r["n_uncommon"] > 0
        assert max(c for w, c in counts.items() if w not in r["outputs"]) == 1


def test_string_match_all_scoring_on_hand_examples():
    assert _ruler.string_match_all(" 1234567 and 7654321.", ["1234567", "7654321"]) == 1.0
    assert _ruler.string_match_all("only 1234567", ["1234567", "7654321"]) == 0.5
    assert _ruler.string_match_all("The words are BAKO, timu", ["bako", "timu", "zefa"]) == pytest.approx(2 / 3)
    assert _ruler.string_match_all("nothing", ["x1"]) == 0.0


def test_evaluate_scores_answers_by_string_match(tiny_llama_dir):
    from components.modeling import load_model

    model, tok = load_model(str(tiny_llama_dir))
    b, rows = _build("niah_single", tiny_llama_dir, max_new_tokens=4)
    res = b.evaluate(model, tok, rows[:2], batch_size=2)
    assert set(res.metrics) == {"accuracy", "all_correct", "accuracy_len400"}
    for e in res.examples:
        assert e["score"] == _ruler.string_match_all(e["output"], [e["answer"]])


def test_bad_input_is_refused_before_compute(tiny_llama_dir):
    with pytest.raises(ValueError, match="n_keys"):
        registry.get("niah_multikey").create({"n_keys": "0"})
    with pytest.raises(ValueError, match="lengths"):
        registry.get("niah_single").create({"lengths": "10"})
    with pytest.raises(ParamError, match="freq_ucw"):
        registry.get("common_words").create({"freq_cw": "3", "freq_ucw": "3"})
    with pytest.raises(ParamError, match="tokenizer"):
        registry.get("variable_tracking").create({}).build("eval")
    with pytest.raises(ParamError, match=r"exceed the model's context of 8192"):
        registry.get("niah_single").create({"lengths": "4096,16384"}).check_model(
            SimpleNamespace(max_position_embeddings=8192))
    with pytest.raises(ParamError, match="fixed part"):  # 10 x 30 common words cannot fit 400 tokens
        _build("common_words", tiny_llama_dir)


def test_plan_fills_in_the_models_tokenizer_and_checks_the_context(tiny_llama_dir):
    from tasks.plan import plan_request

    plan = plan_request.fn(str(tiny_llama_dir), ["baseline"], ["niah_single(lengths=400)"], [0])
    assert plan.benchmarks[0].component.tokenizer == str(tiny_llama_dir)
    with pytest.raises(ParamError, match="context of 512"):
        plan_request.fn(str(tiny_llama_dir), ["baseline"], ["niah_single(lengths=1024)"], [0])


def test_existing_benchmarks_split_context_and_question():
    rows = registry.get("passkey").create({"lengths": "20", "depths": "0.5", "n_per_cell": "1"}).build("eval")
    b = registry.get("passkey").create({})
    assert rows[0]["prompt"][b.question_start(rows[0]):] == " What is the pass key? The pass key is"
    kv = registry.get("kv_retrieval").create({"n_pairs": "5", "n_examples": "2"})
    r = kv.build("eval")[0]
    assert r["prompt"][kv.question_start(r):] == " " + r["prompt"].rsplit(" ", 1)[1]
    nd = registry.get("needle").create({"lengths": "30", "depths": "0.5", "n_per_cell": "1"})
    r = nd.build("eval")[0]
    assert r["prompt"][nd.question_start(r):] == " " + r["question"]
    assert not registry.get("perplexity").cls.query_split
