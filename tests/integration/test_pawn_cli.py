"""`attnflow pawn ...`: bad input is reported before any flow starts or any model loads."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from attnflow.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pawn-cli")
    (d / "ok.jsonl").write_text("\n".join(json.dumps({"text": f"text number {i}", "label": i % 2}) for i in range(8)))
    (d / "labels.jsonl").write_text('{"text": "a", "label": "human"}\n{"text": "b", "label": "robot"}\n')
    return d


@pytest.mark.parametrize("args, message", [
    (["train", "--train", "{d}/labels.jsonl"], "'robot' (row 1)"),
    (["train", "--train", "{d}/ok.jsonl", "-d", "pawn(gates=3)"], "pawn.gates=3 must divide pawn.features=256"),
    (["train", "--train", "{d}/ok.jsonl", "-d", "nope"], "unknown detector component 'nope'"),
    (["train", "--train", "{d}/missing.jsonl"], "data source '{d}/missing.jsonl' does not exist"),
    (["train", "--train", "{d}/ok.jsonl", "--max-length", "1"], "max_length=1 must be at least 2"),
    (["run", "--train", "{d}/ok.jsonl", "--test-frac", "0"], "no test data"),
    (["features", "{d}/ok.jsonl", "--model", "./missing/model"], "model path './missing/model' does not exist"),
    (["evaluate", "{d}/ok.jsonl", "--detector", "attnflow.pawn.nothing"], "neither a PAWN detector directory"),
    (["score", "{d}/ok.jsonl", "--model", "{d}"], "is not a PAWN detector directory (no pawn.json)"),
    (["score", "{d}/ok.jsonl", "--model", "{d}", "--format", "xml"], "--format 'xml' must be json or csv"),
])
def test_bad_input_fails_fast(args, message, files, tiny_llama_dir):
    argv = ["pawn"] + [a.format(d=files) for a in args]
    if argv[1] in ("train", "run", "features"):
        argv += ["--model", str(tiny_llama_dir)] if "--model" not in argv else []
    out = runner.invoke(app, argv)
    assert out.exit_code == 2, out.output
    assert message.format(d=files) in re.sub(r"\s+", " ", out.output)
    assert "Starting temporary server" not in out.output


def test_prep_writes_the_schema_without_a_flow(files):
    out = runner.invoke(app, ["pawn", "prep", str(files / "ok.jsonl"), "--out", str(files / "p.parquet")])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["n_rows"] == 8 and pq.read_schema(files / "p.parquet").names == [
        "id", "text", "label", "domain", "generator", "split", "source", "group"]
    assert "Starting temporary server" not in out.output
