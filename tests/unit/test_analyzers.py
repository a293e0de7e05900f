"""Analyzer arithmetic on hand-built attention maps with known answers, needle tests and prompt sets (no models)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

import registry
from components.analyzers import _prompts
from components.analyzers.base import AnalysisResult, ranked, top_heads
from components.analyzers.head_importance import spearman
from components.analyzers.path_patching import normalised_effect
from components.analyzers.retrieval_score import copy_events
from components.analyzers.sink_metric import alpha_scores, sink_rates
from components.base import ParamError
from components.benchmarks import _needle


def causal_uniform(t: int) -> torch.Tensor:
    a = torch.tril(torch.ones(t, t))
    return a / a.sum(-1, keepdim=True)  # (T, T)


def test_alpha_matches_loops_and_finds_a_planted_sink():
    t, n, n_layers, n_heads = 16, 3, 2, 3
    attn = causal_uniform(t).expand(n, n_layers, n_heads, t, t).clone()  # (N, L, H, T, T)
    attn[:, 0, 1] = 0.0
    attn[:, 0, 1, :, 0] = 1.0  # planted sink: head (0, 1) puts everything on the first token
    alpha = alpha_scores(attn)
    for k in (0, 3, 15):  # the formula, by loops: mean over the queries i >= k
        want = sum(attn[0, 1, 2, i, k].item() for i in range(k, t)) / (t - k)
        assert alpha[0, 1, 2, k].item() == pytest.approx(want)
    assert alpha[:, 0, 1, 0].tolist() == pytest.approx([1.0] * n)
    assert alpha[:, 0, 1, 1:].abs().max() == 0
    harmonic = sum(1 / (i + 1) for i in range(t)) / t  # uniform head: (1/T) sum_i 1/(i+1) = 0.21 < 0.3
    assert alpha[0, 1, 0, 0].item() == pytest.approx(harmonic) and harmonic < 0.3
    rates = sink_rates(alpha, 0.3)
    assert rates[0].item() == pytest.approx(100 / (n_layers * n_heads))  # Sink_1: one head in six
    assert rates[1:].max().item() == 0.0


def test_alpha_row_normalises_non_softmax_scores():
    t = 8
    probs = causal_uniform(t)[None]
    scores = probs * torch.linspace(0.2, 3.0, t)[:, None]  # rows no longer sum to 1 (e.g. sigmoid attention)
    assert torch.allclose(alpha_scores(scores), alpha_scores(probs))
    upper = probs + torch.triu(torch.ones(t, t), 1)  # entries above the diagonal are not "queries that see k"
    assert torch.allclose(alpha_scores(upper), alpha_scores(probs))


def test_copy_events_on_a_planted_copy_head():
    prompt = torch.tensor([1, 10, 11, 12, 13, 14, 7, 8])  # needle answer = positions 2..4 (tokens 11, 12, 13)
    span, s = (2, 5), 9
    att = torch.full((2, 3, s), 0.01)  # (L, H, S)
    att[0, 0, 3] = 0.9  # copy head: top-1 at position 3 (token 12), generated token 12 -> event
    att[0, 1, 6] = 0.9  # attends outside the span (token 7)
    att[1, 0, 4] = 0.9  # in the span, but token 13 is not the generated one
    att[1, 2, 6], att[1, 2, 3] = 0.5, 0.4  # second choice qualifies: only with top_k >= 2
    ev = copy_events(att, 12, prompt, span)
    want = torch.zeros(2, 3, dtype=torch.float64)
    want[0, 0] = 1 / 3
    assert torch.equal(ev, want)
    ev2 = copy_events(att, 12, prompt, span, top_k=2)
    assert ev2[1, 2] == pytest.approx(1 / 3) and ev2[0, 0] == pytest.approx(1 / 3)


def test_rouge1_recall():
    assert _needle.rouge1_recall("eat a sandwich in the park", "I would eat a sandwich.") == pytest.approx(3 / 6)
    assert _needle.rouge1_recall("48213", " 48213. Remember it.") == 1.0
    assert _needle.rouge1_recall("red red kite", "red kite") == pytest.approx(2 / 3)  # clipped counts
    assert _needle.rouge1_recall("", "x") == 0.0


@pytest.mark.parametrize("needles", ["passkey", "words"])
def test_needle_tests_have_exact_answer_spans(needles):
    rng = random.Random(0)
    for depth in (0.0, 0.3, 0.5, 1.0):
        row = _needle.make_test(rng, needles=needles, haystack_source="builtin:stories", length=60, depth=depth,
                                template="")
        assert row["prompt"][row["answer_start"]:row["answer_end"]] == row["answer"]
        assert row["prompt"].endswith(row["question"])
        lead = "The pass key is" if needles == "passkey" else "The magic words are"
        before = row["prompt"][: row["prompt"].index(lead)]
        assert (before == "") == (depth == 0.0)
        assert not before or before.rstrip().endswith((".", "!", "?", '"'))  # inserted at a sentence end


def test_needle_files_are_validated(tmp_path):
    f = tmp_path / "needles.jsonl"
    f.write_text('{"needle": "Mr Green is disliked because he is mean.", "question": "Why?", '
                 '"real_needle": "Because he is mean."}\n')
    row = _needle.make_test(random.Random(1), needles=str(f), haystack_source="builtin:stories", length=30,
                            depth=0.5, template="")
    assert row["prompt"][row["answer_start"]:row["answer_end"]].lower() == "because he is mean."
    assert "Based on the content of the book, Question: Why?\nAnswer:" in row["prompt"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"needle": "A cat sat.", "question": "Who?", "real_needle": "a dog"}\n')
    with pytest.raises(ValueError, match="does not occur in its needle"):
        _needle.make_test(random.Random(1), needles=str(bad), haystack_source="builtin:stories", length=30,
                          depth=0.5, template="")


def test_prompt_sets():
    for row in _prompts.prompt_pairs("ioi", 20, seed=3):
        io, s = row["answer"].strip(), row["distractor"].strip()
        assert io != s and row["clean"].count(io) == 1 and row["clean"].count(s) == 2
        assert io not in row["corrupt"] and s not in row["corrupt"]
    for row in _prompts.prompt_pairs("colored_objects", 20, seed=3):
        asked = row["clean"].rsplit("What color is the ", 1)[1].split("?")[0]
        assert f"{row['answer'].strip()} {asked}" in row["clean"].rsplit("Q:", 1)[1]
        assert row["clean"] != row["corrupt"] and row["answer"] != row["distractor"]
    assert _prompts.prompt_pairs("ioi", 5, 1) == _prompts.prompt_pairs("ioi", 5, 1)
    with pytest.raises(ValueError, match="unknown prompt set"):
        _prompts.prompt_pairs("nope", 1, 0)


def test_normalised_effect_sign():
    assert normalised_effect(patched=2.0, clean=2.0, corrupt=-1.0) == 0.0  # no effect
    assert normalised_effect(patched=-1.0, clean=2.0, corrupt=-1.0) == 1.0  # the whole effect
    assert normalised_effect(patched=3.0, clean=2.0, corrupt=-1.0) < 0  # pushes the other way


def test_spearman_and_ranking_helpers():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(a, a * 10) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, np.ones_like(a)))
    assert top_heads(a, 2) == [(1, 1), (1, 0)]
    rows = ranked([{"layer": 0, "head": 0, "v": 1.0}, {"layer": 0, "head": 1, "v": 5.0}], "v")
    assert [(r["rank"], r["head"]) for r in rows] == [(1, 1), (2, 0)]
    assert [r["rank"] for r in ranked(rows, "v", descending=False)] == [1, 2]


def test_analysis_result_round_trip_and_figure_checks():
    res = AnalysisResult(arrays={"x": np.arange(6.0).reshape(2, 3)}, tables={"t": [{"a": 1, "b": 2.0}]},
                         metrics={"m": 1.5}, heads={"h": [(0, 1)]}, figures={"x": ("layer_head", "x")})
    back = AnalysisResult.from_json(res.to_json())
    assert np.array_equal(back.arrays["x"], res.arrays["x"]) and back.heads == res.heads and back.metrics == res.metrics
    with pytest.raises(ValueError, match="does not have"):
        AnalysisResult(arrays={}, figures={"x": ("layer_head", "x")})


def test_analyzer_parameters_are_validated():
    with pytest.raises(ParamError, match="sink_metric.eps"):
        registry.get("sink_metric").create({"eps": "2"})
    with pytest.raises(ParamError, match="head_importance.measures"):
        registry.get("head_importance").create({"measures": "acc_drop,nope"})
    with pytest.raises(ParamError, match="head_importance.task"):
        registry.get("head_importance").create({"task": "nope"})
    with pytest.raises(ParamError, match="template"):
        registry.get("retrieval_score").create({"template": "{context} only"})
    with pytest.raises(ParamError, match="head_pattern_override: heads is required"):
        registry.get("head_pattern_override").create({})
    rows = registry.get("retrieval_score").create({"lengths": "20", "depths": "0.5"}).build()
    bench_rows = registry.get("needle").create({"lengths": "20", "depths": "0.5"}).build("eval")
    assert rows and {r["prompt"] for r in rows}.isdisjoint(r["prompt"] for r in bench_rows)  # detection != eval


def _record(ranking, retrieval):
    return {"result": {"heads": {"ranking": ranking, "retrieval_heads": retrieval}}}


def test_head_sets_for_the_causal_test():
    from tasks.analysis import choose_head_sets

    ranking = [[1, 2], [0, 3], [1, 0], [0, 0], [0, 1], [0, 2], [1, 1], [1, 3]]
    sets = choose_head_sets.fn(_record(ranking, ranking[:2]), top_k=0, n_random=4, seed=0)
    assert sets["k"] == 2 and sets["top"] == [[1, 2], [0, 3]]
    for draw in sets["random"]:
        assert len(draw) == 2 and not {tuple(p) for p in draw} & {(1, 2), (0, 3)}
    assert choose_head_sets.fn(_record(ranking, ranking[:2]), top_k=3, n_random=1, seed=0)["top"][2] == [1, 0]
    assert choose_head_sets.fn(_record(ranking, []), top_k=0, n_random=2, seed=0)["k"] == 0
    with pytest.raises(ValueError, match="only 3 non-retrieval heads"):
        choose_head_sets.fn(_record(ranking, ranking[:5]), top_k=0, n_random=1, seed=0)


def test_verdict_against_the_paper_expectation():
    from tasks.analysis import retrieval_verdict

    def cell(mean, std=0.0, n=1):
        return {"mean": mean, "std": std, "n": n}

    table = {"columns": ["passkey/accuracy", "needle/accuracy", "needle/recall", "kv_retrieval/accuracy"],
             "cells": {"baseline": {"passkey/accuracy": cell(0.9), "needle/accuracy": cell(0.8),
                                    "needle/recall": cell(0.8), "kv_retrieval/accuracy": cell(0.0)},
                       "top": {"passkey/accuracy": cell(0.1), "needle/accuracy": cell(0.7),
                               "needle/recall": cell(0.7), "kv_retrieval/accuracy": cell(0.0)},
                       "rand": {"passkey/accuracy": cell(0.85, 0.02, 3), "needle/accuracy": cell(0.2, 0.1, 3),
                                "needle/recall": cell(0.2), "kv_retrieval/accuracy": cell(0.0, 0.0, 3)}}}
    v = retrieval_verdict.fn(table, "top", "rand")["verdicts"]
    assert v == {"passkey/accuracy": "as expected", "needle/accuracy": "differs",
                 "kv_retrieval/accuracy": "undetermined"}
