"""classification / multiple_choice from user files: k-shot prompts, fixed evaluation rows, demos per seed."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import registry
from components.base import ParamError
from components.data import DataSourceError
from registry.specs import parse, spec_text
from tests.helpers.tiny import tiny_model, tokenizer

ANIMALS = ["cat", "dog", "bird", "fox", "frog", "bear", "duck", "owl"]
PLACES = ["park", "river", "house", "school", "beach", "farm", "hill", "lake"]


@pytest.fixture(scope="module")
def cls_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "words.jsonl"
    rows = [{"sentence": f"the {w} is here", "y": i % 2} for i, w in
            enumerate(x for pair in zip(ANIMALS, PLACES) for x in pair)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_classification_prompts_splits_and_seeds(cls_file):
    spec = {"source": str(cls_file), "text_field": "sentence", "label_field": "y", "labels": "animal,place",
            "shots": "3", "n_examples": "6"}
    b0 = registry.get("classification").create(spec)
    b1 = registry.get("classification").create({**spec, "seed": "1"})
    ev0, ev1, tr0 = b0.build("eval"), b1.build("eval"), b0.build("train")
    assert [r["query"] for r in ev0] == [r["query"] for r in ev1]  # the same evaluation rows for every seed
    assert [r["prompt"] for r in ev0] != [r["prompt"] for r in ev1]  # demonstrations redrawn per seed
    assert not {r["query"] for r in ev0} & {r["query"] for r in tr0}  # train split disjoint from eval
    r = ev0[0]
    assert r["prompt"].count("Label:") == 4 and r["prompt"].endswith(r["query"])
    assert r["choices"] == [" animal", " place"] and r["target"] == f" {r['answer']}"
    assert r["answer"] == ("animal" if r["query"].split()[2] in ANIMALS else "place")
    assert "\n\n" in r["prompt"] and "\nLabel:" in r["prompt"]  # escaped defaults decoded
    # the pinned spec the flows pass around rebuilds the same rows (text parameters survive the round trip)
    assert parse(spec_text(b0)).create("benchmark").build("eval") == ev0
    res = b0.evaluate(tiny_model("llama"), tokenizer(), ev0, batch_size=4)
    assert 0 <= res.metrics["accuracy"] <= 1 and len(res.examples) == 6


def test_multiple_choice_parquet_arc_layout(tmp_path):
    path = tmp_path / "mc.parquet"
    rows = [{"q": f"where does the {a} live?", "opts": {"text": [p, a, "nowhere"], "label": ["A", "B", "C"]},
             "key": "A"} for a, p in zip(ANIMALS, PLACES)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    b = registry.get("multiple_choice").create({"source": str(path), "question_field": "q", "choices_field": "opts",
                                                "answer_field": "key", "shots": "1", "n_examples": "4",
                                                "normalize": "true"})
    ev = b.build("eval")
    assert len(ev) == 4 and all(r["choices"][0] == r["target"] for r in ev)
    assert ev[0]["prompt"].count("Question:") == 2
    res = b.evaluate(tiny_model("llama"), tokenizer(), ev, batch_size=8)
    assert 0 <= res.metrics["accuracy"] <= 1


def test_user_data_errors_name_the_problem(cls_file, tmp_path):
    with pytest.raises(ParamError, match="classification.source: required"):
        registry.get("classification").create({})
    with pytest.raises(ParamError, match="does not exist"):
        registry.get("classification").create({"source": str(tmp_path / "nope.jsonl")})
    with pytest.raises(DataSourceError, match="no field 'text'.*sentence"):
        registry.get("classification").create({"source": str(cls_file)}).build("eval")
    with pytest.raises(DataSourceError, match="non-text labels"):
        registry.get("classification").create({"source": str(cls_file), "text_field": "sentence",
                                               "label_field": "y"}).build("eval")
    with pytest.raises(DataSourceError, match="no train rows left"):
        registry.get("classification").create({"source": str(cls_file), "text_field": "sentence",
                                               "label_field": "y", "labels": "a,b", "n_examples": "16"}
                                              ).build("train")
