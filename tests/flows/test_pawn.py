"""PAWN end to end: real Prefect test server, real MLflow store, a tiny model built from a config, generated data.

One ``pawn`` run (prep -> cache -> PAWN + every baseline -> evaluation -> ONNX export -> registration) is shared
by the tests; a second flow trains another head from the same cache, and the registered detector scores texts
through ONNX Runtime from the CLI and is evaluated on new data."""

from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from attnflow.cli import app
from components.detectors._features import extract
from flows.pawn import DEFAULT_DETECTORS, pawn, pawn_evaluate, pawn_features, pawn_prep, pawn_train
from infra.settings import settings
from tasks.pawn_export import PARITY_TOL, read_meta
from tasks.pawn_metrics import calibrate_fpr_threshold
from tasks.pawn_train import detector, load_state
from tests.helpers.detection import human_texts, one_torch_thread, pair_file  # noqa: F401  (autouse fixture)

HEAD = "pawn(features=32, gates=16, layers=2, epochs=4, batch_size=16, lr=0.003)"
DETECTORS = [HEAD] + DEFAULT_DETECTORS[1:]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_llama_dir):
    d = tmp_path_factory.mktemp("pawn-data")
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    return {"train": [str(pair_file(d / "xsum_tiny-a.raw_data.json", model, tok, 36, seed=0)),
                      str(pair_file(d / "writing_tiny-b.raw_data.json", model, tok, 36, seed=1))],
            "new": str(pair_file(d / "pubmed_tiny-c.raw_data.json", model, tok, 12, seed=2)), "dir": d}


@pytest.fixture(scope="module")
def run(data, tiny_llama_dir):
    state = pawn(train=data["train"], model=str(tiny_llama_dir), detectors=DETECTORS, max_length=48,
                 experiment="pawn-test", progress=False, return_state=True)
    assert state.is_completed(), state
    return state.result()


def test_flow_compares_pawn_with_every_baseline_in_mlflow(run):
    table = run["table"]
    assert [r.split("(")[0] for r in table["rows"]] == ["pawn", "log_likelihood", "log_rank", "token_entropy", "gltr",
                                                       "fast_detectgpt", "binoculars"]
    assert table["cells"][table["rows"][0]]["auroc"]["mean"] >= 0.9
    c = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    children = {r.data.tags["attnflow.component"]: r for r in
                mlflow.search_runs(experiment_names=["pawn-test"], output_format="list")
                if r.data.tags.get("mlflow.parentRunId") == run["run_id"]}
    assert set(children) == {"pawn", "log_likelihood", "log_rank", "token_entropy", "gltr", "fast_detectgpt",
                             "binoculars"}
    p = children["pawn"]
    for key in ("attnflow.component_version", "attnflow.fingerprint", "attnflow.code_fingerprint",
                "attnflow.registry_version", "attnflow.git_commit", "attnflow.prefect_flow_run_id",
                "attnflow.model", "attnflow.cache_key"):
        assert p.data.tags.get(key), key
    assert p.data.params["features"] == "32"
    for key in ("test/auroc", "test/macro_f1", "test/macro_recall", "test/recall_at_1fpr", "test/recall_at_5fpr",
                "valid/auroc", "threshold", "test/domain/xsum/auroc", "test/generator/tiny-b/recall_machine"):
        assert key in p.data.metrics, key
    assert [m.step for m in c.get_metric_history(p.info.run_id, "train/valid_auroc")][:2] == [1, 2]
    arts = {a.path for a in c.list_artifacts(p.info.run_id, "figures")}
    assert arts == {"figures/roc.png", "figures/score_histogram.png", "figures/fpr_by_source.png"}
    assert "state/state.safetensors" in {a.path for a in c.list_artifacts(p.info.run_id, "state")}
    assert "single model" in children["binoculars"].data.tags["attnflow.binoculars.models"]
    assert children["binoculars"].data.tags["attnflow.binoculars.single_model"] == "true"
    # decisions at the threshold calibrated for 5% FPR on human validation texts, FPR per human source
    for key in ("test/fpr", "test/fpr_ci_low", "test/fpr_ci_high", "test/recall_at_target_fpr", "test/target_fpr",
                "test/accuracy_at_target_fpr", "test/fpr_by/source/xsum_tiny-a/fpr"):
        assert key in p.data.metrics, key
    assert p.data.params["target_fpr"] == "0.05"
    assert "fpr_by_source.json" in {a.path for a in c.list_artifacts(p.info.run_id)}
    parent_run = c.get_run(run["run_id"])
    assert parent_run.data.tags["attnflow.shared_prefix"] == "cut"
    parent = {a.path for a in c.list_artifacts(run["run_id"])}
    assert {"roc.png", "comparison.md", "comparison.png", "feature_cache"} <= parent
    manifest = json.loads(mlflow.artifacts.load_text(f"runs:/{run['run_id']}/feature_cache/train-manifest.json"))
    assert manifest["complete"] and manifest["shards"][0]["sha256"]
    assert len(c.search_model_versions("name='attnflow.pawn'")) == 1  # the component, published once


