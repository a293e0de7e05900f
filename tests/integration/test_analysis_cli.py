"""`attnflow analyze` / `attnflow retrieval-heads`: bad input is reported before any flow or model load."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from attnflow.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["analyze", "-a", "nope"], "unknown analyzer component 'nope'"),
        (["analyze", "-a", "sink_metric", "-p", "eps=x"], "sink_metric.eps: 'x' is not a number"),
        (["analyze", "-a", "path_patching", "-p", "receivers=5:0"], "path_patching.receivers: 5:0 out of range"),
        (["analyze", "-a", "head_importance", "-p", "task=kv_retrieval(n_pairs=0)"], "n_pairs=0 is out of range"),
        (["retrieval-heads", "--mask-mode", "half"], "--mask-mode 'half': input should be 'uniform' or 'zero'"),
        (["retrieval-heads", "--top-k", "5"], "top_k=5 leaves fewer than 5 other heads"),
        (["retrieval-heads", "--detect", "lengths=0"], "retrieval_score.lengths=0 is out of range"),
        (["retrieval-heads", "-t", "nope"], "unknown benchmark component 'nope'"),
    ],
)
def test_bad_input_fails_fast(args, message, tiny_llama_dir):
    out = runner.invoke(app, [*args, "--model", str(tiny_llama_dir)])
    assert out.exit_code == 2, out.output
    assert message in re.sub(r"\s+", " ", out.output)
    assert "Starting temporary server" not in out.output


def test_commands_are_listed():
    out = runner.invoke(app, ["--help"]).output
    assert "analyze" in out and "retrieval-heads" in out
