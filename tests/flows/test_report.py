"""attnflow report: components x tasks from MLflow runs, 95% CIs across seeds, deltas vs baseline, versions split."""

from __future__ import annotations

import math
import statistics

import mlflow
import pytest
from scipy import stats

from flows.report import report
from infra.settings import settings
from tasks.tracking import log_evaluation, start_run

EXP = "report-test"
# (component label, name, version, code fingerprint) -> kv_retrieval accuracy per seed
ACC = {
    ("baseline", "baseline", "1.0.0", "b0"): [0.50, 0.60, 0.55],
    ("zerotuning(gamma=2.0)", "zerotuning", "1.0.0", "z0"): [0.58, 0.66, 0.61],
    ("zerotuning(gamma=2.0)", "zerotuning", "1.1.0", "z1"): [0.70, 0.71, 0.69],
}
PPL = {"baseline": 30.0, "zerotuning": 29.0}


def _result(label, name, version, code, seed, acc):
    comp = {"name": name, "version": version, "fingerprint": f"{code}-fp", "code_fingerprint": code * 8,
            "paper": "", "label": label, "params": {"gamma": 2.0} if name != "baseline" else {}}
    out = []
    for bench, metrics in (("kv_retrieval", {"accuracy": acc, "n_examples": 8}),
                           ("perplexity", {"ppl": PPL[name] + seed, "nll": math.log(PPL[name] + seed)})):
        b = {"name": bench, "version": "1.0.0", "fingerprint": f"{bench}-{seed}", "label": f"{bench}(seed={seed})",
             "params": {"seed": seed}}
        out.append({"component": comp, "benchmark": b, "metrics": metrics, "model": "tiny", "model_fingerprint": "m",
                    "seconds": 0.1, "examples": [], "breakdowns": {}, "figures": {}})
    return out


@pytest.fixture(scope="module")
def parents():
    """Two comparisons: version 1.0.0 of zerotuning, then 1.1.0 (the baseline is in both)."""
    ids = []
    for versions in (("1.0.0",), ("1.1.0",)):
        parent = start_run.fn(EXP, "compare tiny", {"attnflow.kind": "compare"}, {})
        for (label, name, version, code), accs in ACC.items():
            if name != "baseline" and version not in versions:
                continue
            for seed, acc in enumerate(accs):
                for r in _result(label, name, version, code, seed, acc):
                    log_evaluation.fn(r, EXP, parent, {}, seed=seed)
        ids.append(parent)
    return ids


def test_report_splits_versions_and_gives_cis(parents):
    out = report(experiment=EXP, return_state=True)
    assert out.is_completed(), out
    out = out.result()
    (table,) = out["tables"]
    rows = table["rows"]
    assert set(rows) == {"baseline", "zerotuning(gamma=2.0) @1.0.0", "zerotuning(gamma=2.0) @1.1.0"}
    assert table["versions"]["zerotuning(gamma=2.0) @1.1.0"] == "1.1.0"
    assert table["runs"] == 3 * 3 * 2  # the baseline logged twice keeps its latest runs only
    assert set(table["columns"]) == {"kv_retrieval/accuracy", "perplexity/ppl", "perplexity/nll"}

    # an independent computation of the paired 95% t-interval of the delta
    base = ACC[("baseline", "baseline", "1.0.0", "b0")]
    new = ACC[("zerotuning(gamma=2.0)", "zerotuning", "1.1.0", "z1")]
    diffs = [a - b for a, b in zip(new, base)]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    d = table["deltas"]["zerotuning(gamma=2.0) @1.1.0"]["kv_retrieval/accuracy"]
    assert d["paired"] and d["delta"] == pytest.approx(statistics.fmean(diffs)) and d["ci"] == pytest.approx(half)
    cell = table["cells"]["baseline"]["kv_retrieval/accuracy"]
    assert cell["ci"] == pytest.approx(stats.t.ppf(0.975, 2) * statistics.stdev(base) / math.sqrt(3))
    assert table["higher_is_better"]["perplexity/ppl"] is False

    md = out["markdown"]
    assert "| zerotuning(gamma=2.0) @1.1.0 | 1.1.0 |" in md and "| zerotuning(gamma=2.0) @1.0.0 | 1.0.0 |" in md
    assert "▲" in md  # 1.1.0 is better than the baseline and its interval excludes 0

    client = mlflow.MlflowClient(tracking_uri=settings().tracking_uri)
    arts = {a.path for a in client.list_artifacts(out["run_id"])} | {
        a.path for a in client.list_artifacts(out["run_id"], "figures")}
    assert {"report.md", "report.html", "report.json", "figures/values.png", "figures/deltas.png"} <= arts
    run = client.get_run(out["run_id"])
    assert run.data.tags["attnflow.kind"] == "report" and "@1.1.0" in run.data.tags["mlflow.note.content"]

    # the report run itself is not an evaluation run: a second report sees the same runs
    again = report(experiment=EXP, log=False)
    assert again["n_runs"] == out["n_runs"] and again["run_id"] is None


def test_report_of_one_comparison_by_parent_run_id(parents):
    out = report(experiment=EXP, run_ids=[parents[0]], log=False)
    (table,) = out["tables"]
    assert table["rows"] == ["baseline", "zerotuning(gamma=2.0)"]  # one version only: no version suffix
    assert table["versions"]["zerotuning(gamma=2.0)"] == "1.0.0"


def test_report_names_a_missing_experiment():
    state = report(experiment="no-such-experiment", return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="no MLflow experiment named 'no-such-experiment'"):
        state.result()


def test_report_flags_runs_of_one_fingerprint_with_different_metrics():
    """A cached result flipped from 1.0 to 0.0 and logged again: the report flags it instead of averaging it."""
    exp = "report-disagree"
    for acc in (1.0, 0.0):  # the same computation (one fingerprint) logged twice with different metrics
        parent = start_run.fn(exp, "compare tiny", {"attnflow.kind": "compare"}, {})
        for name in ("baseline", "zerotuning"):
            for r in _result(name, name, "1.0.0", name[0], 0, acc if name == "zerotuning" else 0.5):
                log_evaluation.fn(r, exp, parent, {}, seed=0)
        for r in _result("zerotuning", "zerotuning", "1.0.0", "z", 1, acc)[:1]:  # and once under another seed tag
            r["benchmark"] = {**r["benchmark"], "label": r["benchmark"]["label"].replace("seed=1", "seed=0"),
                              "fingerprint": f"{r['benchmark']['name']}-0"}
            log_evaluation.fn(r, exp, parent, {}, seed=1)
    out = report(experiment=exp, log=False)
    (table,) = out["tables"]
    flagged = {(d["component"], d["task"]) for d in table["disagreements"]}
    assert flagged == {("zerotuning", "kv_retrieval")}, table["disagreements"]
    assert "Warning: runs with one fingerprint" in out["markdown"] and "accuracy 0 vs 1" in out["markdown"]
    cell = table["cells"]["zerotuning"]["kv_retrieval/accuracy"]
    assert cell["n"] == 1  # one computation counts once: not averaged with its disagreeing duplicate