def test_best_head_exported_parity_checked_and_registered_as_champion(run, tiny_llama_dir):
    name = f"attnflow.pawn.{tiny_llama_dir.name}"
    assert run["registered"] == name
    c = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    mv = c.get_model_version_by_alias(name, "champion")
    assert str(mv.version) == run["registered_version"] and mv.tags["attnflow.extractor_version"] == "1.0.0"
    meta = read_meta(run["model_dir"])
    parity = meta["onnx"]["parity"]
    assert parity["logit"] <= PARITY_TOL["logit"] and parity["metrics"] <= PARITY_TOL["metrics"]
    assert meta["backbone"]["name"] == tiny_llama_dir.name and 0 < meta["threshold_probability"] < 1


def test_cli_scores_with_onnx_runtime_like_torch(run, data, tiny_llama_dir):
    texts = human_texts(3, seed=7) + ["another short one"]
    src = data["dir"] / "to_score.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(texts)))
    out = CliRunner().invoke(app, ["pawn", "score", "--model", run["registered"], str(src), "--batch-size", "3"])
    assert out.exit_code == 0, out.output
    scores = json.loads(out.stdout)
    assert [s["id"] for s in scores] == ["q0", "q1", "q2", "q3"]
    meta = read_meta(run["model_dir"])
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
    feats = extract(model, tok, texts, max_length=meta["extractor"]["max_length"])
    want = detector(meta["spec"]).score(feats, load_state(run["model_dir"]))
    assert np.abs(np.array([s["logit"] for s in scores]) - want).max() < 1e-4
    assert all(s["label"] == ("machine" if s["logit"] >= meta["threshold_logit"] else "human") for s in scores)
    csv_out = CliRunner().invoke(app, ["pawn", "score", "-m", run["model_dir"], str(src), "-f", "csv"])
    assert csv_out.exit_code == 0 and csv_out.stdout.splitlines()[0] == "id,score,logit,label,n_tokens,truncated"
    bad = data["dir"] / "bad.jsonl"
    bad.write_text('{"id": "ok", "text": "fine"}\n{"id": "blank", "text": " "}\n')
    res = CliRunner().invoke(app, ["pawn", "score", "-m", run["model_dir"], str(bad)])
    assert res.exit_code == 2 and "blank: empty text" in res.output


