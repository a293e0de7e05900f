"""vlm_qa: a user's image dataset (JSONL + image folder, Parquet with image bytes) becomes rows, and every bad
record is named (source, record index, field) when the rows are built, before any model work."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import registry
from components.data import DataSourceError


def _png(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), colour).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_dataset(root):
    """An image folder and questions.jsonl (yes, no and free-form answers); returns the JSONL path."""
    (root / "images").mkdir()
    (root / "images" / "a.png").write_bytes(_png())
    (root / "images" / "b.png").write_bytes(_png((20, 20, 200)))
    return _jsonl(root / "questions.jsonl", [
        {"image": "images/a.png", "question": "Is there a red square?", "answer": "Yes"},
        {"image": "images/b.png", "question": "Is there a red square?", "answer": "no"},
        {"image": "images/b.png", "question": "What colour is the image?", "answer": "blue"}])


def _bench(**params):
    return registry.get("vlm_qa").create({k: str(v) for k, v in params.items()})


def test_jsonl_and_image_folder(tmp_path):
    rows = _bench(source=write_dataset(tmp_path)).build("eval")
    assert [r["kind"] for r in rows] == ["exists", "absent", "vqa"]
    assert [r["answer"] for r in rows] == ["yes", "no", "blue"]
    assert rows[0]["image_path"] == str(tmp_path / "images" / "a.png")
    assert len(_bench(source=tmp_path / "questions.jsonl", n_examples=2).build("eval")) == 2


def test_parquet_with_image_bytes(tmp_path):
    data = [{"image": {"bytes": _png(), "path": None}, "question": "q1", "answer": "yes"},
            {"image": {"bytes": _png((0, 0, 0)), "path": None}, "question": "q2", "answer": "3"}]
    pq.write_table(pa.Table.from_pylist(data), tmp_path / "qa.parquet")
    rows = _bench(source=tmp_path / "qa.parquet").build("eval")
    assert [r["kind"] for r in rows] == ["exists", "vqa"]
    assert Image.open(io.BytesIO(rows[1]["image_bytes"])).getpixel((3, 3)) == (0, 0, 0)


@pytest.mark.parametrize("record, message", [
    ({"image": "images/a.png", "question": "q"}, "record 1: field 'answer' is missing or empty"),
    ({"image": "images/a.png", "question": "", "answer": "yes"}, "record 1: field 'question' is missing or empty"),
    ({"image": "images/zz.png", "question": "q", "answer": "yes"}, "record 1: image 'images/zz.png' not found"),
    ({"image": "notes.txt", "question": "q", "answer": "yes"}, "record 1: field 'image' is not a readable image"),
    ({"image": 7, "question": "q", "answer": "yes"}, "record 1: field 'image' is a int"),
])
def test_bad_records_are_named(tmp_path, record, message):
    write_dataset(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    source = _jsonl(tmp_path / "bad.jsonl", [{"image": "images/a.png", "question": "q", "answer": "no"}, record])
    with pytest.raises(DataSourceError, match=message.replace("(", r"\(")):
        _bench(source=source).build("eval")


def test_missing_source_and_fields(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        _bench(source=tmp_path / "nope.jsonl").build("eval")
    with pytest.raises(Exception, match="image_root.*is not a folder"):
        _bench(source="x.jsonl", image_root=tmp_path / "nope")
    source = write_dataset(tmp_path)
    with pytest.raises(DataSourceError, match="record 0: field 'picture'.*fields: image, question, answer"):
        _bench(source=source, image_field="picture").build("eval")
