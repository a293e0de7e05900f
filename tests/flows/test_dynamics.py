"""The training-dynamics flows end to end at toy size: verdicts and figures in MLflow, per-point caching, bad input."""

from __future__ import annotations

import mlflow
import pytest
from typer.testing import CliRunner

from attnflow.cli import app
from components.base import ParamError
from components.lm.claims import HELD, INCONCLUSIVE, NOT_HELD
from flows.arch_compare import arch_compare
from flows.instability_proxies import instability_proxies
from flows.sink_emergence import sink_emergence
from infra.settings import settings
from tests.flows.test_compare import task_states

VERDICTS = {HELD, NOT_HELD, INCONCLUSIVE}


def parent_run(run_id: str):
    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "figures")}
    return run, children, artifacts


def test_sink_emergence_logs_a_verdict_and_extends_a_sweep_by_one_point():
    kw = dict(steps=8, probe_every=4, probe_n=4, batch_size=4, hidden=32, heads=2, seq_len=16,
              experiment="sink-test")
    first = sink_emergence(seeds=[0], weight_decays=[0.0], return_state=True, **kw)
    assert first.is_completed(), first
    out = first.result()
    assert out["verdict"] in VERDICTS and out["checks"][0]["claim"].startswith("A sink emerges with softmax")
    assert {c["claim"] for c in out["checks"][1:]} == {"More weight decay -> more attention sink"}
    run, children, artifacts = parent_run(out["run_id"])
    assert run.data.tags["attnflow.verdict"] == out["verdict"]
    assert {"verdict.md", "results.json", "figures/sink_over_training.png", "figures/sink_sweeps.png"} <= artifacts
    assert len(children) == 3
    child = next(c for c in children if c.data.tags["attnflow.kernel"] == "sigmoid")
    history = mlflow.MlflowClient(settings().tracking_uri).get_metric_history(child.info.run_id, "sink1")
    assert [m.step for m in history] == [0, 4, 8]

    second = sink_emergence(seeds=[0, 1], weight_decays=[0.0], return_state=True, **kw)
    assert second.is_completed()
    states = task_states(second.state_details.flow_run_id)
    trained = {k: v for k, v in states.items() if k.startswith("train ")}
    assert trained["train softmax seed 0"] == "Cached" and trained["train sigmoid seed 0"] == "Cached"
    assert trained["train softmax seed 1"] == "Completed" and trained["train sigmoid seed 1"] == "Completed"


def test_instability_proxies_grid_and_claims():
    out = instability_proxies(widths=[32], lrs=[1e-2, 1.0], z_losses=[0.0, 1e-4], steps=6, warmup=2, probe_every=3,
                              probe_n=4, batch_size=4, experiment="proxies-test")
    assert out["verdict"] in VERDICTS
    claims = [c["claim"] for c in out["checks"]]
    assert any(c.startswith("Attention logits grow") for c in claims)
    assert any(c.startswith("qk-layernorm lowers LR sensitivity") for c in claims)
    assert any(c.startswith("z-loss keeps") for c in claims)
    assert len(out["table"]) == 4 and {"loss@0.01", "maxlogit@1"} <= set(out["table"][0])
    _, children, artifacts = parent_run(out["run_id"])
    assert len(children) == 8 and "figures/max_logit_vs_lr.png" in artifacts


def test_arch_compare_matches_parameters_and_checks_equivalences():
    out = arch_compare(variants=["moh(shared=2, top_k=2)", "complex", "lightning(block=8)"], seeds=[0], steps=6,
                       warmup=2, probe_every=3, probe_n=4, batch_size=4, hidden=32, experiment="arch-test")
    table = {row["attention"]: row for row in out["table"]}
    base = table["softmax"]["params"]
    assert all(abs(row["params"] - base) <= 3 * 32 * 2 for row in table.values())  # one SwiGLU unit
    checks = {c["claim"]: c["verdict"] for c in out["checks"]}
    assert checks["CMHA with delta = 1, b = 0 equals RoPE attention (logits)"] == HELD
    assert sum(c.startswith("Tiled lightning equals") and v == HELD for c, v in checks.items()) == 1
    assert out["verdict"] in VERDICTS and len(out["checks"]) == 5
    _, children, artifacts = parent_run(out["run_id"])
    assert len(children) == 4 and "figures/loss_curves.png" in artifacts


def test_bad_input_fails_before_training():
    with pytest.raises(ParamError, match="bigram-backcopy"):
        sink_emergence(data="builtin:stories", steps=2)
    result = CliRunner().invoke(app, ["run", "arch-compare", "--param", 'variants=["moh(shared=2, top_k=9)"]',
                                      "--param", "steps=2"])
    assert result.exit_code == 2 and "moh.top_k=9" in result.output