def test_more_heads_train_from_the_same_cache(run, data, tiny_llama_dir):
    state = pawn_train(train=data["train"], model=str(tiny_llama_dir), max_length=48, experiment="pawn-test",
                       detectors=[HEAD.replace("lr=0.003", "lr=0.003, seed=1"), "log_likelihood"], progress=False,
                       return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert out["caches"]["train"]["computed_shards"] == []  # the backbone did not run again
    fits = {r["fit"]["component"]["name"]: r["fit"] for r in out["results"]}
    assert fits["log_likelihood"]["reused"] and not fits["pawn"]["reused"]
    assert fits["pawn"]["info"]["history"]


def test_registered_detector_evaluates_new_data(run, data):
    state = pawn_evaluate(detector=run["registered"], data=[data["new"]], experiment="pawn-test-eval",
                          progress=False, return_state=True)
    assert state.is_completed(), state
    res = state.result()
    assert res["result"]["threshold"] == read_meta(run["model_dir"])["threshold_logit"]
    assert res["table"]["rows"][0].startswith("pawn") and len(res["result"]["test"]["labels"]) == 24


def test_prep_and_features_flows_find_the_same_cache(run, data, tiny_llama_dir):
    prepared = pawn_prep(sources=data["train"], out=str(data["dir"] / "prepared.parquet"))
    assert prepared["n_rows"] == 144 and prepared["generators"] == ["human", "tiny-a", "tiny-b"]
    feats = pawn_features(data=[prepared["path"]], model=str(tiny_llama_dir), max_length=48, progress=False)
    assert feats["key"] == run["caches"]["train"]["key"]  # same content, same backbone: the pawn run's cache
    assert feats["complete"] and feats["computed_shards"] == []


def test_human_only_data_gets_fpr_per_group_and_no_nan(run, data):
    src = data["dir"] / "essays.jsonl"  # no label column: one class, with a writer group
    src.write_text("\n".join(json.dumps({"id": f"e{i}", "text": t, "writer": "native" if i % 3 else "non-native"})
                             for i, t in enumerate(human_texts(12, seed=11))))
    prep = CliRunner().invoke(app, ["pawn", "prep", str(src), "--label", "human", "--group-field", "writer",
                                    "--split", "test", "--out", str(data["dir"] / "essays.parquet")])
    assert prep.exit_code == 0, prep.output
    assert json.loads(prep.stdout.splitlines()[-1])["splits"]["test"] == {"human": 12, "machine": 0}
    out = CliRunner().invoke(app, ["pawn", "evaluate", str(src), "--detector", run["registered"], "--label", "human",
                                   "--group-field", "writer", "--groups", "group", "--experiment", "pawn-test-human"])
    assert out.exit_code == 0, out.output
    assert not re.search(r"\bnan\b", out.output, re.I)  # NaN is never printed
    assert "omitted auroc" in out.output and "needs human and machine texts" in out.output
    assert "FPR per group" in out.output and "non-native" in out.output
    c = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    child = next(r for r in mlflow.search_runs(experiment_names=["pawn-test-human"], output_format="list")
                 if r.data.tags.get("attnflow.component") == "pawn")
    m = child.data.metrics
    assert "test/auroc" not in m and m["test/n_human"] == 12 and 0 <= m["test/fpr"] <= 1
    assert all(v == v for v in m.values())  # no NaN logged
    omitted = json.loads(mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/omitted_metrics.json"))
    assert omitted["test"]["auroc"].startswith("needs human and machine texts")
    # the per-group table against a count by hand, at the threshold calibrated on the stored validation humans
    meta = read_meta(run["model_dir"])
    t = calibrate_fpr_threshold(np.array(meta["valid_human_scores"]), 0.05)
    scores = json.loads(mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/breakdowns.json"))["fpr_by"]["group"]
    ids = pq.read_table(mlflow.artifacts.download_artifacts(f"runs:/{child.info.run_id}/test_scores.parquet"))
    rows = ids.to_pylist()
    assert scores["threshold"] == pytest.approx(t)
    for g in ("native", "non-native"):
        mine = [r["scores"] for r in rows if r["group"] == g]
        row = next(r for r in scores["rows"] if r["group"] == g)
        assert (row["n_human"], row["n_flagged"]) == (len(mine), sum(s >= t for s in mine))
        assert m[f"test/fpr_by/group/{g}/fpr"] == pytest.approx(row["fpr"])
    assert {"fpr_by_group.json", "fpr_by_source.json"} <= {a.path for a in c.list_artifacts(child.info.run_id)}
