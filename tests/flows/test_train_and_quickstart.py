"""train-lm and quickstart end to end (tiny preset), against the real Prefect test server and MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from components import modeling
from flows.quickstart import quickstart
from flows.train_lm import train_lm
from infra.settings import settings
from tests.flows.test_compare import task_states


def test_train_lm_registers_a_loadable_model(tmp_path):
    out = train_lm(preset="tiny", out=str(tmp_path / "lm"), steps=20, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out["model_dir"])
    tok = AutoTokenizer.from_pretrained(out["model_dir"])
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok) and "42" in tok.tokenize("x:42")  # number_tokens: 2
    # the training-only `queries` parameter is dropped from what is evaluated and reported
    assert {"kv_retrieval(n_pairs=4)/accuracy", "perplexity(max_tokens=8000)/ppl"} <= set(out["metrics"])
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    mv = client.get_model_version_by_alias("attnflow.tiny-lm", "champion")
    assert mv.tags["attnflow.data_fingerprint"] and str(mv.version) == out["registered_version"]
    run = client.get_run(out["mlflow_run_id"])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) >= 2 and history[-1].value < history[0].value  # loss curve logged and going down
    assert "README.md" in {p.name for p in (tmp_path / "lm").iterdir()}


def test_quickstart_trains_missing_demo_then_reuses_it(tmp_path, monkeypatch):
    home_demo = settings().models_dir / "demo-lm"
    monkeypatch.setattr(modeling, "demo_model_dirs", lambda: [home_demo])  # as on a machine without assets/
    preset = tmp_path / "qs.yaml"
    preset.write_text(yaml.safe_dump({"components": ["baseline", "zerotuning(gamma=2)"],
                                      "tasks": ["kv_retrieval(n_pairs=4, n_examples=8)", "perplexity(max_tokens=400)"],
                                      "seeds": [0]}))
    first = quickstart(model="demo", preset=str(preset), demo_preset="tiny", experiment="qs-test", progress=False,
                       return_state=True)
    assert first.is_completed(), first
    assert (home_demo / "config.json").is_file()
    assert first.result()["table"]["rows"] == ["baseline", "zerotuning"]
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    assert str(client.get_model_version_by_alias("attnflow.demo-lm", "champion").version) == "1"

    second = quickstart(model="demo", preset=str(preset), experiment="qs-test", progress=False, return_state=True)
    assert second.is_completed()
    states = task_states(second.state_details.flow_run_id)
    assert not any(name.startswith("train") for name in states)  # no retraining
    assert len(client.search_model_versions("name='attnflow.demo-lm'")) == 1  # registered once
    with pytest.raises(Exception):
        quickstart(preset="no-such-preset", progress=False)


def test_staged_preset_trains_its_first_stage_then_continues(tmp_path):
    """init_from: preset:tiny trains the tiny stage into ATTNFLOW_HOME/models/tiny-lm when it is missing, then
    continues from it (same tokenizer, weights loaded); a second stage-2 run reuses the stage."""
    repo = Path(__file__).resolve().parents[2]
    staged = tmp_path / "tiny-stage2.yaml"
    staged.write_text(yaml.safe_dump({"include": str(repo / "registry/presets/lm/tiny"),
                                      "train": {"init_from": "preset:tiny", "steps": 6}}))
    stage_dir = settings().models_dir / "tiny-lm"
    assert not stage_dir.exists()
    out = train_lm(preset=str(staged), out=str(tmp_path / "s2"), register_model=False, progress=False)
    assert (stage_dir / "model.safetensors").is_file()
    card = (tmp_path / "s2" / "README.md").read_text()
    assert "Continued from: `$ATTNFLOW_HOME/models/tiny-lm`" in card  # no machine-specific path in the card
    assert AutoTokenizer.from_pretrained(out["model_dir"]).get_vocab() == \
        AutoTokenizer.from_pretrained(stage_dir).get_vocab()
    mtime = (stage_dir / "model.safetensors").stat().st_mtime
    train_lm(preset=str(staged), out=str(tmp_path / "s2b"), register_model=False, progress=False)
    assert (stage_dir / "model.safetensors").stat().st_mtime == mtime  # the stage was not trained again


def test_quickstart_tour_profiles_sinks_finds_retrieval_heads_and_masks_them(tmp_path, monkeypatch):
    """The real-model tour (the default preset's recipe) on the demo model, whose retrieval heads are known
    (1:2, 1:3): a sink-profile run and a retrieval-score run under the parent, the detected heads masked next to
    as many random heads, and a re-run served from the caches."""
    shipped = Path(__file__).resolve().parents[2] / "assets" / "demo-lm"
    monkeypatch.setattr(modeling, "demo_model_dirs", lambda: [shipped])  # not a demo trained by another test
    preset = tmp_path / "tour.yaml"
    preset.write_text(yaml.safe_dump({
        "model": "demo", "sinks": "sink_metric(n_samples=4, n_tokens=16)",
        "retrieval": "retrieval_score(lengths=40, depths=0;1, n_per_cell=2, max_new_tokens=6)",
        "components": ["baseline", "zerotuning(gamma=2)"],
        "tasks": ["passkey(lengths=40, n_per_cell=2)", "perplexity(max_tokens=400)"]}))
    first = quickstart(preset=str(preset), experiment="qs-tour", progress=False, return_state=True)
    assert first.is_completed(), first
    out = first.result()
    rows = out["table"]["rows"]
    assert rows[:2] == ["baseline", "zerotuning(gamma=2)"]
    assert rows[2:] == ["mask 2 retrieval heads", "mask 2 random heads"]  # the demo model's two retrieval heads
    cells = out["table"]["cells"]
    assert out["table"]["columns"] == ["passkey", "perplexity"]  # primary metrics only: fits a terminal
    assert cells["mask 2 retrieval heads"]["passkey"]["mean"] < cells["baseline"]["passkey"]["mean"]
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    children = client.search_runs([client.get_experiment_by_name("qs-tour").experiment_id],
                                  f"tags.mlflow.parentRunId = '{out['run_id']}'")
    kinds = {r.data.tags.get("attnflow.component") for r in children}
    assert {"sink_metric", "retrieval_score", "baseline", "head_mask"} <= kinds

    second = quickstart(preset=str(preset), experiment="qs-tour", progress=False, return_state=True)
    assert second.is_completed()
    assert second.result()["table"]["cells"] == out["table"]["cells"]
    states = task_states(second.state_details.flow_run_id)
    assert all(s == "Cached" for name, s in states.items() if name.startswith(("analyze ", "evaluate ")))
