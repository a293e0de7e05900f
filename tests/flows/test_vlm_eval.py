"""vlm-eval end to end: real Prefect test server, real MLflow store, a tiny random LLaVA with a real processor on
generated scenes (two data seeds) and on a user dataset (JSONL + image folder). The model is random, so the
answers are noise: what is tested is the plumbing, the metrics logged per run and the figure on the parent run;
the metrics themselves are checked by hand in tests/integration/test_vlm_scenes.py."""

from __future__ import annotations

import re

import mlflow
import pytest
from typer.testing import CliRunner

from attnflow.cli import app
from components.attention.vision import UnsupportedVisionModelError
from flows.vlm_eval import vlm_eval
from infra.settings import settings
from registry.specs import SpecError
from tasks.vlm import plan_vlm_request
from tests.helpers.tiny_vlm import save_tiny_llava
from tests.unit.test_vlm_qa import write_dataset


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def test_bad_requests_fail_before_compute(llava_dir, tiny_llama_dir, tmp_path):
    with pytest.raises(UnsupportedVisionModelError, match="is not a vision-language decoder"):
        plan_vlm_request.fn(str(tiny_llama_dir), ["baseline"], ["vlm_scenes"])
    with pytest.raises(SpecError, match="kv_retrieval is a text benchmark .* none of the patches runs without"):
        plan_vlm_request.fn(str(llava_dir), ["vhr"], ["kv_retrieval"])
    with pytest.raises(Exception, match="vlm_qa.source: .*does not exist"):
        plan_vlm_request.fn(str(llava_dir), ["baseline"], [f"vlm_qa(source={tmp_path / 'nope.jsonl'})"])
    with pytest.raises(Exception, match="var.sink_dims: .* outside the hidden size 64"):
        plan_vlm_request.fn(str(llava_dir), ["var(sink_dims=99, start_layer=0)"], ["vlm_scenes"])
    out = CliRunner().invoke(app, ["vlm-eval", "--model", str(tiny_llama_dir)])
    assert out.exit_code == 2, out.output
    assert "is not a vision-language decoder" in re.sub(r"\s+", " ", out.output)
    assert "Starting temporary server" not in out.output


def test_vlm_eval_logs_runs_metrics_and_figure(llava_dir, tmp_path):
    source = write_dataset(tmp_path)
    tasks = ["vlm_scenes(n_scenes=2, strategy=adversarial, max_new_tokens=2)", f"vlm_qa(source={source})"]
    state = vlm_eval(model=str(llava_dir), components=["baseline", "vhr", "visual_logit_boost(start_layer=0)"],
                     tasks=tasks, seeds=[0, 1], experiment="vlm-eval-test", batch_size=4, return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert out["table"]["rows"] == ["baseline", "vhr", "visual_logit_boost(start_layer=0)"]
    mlflow.set_tracking_uri(settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["vlm-eval-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["run_id"]]
    assert len(children) == 3 * 3  # 3 patches x (vlm_scenes seeds 0 and 1, vlm_qa)
    scenes = [r for r in children if r.data.tags["attnflow.task"] == "vlm_scenes"]
    assert sorted(r.data.tags["attnflow.seed"] for r in scenes) == ["0", "0", "0", "1", "1", "1"]
    for r in scenes:
        m = r.data.metrics
        assert {"vlm_scenes/accuracy", "vlm_scenes/pope_precision", "vlm_scenes/pope_recall", "vlm_scenes/pope_f1",
                "vlm_scenes/yes_ratio", "vlm_scenes/hallucination_rate"} <= set(m)
        assert all(0.0 <= m[k] <= 1.0 for k in m if k.startswith("vlm_scenes/"))
    qa = [r for r in children if r.data.tags["attnflow.task"] == "vlm_qa"]
    assert all({"vlm_qa/accuracy_vqa", "vlm_qa/hallucination_rate"} <= set(r.data.metrics) for r in qa)
    client = mlflow.MlflowClient()
    assert "comparison.png" in {a.path for a in client.list_artifacts(out["run_id"])}
    examples = {a.path for a in client.list_artifacts(qa[0].info.run_id)}
    assert "examples.parquet" in examples


def test_analyze_flow_runs_attention_distance_on_a_vision_encoder(tmp_path, tiny_llama_dir):
    from flows.analyze import analyze
    from tasks.analysis import plan_analysis
    from tests.helpers.tiny_vlm import tiny_encoder

    with pytest.raises(UnsupportedVisionModelError, match="is not a vision encoder"):
        plan_analysis.fn(str(tiny_llama_dir), "attention_distance")
    tiny_encoder("vit").save_pretrained(tmp_path / "vit")
    state = analyze(model=str(tmp_path / "vit"), analyzer="attention_distance(n_images=2, batch_size=2)",
                    experiment="vit-distance-test", return_state=True)
    assert state.is_completed(), state
    metrics = state.result()["metrics"]
    assert metrics["n_images"] == 2.0 and metrics["mean_distance_first_layer"] > 0.0
