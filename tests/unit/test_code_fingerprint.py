"""Code fingerprints follow the imports (issue 17, item 4): a helper's change invalidates exactly the components that
import it, directly or not; a comment edit, or a change in a file nobody imports, invalidates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

import registry
from registry import sources


@pytest.fixture
def edited(monkeypatch):
    """``edit(module, text_transform)``: the fingerprints then see that module's source transformed."""
    edits: dict[Path, object] = {}
    real = sources._source_text
    monkeypatch.setattr(sources, "_source_text", lambda p: edits[p](real(p)) if p in edits else real(p))
    monkeypatch.setattr(sources, "_MEMO", {})

    def edit(module: str, transform) -> None:
        edits[sources.module_file(module)] = transform
        sources._MEMO.clear()

    return edit


def _fps() -> dict[str, str]:
    return {i.ref: registry.code_fingerprint(i.cls) for i in registry.all_components()}


def _importers(module: str) -> set[str]:
    return {i.ref for i in registry.all_components() if module in registry._source_modules(i.cls)}


def test_scoring_helper_is_part_of_kv_retrieval():
    assert "components.benchmarks._scoring" in registry._source_modules(registry.get("kv_retrieval").cls)
    # the modules once listed by hand are found by parsing imports
    assert {"components.benchmarks._needle", "components.attention.math"} <= set(
        registry._source_modules(registry.get("retrieval_score").cls))
    # the one declared extra: detectors do not import the feature extractor, the tasks run it for them
    assert "components.detectors._features" in registry._source_modules(registry.get("binoculars").cls)
    assert {i.family for i in registry.all_components() if hasattr(i.cls, "fingerprint_modules")} == {"detector"}


def test_a_helper_change_invalidates_exactly_its_importers(edited):
    before = _fps()
    edited("components.benchmarks._scoring", lambda s: s + "\n\ndef _new_helper():\n    return 1\n")
    after = _fps()
    changed = {ref for ref in before if before[ref] != after[ref]}
    expected = _importers("components.benchmarks._scoring")
    assert any(r.startswith("kv_retrieval@") for r in changed)
    assert changed == expected
    assert len(changed) < len(before)  # e.g. the patches do not import the scoring helper


def test_comment_and_docstring_edits_invalidate_nothing(edited):
    before = _fps()
    edited("components.benchmarks._scoring", lambda s: "# a new comment\n" + s.replace("\n\n", "\n\n# note\n", 1))
    edited("components.heads", lambda s: s + "\n# trailing comment\n")
    assert _fps() == before


def test_a_change_in_an_unrelated_file_invalidates_nothing(edited):
    before = _fps()
    edited("tasks.report", lambda s: s + "\n\nUNRELATED = 1\n")  # no component imports the report task
    assert _fps() == before


def test_relative_and_function_level_imports_are_followed(tmp_path):
    pkg = tmp_path / "proj"
    for d in ("proj", "proj/sub"):
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d / "__init__.py").write_text("")
    (pkg / "sub" / "_helper.py").write_text("X = 1\n")
    (pkg / "sub" / "_deep.py").write_text("from .. import util\n")
    (pkg / "util.py").write_text("Y = 2\n")
    (pkg / "other.py").write_text("Z = 3\n")
    (pkg / "sub" / "comp.py").write_text(
        "import torch\n\ndef f():\n    from ._helper import X\n    from proj.sub import _deep\n    return X\n")
    found = sources.closure(["proj.sub.comp"], root=tmp_path)
    assert found == ["proj", "proj.sub", "proj.sub._deep", "proj.sub._helper", "proj.sub.comp", "proj.util"]
