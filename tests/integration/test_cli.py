"""The CLI: help, the components table, and bad input reported before any flow or model load."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import registry
from attnflow.cli import METHODS_END, METHODS_START, app, families_markdown, methods_markdown

runner = CliRunner()


def test_help_lists_commands():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for cmd in ("components", "evaluate", "compare"):
        assert cmd in out.output


def test_components_table_and_markdown():
    out = runner.invoke(app, ["components"])
    assert out.exit_code == 0 and "zerotuning" in out.output and "arXiv:2505.11739" in out.output
    md = runner.invoke(app, ["components", "--markdown"]).output
    assert "[arXiv:2505.11739](https://arxiv.org/abs/2505.11739)" in md
    show = runner.invoke(app, ["components", "--show", "zerotuning"])
    assert show.exit_code == 0 and "gamma" in show.output and "Deviations" in show.output


@pytest.mark.parametrize("info", registry.all_components(), ids=lambda i: i.ref)
def test_show_prints_every_parameter_with_its_description(info):
    out = runner.invoke(app, ["components", "--show", info.ref])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    for p in info.cls.param_specs():
        assert p.doc and f"{p.name} : {p.type}" in out.output, f"{info.ref}.{p.name}: no entry"
        assert " ".join(p.doc.split()) in text, f"{info.ref}.{p.name}: description not shown"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--component", "nope"], "unknown patch component 'nope'"),
        (["--component", "zerotuning@7"], "has no version '7'"),
        (["--component", "zerotuning", "--param", "gamma=x"], "zerotuning.gamma: 'x' is not a number"),
        (["--component", "zerotuning", "--param", "gamma=0"], "gamma=0.0 is out of range"),
        (["--component", "head_mask", "--param", "heads=9:0"], "9:0 out of range for a model with 2 layers"),
        (["--task", "kv_retrieval", "--task-param", "n_pairs=0"], "n_pairs=0 is out of range"),
        (["--model", "./missing/model"], "model path './missing/model' does not exist"),
        (["--task", "vlm_scenes"], "vlm_scenes acts on images and needs a vision-language model"),
        (["--component", "vhr"], "vhr acts on images and needs a vision-language model"),
    ],
)
def test_bad_input_fails_fast_with_a_named_problem(args, message, tiny_llama_dir):
    argv = ["evaluate", "--model", str(tiny_llama_dir), *args]
    out = runner.invoke(app, argv)
    assert out.exit_code == 2, out.output
    assert message in re.sub(r"\s+", " ", out.output)
    assert "Starting temporary server" not in out.output  # no Prefect flow was started


def test_unsupported_model_class(tmp_path):
    from transformers import MambaConfig

    MambaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path)
    out = runner.invoke(app, ["compare", "--model", str(tmp_path), "-c", "baseline", "-t", "kv_retrieval"])
    assert out.exit_code == 2 and "MambaForCausalLM cannot be patched" in out.output


@pytest.mark.parametrize("doc, render", [("README.md", families_markdown), ("docs/methods.md", methods_markdown)])
def test_methods_tables_are_fresh(doc, render):
    """README's by-family table and docs/methods.md's full table are generated from the registry; regenerate them
    with `attnflow components --update-docs` when this fails."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / doc).read_text()
    assert METHODS_START in text and METHODS_END in text, f"{doc} lacks the methods table markers"
    table = text.split(METHODS_START, 1)[1].split(METHODS_END, 1)[0].strip()
    assert table == render(registry.latest()), f"{doc} methods table is stale: run `attnflow components --update-docs`"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "head search method 'nope' is not a patch that declares a head search; searchable "
                               "patches: act, head_mask, zerotuning"),
        (["--method", "pasta"], "head search method 'pasta' is not a patch that declares a head search"),
        (["--method", "act", "--grid", "gamma=2"], "unknown parameter(s) gamma"),
        (["--method", "zerotuning", "--grid", "gamma=2,0"], "zerotuning.gamma=0.0 is out of range"),
        (["--method", "act", "--task", "perplexity"], "perplexity has no train split"),
    ],
)
def test_head_search_bad_input_fails_fast(args, message, tiny_llama_dir):
    out = runner.invoke(app, ["head-search", "--model", str(tiny_llama_dir), *args])
    assert out.exit_code == 2, out.output
    assert message in re.sub(r"\s+", " ", out.output)
    assert "Starting temporary server" not in out.output


@pytest.mark.parametrize(
    "params, layers, message",
    [
        ({"heads": "0:1"}, "all", "params must not set heads"),
        ({"beta": "2"}, "all", "act.beta=2.0 is out of range"),
        ({}, "7:0", "layers: 7:0 out of range"),
    ],
)
def test_head_search_plan_validates(params, layers, message, tiny_llama_dir):
    from tasks.head_search import plan_search

    with pytest.raises(ValueError, match=re.escape(message)):
        plan_search.fn(str(tiny_llama_dir), "act", "icl_classification", params, layers, "accuracy")
    plan = plan_search.fn(str(tiny_llama_dir), "act", "icl_classification", {"tau": "0.2"}, "1:*", "accuracy")
    assert sorted(plan.candidates.values()) == [[1, 0], [1, 1], [1, 2], [1, 3]]
    assert all("act@1.0.0(" in c and "tau=0.2" in c for c in plan.candidates)


def test_run_prints_the_row_table_a_study_flow_returns(monkeypatch):
    import attnflow.cli

    rows = [{"run": "softmax seed 0", "Sink_1 %": 12.5, "alpha_0": None}, {"run": "sigmoid seed 0", "Sink_1 %": 0.0}]
    monkeypatch.setattr(attnflow.cli, "run_flow", lambda flow, **params: {"verdict": "held", "table": rows})
    out = CliRunner().invoke(app, ["run", "sink-emergence", "--param", "steps=2"])
    assert out.exit_code == 0, out.output
    assert re.search(r"softmax seed 0\s*│\s*12\.5\s*│\s*-", out.output) and "sigmoid seed 0" in out.output
    monkeypatch.setattr(attnflow.cli, "run_flow", lambda flow, **params: {"table": None})  # retrieval-heads can
    assert CliRunner().invoke(app, ["run", "sink-emergence"]).exit_code == 0
