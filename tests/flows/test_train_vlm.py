"""train-vlm end to end on a tiny random Llama: both stages lower the held-out target loss, the model is saved as
safetensors with a processor and a model card, MLflow has the loss curves, and vlm-eval loads and runs the result.
Then a short extra stage from the saved model with LoRA on the LM (merged before saving) and with Wings learners
(an adapter folder), and vlm-eval with the adapter on an image benchmark and on a text benchmark (text-only
prompts). The real run (smollm2-135m, the flow's defaults) is documented in docs/vlm.md, not run here."""

from __future__ import annotations

import re

import mlflow
from typer.testing import CliRunner

from attnflow.cli import app
from flows.train_vlm import train_vlm
from flows.vlm_eval import vlm_eval
from infra.settings import settings

TINY = dict(image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=2, align_steps=30,
            instruct_steps=20, n_scenes=24, batch_size=8, lr=3e-3)


def test_bad_request_fails_before_loading(tmp_path, tiny_llama_dir):
    (tmp_path / "notes.txt").write_text("mine")
    for args, message in ((["--out", str(tmp_path)], "exists and is not a model directory"),
                          (["--image-size", "30", "--patch-size", "8"],
                           "image_size 30 is not a multiple of patch_size 8")):
        out = CliRunner().invoke(app, ["train-vlm", "--lm", str(tiny_llama_dir), *args])
        assert out.exit_code == 2, out.output
        assert message in re.sub(r"\s+", " ", out.output) and "Starting temporary server" not in out.output


def test_train_vlm_then_vlm_eval(tmp_path, tiny_llama_dir):
    state = train_vlm(lm=str(tiny_llama_dir), out=str(tmp_path / "vlm"), experiment="train-vlm-test",
                      return_state=True, **TINY)
    assert state.is_completed(), state
    out = state.result()
    for s in out["stages"]:
        assert s["held_out_after"] < s["held_out_before"], s
    model_dir = tmp_path / "vlm"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "README.md").is_file()
    mlflow.set_tracking_uri(settings().tracking_uri)
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(out["run_id"], "align/loss")) == TINY["align_steps"]
    assert "loss.png" in {a.path for a in client.list_artifacts(out["run_id"])}
    ev = vlm_eval(model=str(model_dir), components=["baseline"], tasks=["vlm_scenes(n_scenes=2, image_size=32)"],
                  experiment="train-vlm-test-eval", return_state=True)
    assert ev.is_completed(), ev
    assert ev.result()["table"]["rows"] == ["baseline"]

    for kind in ("lora", "wings"):
        extra = train_vlm(init_from=str(model_dir), out=str(tmp_path / kind), adapter=kind, adapter_rank=4,
                          align_steps=0, instruct_steps=3, n_scenes=12, batch_size=4, lr=1e-2,
                          experiment="train-vlm-test", return_state=True)
        assert extra.is_completed(), extra
        assert [s["stage"] for s in extra.result()["stages"]] == ["instruct"]
    assert (tmp_path / "wings" / "wings" / "wings.safetensors").is_file()
    assert not (tmp_path / "lora" / "wings").exists()
    comps = ["baseline", f"wings(adapter={tmp_path / 'wings' / 'wings'})", "vhr"]
    ev = vlm_eval(model=str(tmp_path / "wings"), components=comps,
                  tasks=["vlm_scenes(n_scenes=2, image_size=32)", "induction_copy(n_examples=2)"],
                  experiment="train-vlm-test-wings", return_state=True)
    assert ev.is_completed(), ev
    runs = mlflow.search_runs(experiment_names=["train-vlm-test-wings"], output_format="list")
    cells = sorted((r.data.tags["attnflow.component"], r.data.tags["attnflow.task"]) for r in runs
                   if r.data.tags.get("mlflow.parentRunId") == ev.result()["run_id"])
    assert [c for c in cells if c[1] == "induction_copy"] == [("baseline", "induction_copy"),
                                                               ("wings", "induction_copy")]  # vhr needs images
    assert len(cells) == 5


def test_adapter_requests_fail_before_loading(tmp_path, tiny_llama_dir):
    for args, message in ((["--adapter", "wings"], "--out is required with --init-from or an adapter"),
                          (["--init-from", str(tiny_llama_dir), "--out", str(tmp_path / "x")],
                           "is not a vision-language decoder"),
                          (["--adapter", "wings", "--wings-layers", "0,x", "--out", str(tmp_path / "y")],
                           "give comma-separated layer indices"),
                          (["--adapter", "wings", "--wings-layers", "0,7", "--out", str(tmp_path / "z")],
                           "wings_layers [0, 7] must lie in [0, 2)")):
        out = CliRunner().invoke(app, ["train-vlm", "--lm", str(tiny_llama_dir), *args])
        assert out.exit_code == 2, out.output
        assert message in re.sub(r"\s+", " ", out.output) and "Starting temporary server" not in out.output
