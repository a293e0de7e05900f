"""The synthetic task suite: deterministic for a seed, disjoint splits, answers a trivial solver recovers."""

from __future__ import annotations

import re

import pytest

import registry

GENERATED = ["kv_retrieval", "passkey", "associative_recall", "induction_copy", "icl_classification"]


def kv_table(prompt: str) -> dict[str, str]:
    context = prompt.removeprefix("Pairs: ").rsplit(". ", 1)[0]
    return dict(pair.split(":") for pair in context.split())


def recall_table(prompt: str) -> dict[str, str]:
    context = prompt.removeprefix("Bindings: ").rsplit(". ", 1)[0]
    return dict(pair.split("=") for pair in context.split(", "))


def solve(name: str, row: dict) -> str:
    """Trivial solvers that read the answer out of the prompt (proves the prompt contains it)."""
    p = row["prompt"]
    if name == "kv_retrieval":
        return kv_table(p)[p.rsplit(". ", 1)[1].rstrip(":")]
    if name == "associative_recall":
        return recall_table(p)[p.rsplit(". ", 1)[1].rstrip("=")]
    if name == "passkey":
        return re.search(r"The pass key is (\d+)\. Remember it\.", p).group(1)
    if name == "induction_copy":
        span, repeat = p[len("copy: "):].split(" | ")
        span_w, rep_w = span.split(), repeat.split()
        start = len(rep_w)
        assert span_w[:start] == rep_w
        return " ".join(span_w[start : start + len(row["answer"].split())])
    if name == "icl_classification":
        from components.benchmarks.icl_classification import CATEGORIES

        lines = p.split("\n")
        label_of_cat = {}
        for line in lines[:-1]:
            word, label = line.split(" -> ")
            cat = next(c for c, ws in CATEGORIES.items() if word in ws)
            label_of_cat[cat] = label
        query = lines[-1].removesuffix(" ->")
        return label_of_cat[next(c for c, ws in CATEGORIES.items() if query in ws)]
    raise KeyError(name)


@pytest.mark.parametrize("name", GENERATED)
def test_deterministic_disjoint_and_solvable(name):
    bench = registry.get(name).create({"seed": "7"})
    rows = bench.build("eval")
    assert rows == registry.get(name).create({"seed": "7"}).build("eval")
    assert rows != bench.build("train")
    assert rows != registry.get(name).create({"seed": "8"}).build("eval")
    assert all(solve(name, r) == r["answer"] for r in rows)
    assert all(bench.training_text(r).startswith(r["prompt"]) for r in rows)


def test_passkey_covers_the_grid():
    b = registry.get("passkey").create({"lengths": "20,50", "depths": "0,0.5,1", "n_per_cell": "2"})
    rows = b.build("eval")
    cells = {(r["length"], r["depth"]) for r in rows}
    assert cells == {(n, d) for n in (20, 50) for d in (0.0, 0.5, 1.0)} and len(rows) == 12
    first = next(r for r in rows if r["depth"] == 0.0)
    last = next(r for r in rows if r["depth"] == 1.0)
    assert first["prompt"].startswith("The pass key is")
    assert last["prompt"].split(" What is the pass key?")[0].endswith("is the pass key.")


@pytest.mark.parametrize("name, table, sep, join", [("kv_retrieval", kv_table, ":", " "),
                                                    ("associative_recall", recall_table, "=", ", ")])
def test_extra_queries_extend_the_target_only(name, table, sep, join):
    """queries=N: the prompt (what is scored) is unchanged; the target answers N distinct keys, the first one being
    the scored answer, each value the one bound in the context."""
    one = registry.get(name).create({"n_pairs": "6", "n_examples": "12"}).build("train")
    many = registry.get(name).create({"n_pairs": "6", "n_examples": "12", "queries": "6"}).build("train")
    for r1, r in zip(one, many):
        assert r["prompt"] == r1["prompt"] and r["answer"] == r1["answer"] and r1["target"] == r1["answer"]
        bound = table(r["prompt"])
        first_key = r["prompt"].rsplit(". ", 1)[1].rstrip(sep)
        answered = [(first_key, r["target"].split(join)[0])]
        answered += [tuple(q.split(sep)) for q in r["target"].split(join)[1:]]
        assert answered[0][1] == r["answer"]
        assert len({k for k, _ in answered}) == 6 and all(bound[k] == v for k, v in answered)
    with pytest.raises(ValueError, match="queries=7 is out of range"):
        registry.get(name).create({"n_pairs": "6", "queries": "7"})


def test_every_key_tokenizes_like_its_query():
    """Every key follows a space, in the context as in the query, so a BPE tokenizer splits both the same way."""
    for name, sep in (("kv_retrieval", ":"), ("associative_recall", "=")):
        for r in registry.get(name).create({}).build("eval"):
            context, query = r["prompt"].rsplit(". ", 1)
            key = query.rstrip(sep)
            assert f" {key}{sep}" in context


def test_icl_mapping_is_redrawn_per_prompt():
    rows = registry.get("icl_classification").create({"n_examples": "60"}).build("eval")
    from components.benchmarks.icl_classification import CATEGORIES

    maps = set()
    for r in rows:
        word, label = r["prompt"].split("\n")[0].split(" -> ")
        cat = next(c for c, ws in CATEGORIES.items() if word in ws)
        maps.add((cat, label))
    assert any((c, "A") in maps and (c, "B") in maps for c in CATEGORIES)  # same category, different labels


@pytest.mark.parametrize("name, params, message", [
    ("passkey", {"depths": "1.5"}, "out of range"),
    ("induction_copy", {"span_len": "4", "prefix_len": "3", "answer_len": "3"}, "must be <= span_len"),
    ("icl_classification", {"n_classes": "9"}, "out of range"),
    ("associative_recall", {"n_pairs": "30"}, "out of range"),
])
def test_bad_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        registry.get(name).create(params)


def test_generation_is_identical_across_processes():
    """No dependence on Python's per-process hash randomisation (set/dict order of strings)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import json, registry; print(json.dumps([registry.get(n).create({}).build('eval')[:20] "
            f"for n in {GENERATED!r}]))")
    repo = Path(__file__).resolve().parents[2]
    outs = [subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(repo), "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")]
    assert json.loads(outs[0]) == json.loads(outs[1])
