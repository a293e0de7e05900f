"""train-t2i end to end at tiny sizes on the Prefect harness: bad requests fail before compute, training lowers the
held-out loss, the folder is saved (load_t2i reads it), MLflow has the loss per step and both figures. The real run
(the flow's defaults) is documented in docs/diffusion.md (section demo-t2i), not run here."""

from __future__ import annotations

import re

import mlflow
from typer.testing import CliRunner

from attnflow.cli import app
from components.diffusion.pipeline import load_t2i
from flows.train_t2i import train_t2i
from infra.settings import settings

TINY = dict(image_size=16, channels=[8, 16, 16], text_hidden=16, text_layers=1, heads=2, steps=40, n_scenes=64,
            batch_size=16, lr=3e-3, sample_prompts=2, sample_steps=2)


def test_bad_request_fails_before_compute(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for args, message in ((["--out", str(tmp_path)], "exists and is not a text-to-image model folder"),
                          (["--image-size", "30"], "image_size 30 is not divisible by 2^2"),
                          (["--cfg-dropout", "1.5"], "cfg_dropout 1.5 must be in [0, 1)")):
        out = CliRunner().invoke(app, ["train-t2i", *args])
        assert out.exit_code == 2, out.output
        assert message in re.sub(r"\s+", " ", out.output) and "Starting temporary server" not in out.output


def test_train_t2i_flow(tmp_path):
    state = train_t2i(out=str(tmp_path / "t2i"), experiment="train-t2i-test", return_state=True, **TINY)
    assert state.is_completed(), state
    out = state.result()
    assert out["held_out_after"] < out["held_out_before"], out
    assert set(out["sample_scores"]) >= {"binding", "all_bound", "count"}
    model = load_t2i(tmp_path / "t2i")
    assert model.image_size == 16 and model.meta["training"]["steps"] == TINY["steps"]
    assert model.scheduler.config.prediction_type == model.meta["training"]["prediction"] == "v_prediction"
    assert model.scheduler.config.timestep_spacing == "trailing"
    assert (tmp_path / "t2i" / "README.md").is_file()
    mlflow.set_tracking_uri(settings().tracking_uri)
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(out["run_id"], "loss")) == TINY["steps"]
    assert {"loss.png", "samples.png"} <= {a.path for a in client.list_artifacts(out["run_id"])}
