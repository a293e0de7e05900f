"""Claims: the CI over seeds, the verdict rule (held only when the whole CI meets the criterion), collection of claim
modules, and the summary table / figures built from ClaimResults."""

from __future__ import annotations

import math

import pytest

from tasks import claims_base as cb
from tasks import plots
from tasks.claims_report import collect, forest_figure, markdown_table, per_seed_figure


def test_ci95_is_the_t_interval():
    lo, hi = cb.ci95([1.0, 2.0, 3.0])
    # mean 2, s = 1, t_{0.975,2} = 4.3027: half-width 4.3027 / sqrt(3) = 2.4841
    assert (lo, hi) == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-4)
    assert cb.ci95([0.5, 0.5, 0.5]) == [0.5, 0.5]
    assert cb.ci95([7.0]) == [7.0, 7.0]
    assert all(math.isnan(v) for v in cb.ci95([1.0, math.nan, 2.0]))
    with pytest.raises(ValueError, match="no values"):
        cb.ci95([])


@pytest.mark.parametrize("ci, at_least, above, at_most", [
    ([0.2, 0.4], cb.HELD, cb.HELD, cb.NOT_HELD),           # whole CI above 0.1 (and above 0.1 for at_most)
    ([0.1, 0.4], cb.HELD, cb.INCONCLUSIVE, cb.INCONCLUSIVE),  # lower end on the threshold: >= holds, > does not
    ([-0.1, 0.3], cb.INCONCLUSIVE, cb.INCONCLUSIVE, cb.INCONCLUSIVE),  # straddles
    ([-0.3, 0.05], cb.NOT_HELD, cb.NOT_HELD, cb.HELD),
    ([math.nan, math.nan], cb.INCONCLUSIVE, cb.INCONCLUSIVE, cb.INCONCLUSIVE),
])
def test_verdict_parts_need_the_whole_ci(ci, at_least, above, at_most):
    assert cb.at_least(ci, 0.1) == at_least
    assert cb.above(ci, 0.1) == above
    assert cb.at_most(ci, 0.1) == at_most


def test_combine_and_point():
    assert cb.combine([cb.HELD, cb.HELD]) == cb.HELD
    assert cb.combine([cb.HELD, cb.INCONCLUSIVE]) == cb.INCONCLUSIVE
    assert cb.combine([cb.INCONCLUSIVE, cb.NOT_HELD, cb.HELD]) == cb.NOT_HELD
    assert cb.combine([]) == cb.INCONCLUSIVE
    assert cb.point(True) == cb.HELD and cb.point(False) == cb.NOT_HELD
    with pytest.raises(ValueError, match="unknown verdicts"):
        cb.combine(["yes"])


def _claim(**kw):
    return cb.Claim(name="toy", paper="arXiv:0000.00000", statement="s", criterion="gain > 0",
                    run=lambda *a, **k: {}, **kw)


def test_claim_validates_and_seeds_are_checked():
    with pytest.raises(ValueError, match="name"):
        cb.Claim(name="bad name", paper="p", statement="s", criterion="c", run=print)
    with pytest.raises(ValueError, match="criterion is empty"):
        cb.Claim(name="x", paper="p", statement="s", criterion=" ", run=print)
    with pytest.raises(ValueError, match="at least 3 distinct seeds"):
        cb.check_seeds([0, 1])
    with pytest.raises(ValueError, match="at least 3 distinct seeds"):
        cb.check_seeds([0, 0, 1])
    cb.check_seeds([0, 1, 2])
    assert cb.missing_data(_claim(needs_data=("sst2", "trec")), {"sst2": "a.csv"}) == "no trec dataset given"
    assert cb.missing_data(_claim(needs_data=("sst2",)), {"sst2": "a.csv"}) is None


def _result(verdict="held", gains=(0.1, 0.2, 0.3)):
    per_seed = [{"seed": i, "gain": g, "base": 0.5} for i, g in enumerate(gains)]
    return cb.result(_claim(), "m", verdict=verdict, reason="why", per_seed=per_seed, effect="gain", threshold=0.0)


def test_result_summarizes_per_seed_rows():
    res = _result()
    assert res["figures"]["gain"] == pytest.approx(0.2) and res["figures"]["base"] == 0.5
    assert res["ci"]["gain"] == pytest.approx(cb.ci95([0.1, 0.2, 0.3])) and res["n_seeds"] == 3
    assert {"claim", "paper", "statement", "criterion", "verdict", "reason", "figures", "ci", "per_seed", "n_seeds",
            "model", "wall_s"} <= set(res)
    with pytest.raises(ValueError, match="verdict 'maybe'"):
        cb.result(_claim(), "m", verdict="maybe", reason="", per_seed=[])
    empty = cb.inconclusive(_claim(), "m", "no sst2 dataset given")
    assert empty["verdict"] == cb.INCONCLUSIVE and empty["figures"] == {} and empty["n_seeds"] == 0


def test_table_and_figures_from_results():
    results = [_result(), _result("not held", (-0.3, -0.2, -0.1)), cb.inconclusive(_claim(), "m", "no data")]
    text = markdown_table(results, "m")
    assert text.count("| toy |") == 3 and "**not held**" in text and "- toy: no data" in text
    for fig in (forest_figure(results, "m"), per_seed_figure(results[0])):
        assert len(fig.axes) >= 1
        plots.close(fig)


def test_collect_rejects_a_claim_defined_twice():
    assert {"sinks", "retrieval_heads", "head_importance", "path_patching"} <= set(collect(("tasks.claims_core",)))
    with pytest.raises(ValueError, match="defined twice"):
        collect(("tasks.claims_core", "tasks.claims_core"))


@pytest.mark.parametrize("args, message", [
    (["--claims", "sinks,bogus"], "unknown claim(s) bogus; claims: sinks"),
    (["--seeds", "0,1"], "at least 3 distinct seeds"),
    (["--seeds", "0,x,2"], "--seeds '0,x,2': give comma-separated integers"),
    (["--data", "corpus=/no/such/file.txt"], "data 'corpus': /no/such/file.txt does not exist"),
    (["--option", "sinks=1"], "give claim.key=value"),
    (["--option", "sinks.bogus=1"], "options of claim sinks: got an unexpected keyword argument 'bogus'"),
    (["--claims", "path_patching", "--control-model", "x"], "options for 'sinks', which is not among the claims"),
])
def test_cli_rejects_bad_input_before_any_flow_runs(args, message):
    from typer.testing import CliRunner

    from attnflow.cli import app

    out = CliRunner().invoke(app, ["reproduce", "--model", "demo", *args])
    assert out.exit_code == 2, out.output
    assert message in out.output


def test_cli_lists_the_claims_with_their_criteria():
    from typer.testing import CliRunner

    from attnflow.cli import app

    out = CliRunner().invoke(app, ["reproduce", "--list"])
    assert out.exit_code == 0 and "sinks (arXiv:2410.10781)" in out.output and "criterion: Sink_1" in out.output
