"""The export flow end to end: real Prefect test server, real MLflow store, tiny Llama built from a config."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from flows.export import export
from infra.settings import settings
from tasks.export import ParityError

COMPONENT = "zerotuning(gamma=3, heads=0:*)"


@pytest.fixture(scope="module")
def passed_run(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "zt"
    state = export(model=str(tiny_llama_dir), component=COMPONENT, optimize="ort-cpu", out=str(out),
                   parity_lengths=[8, 24], speed_lengths=[32], speed_rounds=1, experiment="export-test",
                   return_state=True)
    assert state.is_completed(), state
    return state.result(), out


def test_export_writes_directory_manifest_and_registers(passed_run):
    result, out = passed_run
    assert Path(result["out_dir"]) == out.resolve()
    assert {"model.onnx", "model.onnx.data", "manifest.json", "config.json", "tokenizer.json"} <= \
        {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(".*partial*"))  # the work directory was moved into place
    manifest = json.loads((out / "manifest.json").read_text())
    comp = manifest["component"]
    assert (comp["name"], comp["version"]) == ("zerotuning", "1.0.0") and comp["fingerprint"]
    assert comp["params"] == {"gamma": 3.0, "heads": "0:*"}
    assert manifest["opset"] >= 18 and manifest["optimize"] == "ort-cpu"
    prefill = manifest["graphs"]["prefill"]
    assert [i["name"] for i in prefill["inputs"]] == ["input_ids", "attention_mask"]
    assert prefill["dynamic_axes"]["input_ids"] == {"0": "batch", "1": "seq"}
    assert manifest["fused_ops"]["prefill"]["com.microsoft:GroupQueryAttention"] == 2
    parity = manifest["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["max_ratio"] <= parity["multiple"]
    assert parity["tokens"] is None  # exported without --kv-cache: no decode graph to check tokens with
    assert set(manifest["speed"]["lengths"]) == {"32"} and manifest["speed"]["threads"] == 1

    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["attnflow.component"] == "zerotuning" and run.data.tags["attnflow.onnx.parity"] == "passed"
    assert run.data.metrics["parity/max_abs_diff"] <= 1e-4 and "speed/T32/ratio" in run.data.metrics
    assert run.data.metrics["parity/logits/ratio"] <= parity["multiple"] and run.data.metrics["parity/logits/floor"] > 0
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "onnx")}
    assert {"onnx/model.onnx", "onnx/model.onnx.data", "onnx/manifest.json"} <= arts
    assert "export.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert result["registered_name"] == "attnflow.onnx.tiny-llama0.zerotuning"
    mv = client.get_model_version(result["registered_name"], result["registered_version"])
    assert float(mv.tags["parity.max_abs_diff"]) <= 1e-4 and "speed.T32.ratio" in mv.tags
    assert mv.tags["attnflow.component_version"] == "1.0.0" and mv.source.endswith("/onnx")


def test_identical_reexport_registers_no_new_version(passed_run):
    result, out = passed_run
    again = export(model=result["manifest"]["model"]["ref"], component=COMPONENT, optimize="ort-cpu", out=str(out),
                   parity_lengths=[8, 24], speed_lengths=[32], speed_rounds=1, experiment="export-test")
    assert again["registered_version"] == result["registered_version"]
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    versions = client.search_model_versions(f"name='{result['registered_name']}'")
    assert [str(v.version) for v in versions] == [result["registered_version"]]
    run = client.get_run(again["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["attnflow.cached"] == "true"
    assert run.data.tags["attnflow.registered_version"] == result["registered_version"]


def test_failed_parity_fails_the_flow_keeps_artifacts_and_registers_nothing(passed_run, tiny_llama_dir,
                                                                             tmp_path_factory):
    result, _ = passed_run
    out = tmp_path_factory.mktemp("export-fail") / "zt"
    state = export(model=str(tiny_llama_dir), component=COMPONENT, optimize="ort-cpu", out=str(out),
                   parity_lengths=[8, 24], parity_multiple=1e-6, benchmark=False, experiment="export-test",
                   return_state=True)
    assert state.is_failed()
    with pytest.raises(ParityError, match=r"parity FAILED: max \|ORT - torch\| logits .* \(gate: <= 1e-06 x floor\)"):
        state.result()
    manifest = json.loads((out / "manifest.json").read_text())  # kept for inspection
    assert not manifest["parity"]["passed"] and (out / "model.onnx").is_file()
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["export-test"], output_format="list",
                              filter_string="tags.`attnflow.onnx.parity` = 'failed'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "onnx/model.onnx" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "onnx")}
    versions = client.search_model_versions(f"name='{result['registered_name']}'")
    assert [str(v.version) for v in versions] == [result["registered_version"]]  # nothing new registered
    # the graphs exported by the first run (same weights, component, options) were reused, not re-exported
    assert len(list((settings().cache_dir / "onnx-graphs").iterdir())) == 1


def test_generate_cli_on_the_export_matches_pytorch_and_reports_the_provider(passed_run):
    from typer.testing import CliRunner

    from attnflow.cli import app

    _, out = passed_run
    res = CliRunner().invoke(app, ["generate", "--onnx", str(out), "--prompt", "Once upon a time", "--prompt",
                                   "abc:001", "--max-new-tokens", "6", "--verify", "--provider", "cuda"])
    assert res.exit_code == 0, res.output
    assert "greedy tokens match the patched PyTorch model: yes" in res.output
    assert "no decode.onnx in this export" in res.output  # exported without --kv-cache: said, not hidden
    assert ("fell back to CPUExecutionProvider" in res.output) or ("running on CUDAExecutionProvider" in res.output)
