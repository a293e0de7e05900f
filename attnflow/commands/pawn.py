"""`attnflow pawn ...`: AI-text detection with PAWN and zero-shot baselines on one frozen backbone.

    attnflow pawn prep SOURCE... [--out data.parquet]          sources -> the prepared Parquet schema
    attnflow pawn features --model M DATA...                   build / resume / verify the feature cache
    attnflow pawn train --model M --train DATA... [--test DATA...] [-d "pawn(seed=1),gltr"]
    attnflow pawn run   --model M --train DATA... [--test DATA...]   train + ONNX export + register (champion)
    attnflow pawn evaluate --detector attnflow.pawn.demo-lm DATA... [--groups source]   a trained detector, new data

features, train, run and evaluate are generated from the flows pawn-features, pawn-train, pawn and pawn-evaluate
(``attnflow.flowcli``): their options are the flows' parameters, the fields of ``PrepOptions`` among them.
    attnflow pawn score --model attnflow.pawn.demo-lm FILE... [--format json|csv] [--out scores.json]
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from attnflow.flowcli import Call, flow_group, lazy_flow_command

def _records(files: list[str], text_field: str) -> tuple[list[str], list[str]]:
    """Texts and ids to score from txt (one text per paragraph) / JSONL / CSV / Parquet files, or '-' (stdin)."""
    from components import data as data_sources
    from components.detectors.base import FeatureError

    texts, ids = [], []
    for f in files:
        if f == "-":
            rows = [{"text": p.strip()} for p in sys.stdin.read().split("\n\n") if p.strip()]
        else:
            rows = data_sources.read_records(f)
        if rows and text_field not in rows[0]:
            raise data_sources.DataSourceError(f"{f}: records have no field {text_field!r} (set --text-field)")
        for i, r in enumerate(rows):
            text = r.get(text_field)
            name = str(r.get("id") or f"{Path(f).name}:{i}")
            if not isinstance(text, str) or not text.strip():
                raise FeatureError(f"{name}: empty text; remove it before scoring")
            texts.append(text)
            ids.append(name)
    if not texts:
        raise ValueError("no texts to score")
    return texts, ids


def _write(rows: list[dict[str, Any]], fmt: str, out: Optional[str]) -> None:
    if fmt == "json":
        text = json.dumps(rows, indent=1)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out:
        Path(out).write_text(text)
        typer.echo(f"wrote {len(rows)} scores to {out}", err=True)
    else:
        typer.echo(text)


# --- the commands generated from the pawn flows: checks before any server, and what they print ----------------

def _run_prep(call: Call) -> dict[str, Any]:
    """``pawn prep`` runs the prep task in this process (no Prefect server): sources -> one Parquet file."""
    from tasks.pawn_data import prepare_detection_data, source_fingerprints

    p, opts = call.params, call.params["prep"]
    return prepare_detection_data.fn(p["sources"], source_fingerprints(p["sources"]), opts.fields(), opts.valid_frac,
                                     opts.test_frac, p["split"], opts.limit_per_source, opts.invert_labels,
                                     opts.drop_empty, opts.strip_shared_prefix, p["out"], opts.label)


def _show_prep(info: dict[str, Any], call: Call) -> None:
    typer.echo(json.dumps({k: info[k] for k in ("path", "fingerprint", "n_rows", "splits", "generators",
                                                "shared_prefix")}))


def _check_features(call: Call) -> None:
    from tasks.models import check_model
    from tasks.pawn_data import read_sources
    from tasks.pawn_plan import check_options, check_same_tokenizer

    p = call.params
    check_options(p["max_length"], p["batch_size"], p["prep"], True)
    check_model(p["model"])
    if p["performer"]:
        check_model(p["performer"])
    check_same_tokenizer(p["model"], p["performer"], p["observer"])  # before any weights are read
    _check_data(p["data"], p["prep"], read_sources)


def _show_features(out: dict[str, Any], call: Call) -> None:
    typer.echo(json.dumps({k: out[k] for k in ("dir", "key", "n_rows", "n_tokens", "bytes", "n_truncated",
                                               "computed_shards", "rebuilt_shards")}))


def _check_train(call: Call) -> None:
    from tasks.pawn_data import read_sources
    from flows.pawn import check_decision_options
    from tasks.pawn_plan import plan_pawn

    p = call.params
    check_decision_options(p["target_fpr"], p["groups"])
    plan_pawn.fn(p["model"], p["detectors"], p["train"], p["test"], p["prep"], p["max_length"], p["batch_size"],
                 p["performer"], observer=p["observer"])
    _check_data(p["train"] + p["test"], p["prep"], read_sources)


def _show_train(out: dict[str, Any], call: Call) -> None:
    from attnflow.cli import show_result

    show_result({**out, "experiment": call.params["experiment"]}, call)


def _show_run(out: dict[str, Any], call: Call) -> None:
    _show_train(out, call)
    typer.echo(f"detector: {out['model_dir']}" + (f" (registered {out['registered']} version "
                                                   f"{out['registered_version']}, alias champion)"
                                                   if out["registered"] else ""))


def _check_evaluate(call: Call) -> None:
    from tasks.pawn_data import read_sources
    from flows.pawn import check_decision_options
    from tasks.pawn_export import resolve_model

    check_decision_options(call.params["target_fpr"], call.params["groups"])
    resolve_model(call.params["detector"])
    _check_data(call.params["data"], call.params["prep"], read_sources)


def _show_evaluate(out: dict[str, Any], call: Call) -> None:
    """The table, then the summary line (with the reasons for omitted metrics) and the FPR tables per human source
    and per ``--groups`` column."""
    from tasks.pawn_metrics import summary_line
    from tasks.pawn_train import format_fpr_table

    _show_train(out, call)
    res = out["result"]
    typer.echo(summary_line(res["fit"]["component"]["label"], res["test"]["metrics"], res["threshold"]))
    for col, table in res["test"]["fpr_by"].items():
        typer.echo(format_fpr_table(table, "human source" if col == "source" else col))


def register(app: typer.Typer) -> None:
    pawn_app = typer.Typer(help="AI-text detection: PAWN heads and zero-shot baselines on a frozen LM's features.",
                           no_args_is_help=True, cls=flow_group("pawn"))
    app.add_typer(pawn_app, name="pawn")

    lazy_flow_command("prep", "flows.pawn:pawn_prep", lambda: {
        "arguments": ("sources",), "run": _run_prep, "show": _show_prep}, group="pawn")
    lazy_flow_command("features", "flows.pawn:pawn_features", lambda: {
        "arguments": ("data",), "prepare": _check_features, "show": _show_features}, group="pawn")
    lazy_flow_command("train", "flows.pawn:pawn_train", lambda: {"prepare": _check_train, "show": _show_train},
                      group="pawn")
    lazy_flow_command("run", "flows.pawn:pawn", lambda: {"prepare": _check_train, "show": _show_run}, group="pawn")
    lazy_flow_command("evaluate", "flows.pawn:pawn_evaluate", lambda: {
        "arguments": ("data",), "prepare": _check_evaluate, "show": _show_evaluate}, group="pawn")

    @pawn_app.command("score")
    def score(files: list[str] = typer.Argument(..., help="txt (one text per paragraph), JSONL, CSV or Parquet "
                                                "files, or '-' for stdin."),
              model: str = typer.Option(..., "--model", "-m", help="Registered name[@alias|/version] or a detector "
                                        "directory."),
              fmt: str = typer.Option("json", "--format", "-f", help="json or csv."),
              out: Optional[str] = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
              text_field: str = typer.Option("text", help="Field holding the text."),
              batch_size: int = typer.Option(16, help="Texts per ONNX Runtime batch.")) -> None:
        """Score texts with the exported ONNX graphs in ONNX Runtime: score (0..1), label (machine|human)."""
        from attnflow.cli import fail, guarded
        from tasks.pawn_export import OnnxScorer, resolve_model

        if fmt not in ("json", "csv"):
            fail(f"--format {fmt!r} must be json or csv")
        if batch_size < 1:
            fail(f"--batch-size {batch_size} must be at least 1")
        model_dir = guarded(lambda: resolve_model(model))
        texts, ids = guarded(lambda: _records(files, text_field))
        scorer = OnnxScorer(model_dir)
        scored = guarded(lambda: scorer.score(texts, ids, batch_size))
        _write([{"id": i, **s} for i, s in zip(ids, scored)], fmt, out)


def _check_data(sources: list[str], opts: Any, read_sources: Any) -> None:
    """Prepared Parquet files pass as they are; other sources are read once to report bad input early."""
    from tasks.pawn_data import read_prepared, source_fingerprints

    source_fingerprints(sources)
    for s in sources:
        if s.endswith(".parquet"):
            try:
                read_prepared(s)
                continue
            except ValueError:
                pass
        read_sources([s], fields=opts.fields(), valid_frac=opts.valid_frac, test_frac=opts.test_frac,
                     limit_per_source=opts.limit_per_source, invert_labels=opts.invert_labels,
                     drop_empty=opts.drop_empty, strip_shared_prefix=opts.strip_shared_prefix, label=opts.label)
