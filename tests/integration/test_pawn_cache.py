"""The PAWN feature cache: atomic shards with checksums, resume, corruption, refusal of other backbones/extractors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from components.detectors import _features
from components.detectors.base import FeatureError
from tasks import pawn_cache
from tasks.models import load_model
from tasks.pawn_data import PrepOptions, prepare_detection_data, source_fingerprints
from tests.helpers.detection import human_texts, one_torch_thread  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import save_tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("pawn-cache")
    src = d / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"d{i}", "text": t, "label": i % 2})
                             for i, t in enumerate(human_texts(22))))
    o = PrepOptions()
    info = prepare_detection_data.fn([str(src)], source_fingerprints([str(src)]), o.fields(),
                                     out=str(d / "data.parquet"))
    a = load_model.fn(str(save_tiny(d / "tiny-a", "llama", seed=0)))
    b = load_model.fn(str(save_tiny(d / "tiny-b", "llama", seed=1)))
    return {"dir": d, "data": info["path"], "a": a, "b": b}


def build(setup, model="a", **kw):
    return pawn_cache.build(setup[model], setup["data"], max_length=24, batch_size=4, shard_size=6, progress=False,
                            **kw)


def test_build_manifest_and_roundtrip(setup):
    m = build(setup, cache_dir=str(setup["dir"] / "c1"))
    assert m["complete"] and m["n_shards"] == 4 and [s["index"] for s in m["shards"]] == [0, 1, 2, 3]
    assert m["backbone"]["fingerprint"] == setup["a"].fingerprint
    assert m["extractor"]["version"] == _features.EXTRACTOR_VERSION and m["dataset"]["fingerprint"]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in m["shards"])
    assert pq.read_schema(setup["dir"] / "c1" / "shard-00000.parquet").field("hidden").type.value_type == "halffloat"
    feats = pawn_cache.load(setup["dir"] / "c1")
    direct = _features.extract(setup["a"].model, setup["a"].tokenizer, human_texts(22), max_length=24)
    assert feats.ids == [f"d{i}" for i in range(22)] and feats.labels.tolist() == [i % 2 for i in range(22)]
    for i in (0, 13, 21):
        assert np.array_equal(feats.metrics[i], direct.metrics[i]) and np.array_equal(feats.hidden[i], direct.hidden[i])
    only_train = pawn_cache.load(setup["dir"] / "c1", splits=("train",), hidden=False)
    assert only_train.hidden is None and set(only_train.extra["split"]) == {"train"}
    assert m["bytes"] / m["n_tokens"] < 2 * 64 * 2 + 64  # fp16 hidden stored once (H=64) + metrics


def test_resume_after_interruption_computes_only_missing_shards(setup):
    out = setup["dir"] / "c2"
    build(setup, cache_dir=str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"], manifest["complete"] = manifest["shards"][:2], False  # killed while writing shard 2
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard-00002.parquet").unlink()
    (out / "shard-00003.parquet").unlink()
    with pytest.raises(pawn_cache.CacheMismatchError, match="incomplete.*resume"):
        pawn_cache.load(out)
    m = build(setup, cache_dir=str(out))
    assert m["computed_shards"] == [2, 3] and m["complete"]
    assert build(setup, cache_dir=str(out))["computed_shards"] == []


def test_corrupted_shard_is_detected_and_rebuilt(setup):
    out = setup["dir"] / "c3"
    build(setup, cache_dir=str(out))
    shard = out / "shard-00001.parquet"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(pawn_cache.CorruptShardError, match="shard-00001.parquet does not match its checksum"):
        pawn_cache.load(out)
    m = build(setup, cache_dir=str(out))
    assert m["rebuilt_shards"] == [1] and m["computed_shards"] == [1]
    assert len(pawn_cache.load(out)) == 22


def test_cache_of_another_backbone_or_extractor_is_refused(setup, monkeypatch):
    out = setup["dir"] / "c4"
    build(setup, cache_dir=str(out))
    with pytest.raises(pawn_cache.CacheMismatchError, match="built by backbone .*tiny-a.*refusing to mix"):
        build(setup, "b", cache_dir=str(out))
    manifest = pawn_cache.read_manifest(out)
    with pytest.raises(pawn_cache.CacheMismatchError, match="extractor version 1.0.0, not 9.9.9"):
        pawn_cache.check_compatible(manifest, extractor_version="9.9.9")
    monkeypatch.setattr(_features, "EXTRACTOR_VERSION", "9.9.9")
    with pytest.raises(pawn_cache.CacheMismatchError, match="extractor version"):
        build(setup, cache_dir=str(out))
    monkeypatch.undo()
    # the default, content-addressed location gives each backbone its own cache
    ka, kb = build(setup)["key"], build(setup, "b")["key"]
    assert ka != kb


def test_non_finite_features_in_a_cache_are_refused(setup):
    import pyarrow as pa

    out = setup["dir"] / "c5"
    build(setup, cache_dir=str(out))
    path = out / "shard-00000.parquet"
    table = pq.read_table(path)
    metrics = table["metrics"].to_pylist()
    metrics[2][0] = float("nan")
    table = table.set_column(table.column_names.index("metrics"), "metrics", pa.array(metrics, pa.list_(pa.float32())))
    pq.write_table(table, path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0].update(sha256=pawn_cache.sha256_file(path), bytes=path.stat().st_size)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureError, match="non-finite.*'d2'"):
        pawn_cache.load(out)
