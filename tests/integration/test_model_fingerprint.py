"""Model fingerprints cover every byte of the weights (issue 17, item 1); file digests are memoised."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from components import modeling
from infra import hashing

DEMO = Path(__file__).resolve().parents[2] / "assets" / "demo-lm"


def _zero_last_tensor(model_dir: Path) -> str:
    """Zero the tensor stored last in model.safetensors (far past its first MiB); returns its name."""
    path = model_dir / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    offsets = {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    last = max(offsets, key=offsets.get)
    assert offsets[last] > 1 << 20  # the old fingerprint read only the first MiB
    tensors[last] = torch.zeros_like(tensors[last])
    save_file(tensors, str(path), metadata=metadata)
    return last


@pytest.fixture
def demo_copy(tmp_path) -> Path:
    return Path(shutil.copytree(DEMO, tmp_path / "demo-copy"))


def test_a_zeroed_late_tensor_changes_the_fingerprint(demo_copy):
    before = modeling.model_fingerprint(str(demo_copy))
    assert before == modeling.model_fingerprint(str(DEMO))  # a byte-identical copy is the same model
    _zero_last_tensor(demo_copy)
    assert modeling.model_fingerprint(str(demo_copy)) != before


def test_a_same_size_edit_past_the_first_mib_changes_the_fingerprint(demo_copy):
    before = modeling.model_fingerprint(str(demo_copy))
    path = demo_copy / "model.safetensors"
    with open(path, "r+b") as fh:  # flip one bit near the end: same size, same header
        fh.seek(path.stat().st_size - 5)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x01]))
    assert modeling.model_fingerprint(str(demo_copy)) != before


def test_file_digests_are_memoised_by_path_size_mtime_inode(demo_copy, monkeypatch):
    calls = []
    real = hashing.hash_file
    monkeypatch.setattr(hashing, "hash_file", lambda p: calls.append(Path(p).name) or real(p))
    first = modeling.model_fingerprint(str(demo_copy))
    assert "model.safetensors" in calls
    calls.clear()
    assert modeling.model_fingerprint(str(demo_copy)) == first and calls == []  # a re-run re-hashes nothing
    _zero_last_tensor(demo_copy)  # rewritten: new inode/mtime, so hashed again
    assert modeling.model_fingerprint(str(demo_copy)) != first and "model.safetensors" in calls
    index = hashing._index_path()
    assert index.is_file() and str((demo_copy / "model.safetensors").resolve()) in index.read_text()


def _fake_hub_cache(cache: Path, repo: str, commit: str, weights: bytes) -> None:
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    (snap / "config.json").write_text('{"model_type": "llama"}')
    (snap / "model.safetensors").write_bytes(weights)


def test_hub_ids_are_fingerprinted_by_revision_and_weights(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = "someone/tiny-model"
    ref = modeling.ModelRef(repo, "hub", repo)
    fps = []
    for i, (commit, weights) in enumerate((("a" * 40, b"w1"), ("b" * 40, b"w1"), ("b" * 40, b"w2"))):
        cache = tmp_path / f"hf{i}"
        _fake_hub_cache(cache, repo, commit, weights)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        fps.append(modeling.model_fingerprint(ref))
    assert len(set(fps)) == 3  # another revision, or other weights at the same revision: another fingerprint
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert modeling.model_fingerprint(ref) not in fps  # not cached: the id only, never a cached model's identity
