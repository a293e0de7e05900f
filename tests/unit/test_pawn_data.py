"""Detection data prep (every input format, bad input) and the detection metrics (no models)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import f1_score

from tasks import pawn_metrics
from tasks.pawn_data import (SCHEMA, DetectionDataError, PrepOptions, dataset_fingerprint, prepare_detection_data,
                             read_prepared, read_sources, source_fingerprints)

FIELDS = PrepOptions().fields()


def pair_file(tmp_path, name="xsum_gpt-4.raw_data.json", n=20):
    path = tmp_path / name
    path.write_text(json.dumps({"original": [f"Shared start words here then human text {i}." for i in range(n)],
                                "sampled": [f"Shared start words here then machine text {i}!" for i in range(n)]}))
    return path


def prep(sources, **kw):
    opts = {k: kw.pop(k) for k in list(kw) if k in PrepOptions.model_fields}
    o = PrepOptions(**opts)
    return prepare_detection_data.fn([str(s) for s in sources], source_fingerprints([str(s) for s in sources]),
                                     o.fields(), o.valid_frac, o.test_frac, kw.get("split", "auto"),
                                     o.limit_per_source, o.invert_labels, o.drop_empty, o.strip_shared_prefix,
                                     kw.get("out"), o.label)


def test_fast_detectgpt_pair_files(tmp_path):
    info = prep([pair_file(tmp_path)], out=str(tmp_path / "out.parquet"))
    rows = read_prepared(info["path"])
    assert pq.read_schema(info["path"]).names == SCHEMA.names
    assert len(rows) == 40 and {r["label"] for r in rows} == {0, 1}
    assert {(r["domain"], r["generator"]) for r in rows} == {("xsum", "human"), ("xsum", "gpt-4")}
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["id"].rsplit(":", 1)[0], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_pair.values())  # a pair never straddles two splits
    assert {r["split"] for r in rows} <= {"train", "valid", "test"}
    assert info["splits"]["train"]["human"] == info["splits"]["train"]["machine"]
    # another generator's file with the same human texts: each human text keeps its split across files
    two = read_sources([str(pair_file(tmp_path)), str(pair_file(tmp_path, "xsum_opt.raw_data.json"))], fields=FIELDS)
    split_of: dict[str, set[str]] = {}
    for r in two:
        if r["label"] == 0:
            split_of.setdefault(r["text"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values()) and len(two) == 80
    cut = read_sources([str(pair_file(tmp_path))], fields=FIELDS, limit_per_source=3)  # cut by default
    assert len(cut) == 6 and cut[0]["text"] == "human text 0." and cut[1]["text"] == "machine text 0!"
    assert {r["source"] for r in cut} == {"xsum_gpt-4"} and {r["group"] for r in cut} == {""}
    kept = read_sources([str(pair_file(tmp_path))], fields=FIELDS, strip_shared_prefix=False, limit_per_source=1)
    assert kept[0]["text"] == "Shared start words here then human text 0."
    assert info["shared_prefix"] == "cut"


def test_jsonl_csv_parquet_and_label_forms(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"text": "one", "label": "human"}, {"text": "two", "label": "AI", "generator": "g1"},
        {"text": "three", "label": 1, "domain": "news"}, {"text": "four", "label": False}]))
    with (tmp_path / "b.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["body", "y", "split"])
        w.writeheader()
        w.writerows([{"body": "five", "y": "1", "split": "train"}, {"body": "six", "y": "0", "split": "validation"}])
    pq.write_table(pa.table({"text": ["seven", "eight"], "label": ["machine", "human"]}), tmp_path / "c.parquet")
    rows = read_sources([str(tmp_path / "a.jsonl"), str(tmp_path / "c.parquet")], fields=FIELDS)
    assert [r["label"] for r in rows] == [0, 1, 1, 0, 1, 0]
    assert rows[1]["generator"] == "g1" and rows[2]["domain"] == "news" and rows[0]["domain"] == "a"
    assert rows[0]["generator"] == "human" and rows[2]["generator"] == "unknown"
    b = read_sources([str(tmp_path / "b.csv")], fields={**FIELDS, "text": "body", "label": "y"})
    assert [(r["label"], r["split"]) for r in b] == [(1, "train"), (0, "valid")]
    inverted = read_sources([str(tmp_path / "b.csv")], fields={**FIELDS, "text": "body", "label": "y"},
                            invert_labels=True)
    assert [r["label"] for r in inverted] == [0, 1]
    forced = read_sources([str(tmp_path / "a.jsonl")], fields=FIELDS, split="test")
    assert {r["split"] for r in forced} == {"test"}


def test_bad_labels_empty_texts_duplicates_and_splits(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "maybe"}\n{"text": "c", "label": 2}\n')
    with pytest.raises(DetectionDataError, match=r"neither human nor machine: 'maybe' \(row 1\), 2 \(row 2\)"):
        read_sources([str(bad)], fields=FIELDS)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": "x1", "text": "fine", "label": 0}\n{"id": "x2", "text": "   ", "label": 1}\n')
    with pytest.raises(DetectionDataError, match="1 empty text.*'x2'.*--drop-empty"):
        read_sources([str(empty)], fields=FIELDS)
    assert [r["id"] for r in read_sources([str(empty)], fields=FIELDS, drop_empty=True)] == ["x1"]
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "same", "text": "a", "label": 0}\n{"id": "same", "text": "b", "label": 1}\n')
    with pytest.raises(DetectionDataError, match="duplicate ids: 'same'"):
        read_sources([str(dup)], fields=FIELDS)
    split = tmp_path / "split.jsonl"
    split.write_text('{"text": "a", "label": 0, "split": "holdout"}\n')
    with pytest.raises(DetectionDataError, match="unknown split 'holdout'"):
        read_sources([str(split)], fields=FIELDS)
    with pytest.raises(DetectionDataError, match="no label field 'missing'.*--label-field"):
        read_sources([str(split)], fields={**FIELDS, "label": "missing"})
    with pytest.raises(DetectionDataError, match="does not exist"):
        source_fingerprints([str(tmp_path / "nope.jsonl")])
    not_prepared = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"text": ["a"]}), not_prepared)
    with pytest.raises(DetectionDataError, match="not a prepared detection file"):
        read_prepared(not_prepared)


def test_one_class_files_take_a_label_and_a_group_column(tmp_path):
    (tmp_path / "essays.jsonl").write_text("\n".join(json.dumps({"text": f"essay {i}", "writer": w})
                                                      for i, w in enumerate(["native", "non-native", "native"])))
    info = prep([tmp_path / "essays.jsonl"], label="human", group_field="writer", split="test",
                out=str(tmp_path / "h.parquet"))
    rows = read_prepared(info["path"])
    assert [r["label"] for r in rows] == [0, 0, 0] and [r["generator"] for r in rows] == ["human"] * 3
    assert [r["group"] for r in rows] == ["native", "non-native", "native"] and rows[0]["source"] == "essays"
    assert info["splits"]["test"] == {"human": 3, "machine": 0}
    with pytest.raises(DetectionDataError, match="no label field 'label'"):
        read_sources([str(tmp_path / "essays.jsonl")], fields=FIELDS)  # without --label: the old error
    (tmp_path / "mixed.jsonl").write_text('{"text": "a", "label": "machine"}\n')
    with pytest.raises(DetectionDataError, match="row 0: label 'machine' contradicts --label human"):
        read_sources([str(tmp_path / "mixed.jsonl")], fields=FIELDS, label="human")
    with pytest.raises(DetectionDataError, match="pair file holds human and machine texts"):
        read_sources([str(pair_file(tmp_path))], fields=FIELDS, label="human")
    with pytest.raises(DetectionDataError, match="--label 'robot' must be human or machine"):
        read_sources([str(tmp_path / "essays.jsonl")], fields=FIELDS, label="robot")
    # a file prepared before the source / group columns existed still reads (source = domain)
    old = tmp_path / "old.parquet"
    pq.write_table(pa.table({"id": ["x"], "text": ["t"], "label": pa.array([0], pa.int8()), "domain": ["d"],
                             "generator": ["human"], "split": ["test"]}), old)
    assert read_prepared(old)[0]["source"] == "d" and read_prepared(old)[0]["group"] == ""


def test_dataset_fingerprint_follows_content(tmp_path):
    a = prep([pair_file(tmp_path)], out=str(tmp_path / "a.parquet"))
    b = prep([pair_file(tmp_path)], out=str(tmp_path / "b.parquet"))
    assert a["fingerprint"] == b["fingerprint"] == dataset_fingerprint(a["path"])
    c = prep([pair_file(tmp_path)], out=str(tmp_path / "c.parquet"), invert_labels=False, valid_frac=0.3)
    assert c["fingerprint"] != a["fingerprint"]  # other split assignment -> other dataset


def test_threshold_maximises_macro_f1():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.normal(y * 1.2, 1.0)
    t = pawn_metrics.choose_threshold(s, y)
    best = max(f1_score(y, (s >= c).astype(int), average="macro") for c in np.unique(s))
    assert f1_score(y, (s >= t).astype(int), average="macro") == pytest.approx(best, abs=1e-12)


def test_metrics_recall_at_fpr_and_breakdowns():
    labels = np.array([0] * 100 + [1] * 100)
    scores = np.r_[np.arange(100), np.arange(100) + 95.5]  # machine scores overlap the top 5 human scores
    m = pawn_metrics.metrics(scores, labels, threshold=97.5)
    assert m["recall_at_5fpr"] == pytest.approx(1.0) and m["recall_at_1fpr"] == pytest.approx(0.97)
    assert m["recall_human"] == pytest.approx(0.98) and m["recall_machine"] == pytest.approx(0.98)
    assert m["macro_recall"] == pytest.approx(0.98)
    gens = ["human"] * 100 + ["g1"] * 50 + ["g2"] * 50
    doms = ["a", "b"] * 100
    b = pawn_metrics.breakdowns(scores, labels, doms, gens, 97.5)
    assert [r["generator"] for r in b["by_generator"]] == ["g1", "g2"]
    assert all(r["n"] == 150 for r in b["by_generator"])  # both generators write in both domains: every human
    assert [r["domain"] for r in b["by_domain"]] == ["a", "b"] and sum(r["n"] for r in b["by_domain"]) == 200
    human_only = pawn_metrics.metrics(scores[:100], labels[:100], 0.0)
    assert "auroc" not in human_only and "needs human and machine" in human_only["omitted"]["auroc"]
