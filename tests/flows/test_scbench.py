"""scbench end to end: real Prefect test server, real MLflow store, tiny Llama built from a config."""

from __future__ import annotations

import json

import mlflow
import pytest

from flows.scbench import scbench
from infra.settings import settings
from registry.specs import SpecError
from tasks.scbench import plan_tasks

PRESSES = ["streaming_llm(n_sink=2)", "knorm"]
RATIOS = [0.0, 0.5]
KV = "kv(n_contexts=2, n_pairs=8, n_queries=3)"


def _layout(tmp_path, rows) -> str:
    path = tmp_path / "user.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_bad_requests_fail_before_compute(tmp_path):
    with pytest.raises(SpecError, match="modes"):
        plan_tasks.fn([KV], ["multi_turns"])
    bad = _layout(tmp_path, [{"context": "x", "multi_turns": [{"input": "q"}]}])
    with pytest.raises(ValueError, match=r"row 0 \(line 1\), multi_turns\[0\]: field 'answer'"):
        plan_tasks.fn([KV, bad], ["multi_turn"])


def test_scbench_logs_a_run_per_point_and_mode_and_reuses_everything(tiny_llama_dir, tmp_path):
    user = _layout(tmp_path, [{"id": "u1", "context": "Pairs: cat dog, sun moon, red blue.",
                               "multi_turns": [{"input": "cat", "answer": "dog"}, {"input": "sun", "answer": "moon"}]}])
    tasks = [KV, f"file(source={user}, query= {{input}}, metric=first_word, max_new_tokens=3)"]
    state = scbench(model=str(tiny_llama_dir), presses=PRESSES, ratios=RATIOS, tasks=tasks,
                    experiment="scbench-test", return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert len(out["points"]) == 8 and "| streaming_llm | 0.5 |" in out["table"]
    kv_point = next(p for p in out["points"] if p["task"].startswith("kv") and p["press"] == "knorm"
                    and p["ratio"] == 0.5)
    assert kv_point["n_sessions"] == 2 and kv_point["prefill_hits"] == 0
    assert set(kv_point["modes"]) == {"multi_turn", "multi_request"}
    assert len(kv_point["modes"]["multi_turn"]["by_turn"]) == 3
    mlflow.set_tracking_uri(settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["scbench-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["run_id"]]
    assert len(children) == 16  # 2 presses x 2 ratios x 2 tasks x 2 modes
    by_ratio = {float(r.data.metrics["kv/ratio"]): r.data.metrics["kv/cache_bytes_ratio"] for r in children}
    assert by_ratio[0.0] == 1.0 and abs(by_ratio[0.5] - 0.5) <= 0.05
    client = mlflow.MlflowClient()
    turns = client.get_metric_history(children[0].info.run_id, "accuracy_by_turn")
    assert sorted(m.step for m in turns) in ([1, 2], [1, 2, 3])
    figures = [a.path for a in client.list_artifacts(out["run_id"], "turns")]
    assert len(figures) == 4 and all(f.endswith(".png") for f in figures)  # 2 tasks x 2 ratios
    # another mode set is a new point, but its contexts' compressed prefills come from the disk cache
    again = scbench(model=str(tiny_llama_dir), presses=PRESSES[:1], ratios=[0.5], tasks=[KV],
                    modes=["multi_request"], experiment="scbench-test")
    first = next(p for p in out["points"] if p["press"] == "streaming_llm" and p["ratio"] == 0.5
                 and p["task"].startswith("kv"))
    assert again["points"][0]["prefill_hits"] == 2 and first["prefill_hits"] == 0
    assert again["points"][0]["prefill_seconds"] == first["prefill_seconds"]  # the stored cost of computing them
    got, want = again["points"][0]["modes"]["multi_request"], first["modes"]["multi_request"]
    assert (got["accuracy"], got["by_turn"]) == (want["accuracy"], want["by_turn"])
    assert [r["output"] for r in again["points"][0]["records"]] == [
        r["output"] for r in first["records"] if r["mode"] == "multi_request"]
