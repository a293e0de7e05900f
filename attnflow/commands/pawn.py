"""`attnflow pawn ...`: AI-text detection with PAWN and zero-shot baselines on one frozen backbone.

    attnflow pawn prep SOURCE... [--out data.parquet]          sources -> the prepared Parquet schema
    attnflow pawn features --model M DATA...                   build / resume / verify the feature cache
    attnflow pawn train --model M --train DATA... [--test DATA...] [-d "pawn(seed=1),gltr"]
    attnflow pawn run   --model M --train DATA... [--test DATA...]   train + ONNX export + register (champion)
    attnflow pawn evaluate --model attnflow.pawn.demo-lm DATA... [--groups source]   a trained detector, new data
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

MODEL = typer.Option("demo", "--model", "-m", help="Backbone: hub id, local model directory, or 'demo'.")
TRAIN = typer.Option(..., "--train", help="Training data source (repeatable; a file, hf:<id>, a pair JSON).")
TEST = typer.Option([], "--test", help="Test data source (repeatable); default: a held-out split of --train.")
DETECTORS = typer.Option([], "--detectors", "-d", help="Comma-separated detector specs (default: PAWN + every "
                         "baseline), e.g. 'pawn(seed=1),pawn(lr=0.0005),gltr,binoculars'.")
MAX_LENGTH = typer.Option(512, help="Tokens per text; longer texts are truncated (and flagged).")
BATCH = typer.Option(16, help="Texts per backbone forward.")
PERFORMER = typer.Option(None, help="Binoculars performer (same tokenizer as the backbone; default: the backbone).")
OBSERVER = typer.Option(None, help="Binoculars observer (same tokenizer as the backbone; default: the backbone).")
TARGET_FPR = typer.Option(0.05, help="False-positive rate the decision threshold is calibrated for, on human "
                          "validation texts; test FPR is reported with a 95% interval.")
GROUPS = typer.Option([], "--groups", help="Column(s) for a per-group FPR table: domain, source, generator, group, "
                      "split (repeatable or comma-separated).")
LABEL = typer.Option(None, "--label", help="human or machine: labels every record of sources without a label column.")
GROUP_FIELD = typer.Option("group", help="Field holding a group for per-group FPR (e.g. native / non-native).")
EXPERIMENT = typer.Option("pawn", help="MLflow experiment.")
DTYPE = typer.Option("float32", help="Backbone dtype: float32, bfloat16 or float16.")
VALID_FRAC = typer.Option(0.15, help="Validation fraction (by pair) of sources without a split field.")
TEST_FRAC = typer.Option(0.15, help="Test fraction of sources without a split field (ignored with --test).")
LIMIT = typer.Option(0, help="At most this many records (or pairs) per source; 0 = all.")
TEXT_FIELD = typer.Option("text", help="Field holding the text.")
LABEL_FIELD = typer.Option("label", help="Field holding the label (0/1, human/machine, ai).")
INVERT = typer.Option(False, "--invert-labels", help="The label field says 1 = human (as in MAGE).")
DROP_EMPTY = typer.Option(False, "--drop-empty", help="Drop empty texts instead of failing.")
STRIP = typer.Option(True, "--strip-shared-prefix/--keep-shared-prefix",
                     help="Pair files: cut the prompt words human and machine share (default), or keep them.")


def _prep(valid_frac: float, test_frac: float, limit: int, text_field: str, label_field: str, invert: bool,
          drop_empty: bool, strip: bool, label: Optional[str] = None, group_field: str = "group") -> Any:
    from tasks.pawn_data import DetectionDataError, PrepOptions

    if label is not None and label not in ("human", "machine"):
        raise DetectionDataError(f"--label {label!r} must be human or machine")
    return PrepOptions(valid_frac=valid_frac, test_frac=test_frac, limit_per_source=limit, text_field=text_field,
                       label_field=label_field, invert_labels=invert, drop_empty=drop_empty, strip_shared_prefix=strip,
                       label=label, group_field=group_field)


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


def register(app: typer.Typer) -> None:
    pawn_app = typer.Typer(help="AI-text detection: PAWN heads and zero-shot baselines on a frozen LM's features.",
                           no_args_is_help=True)
    app.add_typer(pawn_app, name="pawn")

    @pawn_app.command("prep")
    def prep(sources: list[str] = typer.Argument(..., help="Data sources."),
             out: Optional[str] = typer.Option(None, help="Output Parquet (default: under ATTNFLOW_HOME/data)."),
             split: str = typer.Option("auto", help="auto, or train/valid/test for every row."),
             valid_frac: float = VALID_FRAC, test_frac: float = TEST_FRAC, limit: int = LIMIT,
             text_field: str = TEXT_FIELD, label_field: str = LABEL_FIELD, invert_labels: bool = INVERT,
             drop_empty: bool = DROP_EMPTY, strip_shared_prefix: bool = STRIP, label: Optional[str] = LABEL,
             group_field: str = GROUP_FIELD) -> None:
        """Turn human/machine text sources into one Parquet file (id, text, label, domain, generator, split,
        source, group); --label human|machine for files without a label column."""
        from attnflow.cli import guarded
        from tasks.pawn_data import prepare_detection_data, source_fingerprints

        opts = guarded(lambda: _prep(valid_frac, test_frac, limit, text_field, label_field, invert_labels,
                                     drop_empty, strip_shared_prefix, label, group_field))
        info = guarded(lambda: prepare_detection_data.fn(
            sources, source_fingerprints(sources), opts.fields(), opts.valid_frac, opts.test_frac, split,
            opts.limit_per_source, opts.invert_labels, opts.drop_empty, opts.strip_shared_prefix, out, opts.label))
        typer.echo(json.dumps({k: info[k] for k in ("path", "fingerprint", "n_rows", "splits", "generators",
                                                    "shared_prefix")}))

    @pawn_app.command("features")
    def features(data: list[str] = typer.Argument(..., help="Data sources or a prepared Parquet file."),
                 model: str = MODEL, max_length: int = MAX_LENGTH, batch_size: int = BATCH,
                 shard_size: int = typer.Option(256, help="Texts per Parquet shard (the unit of resumption)."),
                 performer: Optional[str] = PERFORMER, observer: Optional[str] = OBSERVER,
                 cache_dir: Optional[str] = typer.Option(None, help="Explicit cache directory."),
                 dtype: str = DTYPE, limit: int = LIMIT, text_field: str = TEXT_FIELD,
                 label_field: str = LABEL_FIELD, invert_labels: bool = INVERT, drop_empty: bool = DROP_EMPTY,
                 strip_shared_prefix: bool = STRIP, label: Optional[str] = LABEL,
                 group_field: str = GROUP_FIELD) -> None:
        """Build the feature cache (resumes after an interruption; corrupted shards are rebuilt)."""
        from attnflow.cli import guarded, run_flow
        from tasks.models import check_model
        from tasks.pawn_data import read_sources
        from tasks.pawn_plan import check_options, check_same_tokenizer

        opts = guarded(lambda: _prep(0.15, 0.15, limit, text_field, label_field, invert_labels, drop_empty,
                                     strip_shared_prefix, label, group_field))
        guarded(lambda: (check_options(max_length, batch_size, opts, True), check_model(model),
                         check_same_tokenizer(model, performer, observer), _check_data(data, opts, read_sources)))
        from flows.pawn import pawn_features

        out = run_flow(pawn_features, data=data, model=model, max_length=max_length, batch_size=batch_size,
                       shard_size=shard_size, performer=performer, cache_dir=cache_dir, prep=opts, dtype=dtype,
                       observer=observer)
        typer.echo(json.dumps({k: out[k] for k in ("dir", "key", "n_rows", "n_tokens", "bytes", "n_truncated",
                                                   "computed_shards", "rebuilt_shards")}))

    def _train(flow_name: str, train: list[str], test: list[str], model: str, detectors: list[str],
               max_length: int, batch_size: int, performer: Optional[str], experiment: str, dtype: str,
               opts: Any, observer: Optional[str] = None, target_fpr: float = 0.05,
               groups: Optional[list[str]] = None, **extra: Any) -> dict[str, Any]:
        from attnflow.cli import guarded, print_table, run_flow, split_list
        from flows import pawn as flows_pawn
        from tasks.pawn_data import read_sources
        from tasks.pawn_plan import plan_pawn

        dets = split_list(detectors) or flows_pawn.DEFAULT_DETECTORS
        cols = split_list(groups or [])
        guarded(lambda: (flows_pawn.check_decision_options(target_fpr, cols),
                         plan_pawn.fn(model, dets, train, test, opts, max_length, batch_size, performer,
                                      observer=observer),
                         _check_data(train + test, opts, read_sources)))
        out = run_flow(getattr(flows_pawn, flow_name), train=train, test=test, model=model, detectors=dets,
                       prep=opts, max_length=max_length, batch_size=batch_size, performer=performer,
                       experiment=experiment, dtype=dtype, observer=observer, target_fpr=target_fpr, groups=cols,
                       **extra)
        print_table(out["table"])
        typer.echo(f"MLflow run: {out['run_id']} (experiment '{experiment}')")
        return out

    @pawn_app.command("train")
    def train(train: list[str] = TRAIN, test: list[str] = TEST, model: str = MODEL, detectors: list[str] = DETECTORS,
              max_length: int = MAX_LENGTH, batch_size: int = BATCH, performer: Optional[str] = PERFORMER,
              experiment: str = EXPERIMENT, dtype: str = DTYPE, valid_frac: float = VALID_FRAC,
              test_frac: float = TEST_FRAC, limit: int = LIMIT, text_field: str = TEXT_FIELD,
              label_field: str = LABEL_FIELD, invert_labels: bool = INVERT, drop_empty: bool = DROP_EMPTY,
              strip_shared_prefix: bool = STRIP, observer: Optional[str] = OBSERVER, target_fpr: float = TARGET_FPR,
              groups: list[str] = GROUPS, group_field: str = GROUP_FIELD) -> None:
        """Fit PAWN heads and baselines from one feature cache and compare them (runs the pawn-train flow)."""
        from attnflow.cli import guarded

        opts = guarded(lambda: _prep(valid_frac, test_frac, limit, text_field, label_field, invert_labels,
                                     drop_empty, strip_shared_prefix, None, group_field))
        _train("pawn_train", train, test, model, detectors, max_length, batch_size, performer, experiment, dtype,
               opts, observer, target_fpr, groups)

    @pawn_app.command("run")
    def run(train: list[str] = TRAIN, test: list[str] = TEST, model: str = MODEL, detectors: list[str] = DETECTORS,
            max_length: int = MAX_LENGTH, batch_size: int = BATCH, performer: Optional[str] = PERFORMER,
            experiment: str = EXPERIMENT, dtype: str = DTYPE, valid_frac: float = VALID_FRAC,
            test_frac: float = TEST_FRAC, limit: int = LIMIT, text_field: str = TEXT_FIELD,
            label_field: str = LABEL_FIELD, invert_labels: bool = INVERT, drop_empty: bool = DROP_EMPTY,
            strip_shared_prefix: bool = STRIP, observer: Optional[str] = OBSERVER, target_fpr: float = TARGET_FPR,
            groups: list[str] = GROUPS, group_field: str = GROUP_FIELD,
            out: Optional[str] = typer.Option(None, help="Directory of the exported detector."),
            register_model: bool = typer.Option(True, "--register/--no-register", help="Register in MLflow.")) -> None:
        """End to end: train, evaluate, export the best PAWN head to ONNX, register it (runs the pawn flow)."""
        from attnflow.cli import guarded

        opts = guarded(lambda: _prep(valid_frac, test_frac, limit, text_field, label_field, invert_labels,
                                     drop_empty, strip_shared_prefix, None, group_field))
        res = _train("pawn", train, test, model, detectors, max_length, batch_size, performer, experiment, dtype,
                     opts, observer, target_fpr, groups, register_model=register_model, out=out)
        typer.echo(f"detector: {res['model_dir']}" + (f" (registered {res['registered']} version "
                                                       f"{res['registered_version']}, alias champion)"
                                                       if res["registered"] else ""))

    @pawn_app.command("evaluate")
    def evaluate(data: list[str] = typer.Argument(..., help="Labelled data sources (all used as test data)."),
                 model: str = typer.Option(..., "--model", "-m", help="Registered name[@alias|/version] or a "
                                           "detector directory."),
                 batch_size: int = BATCH, experiment: str = typer.Option("pawn-evaluate", help="MLflow experiment."),
                 dtype: str = DTYPE, limit: int = LIMIT, text_field: str = TEXT_FIELD,
                 label_field: str = LABEL_FIELD, invert_labels: bool = INVERT, drop_empty: bool = DROP_EMPTY,
                 strip_shared_prefix: bool = STRIP, label: Optional[str] = LABEL, target_fpr: float = TARGET_FPR,
                 groups: list[str] = GROUPS, group_field: str = GROUP_FIELD) -> None:
        """Evaluate a trained PAWN detector on new data, labelled or of one class (--label human): metrics that
        need both classes are left out with the reason; FPR per human source and per --groups column."""
        from attnflow.cli import guarded, print_table, run_flow, split_list
        from flows.pawn import check_decision_options
        from tasks.pawn_data import read_sources
        from tasks.pawn_export import resolve_model

        cols = split_list(groups)
        opts = guarded(lambda: _prep(0.0, 0.0, limit, text_field, label_field, invert_labels, drop_empty,
                                     strip_shared_prefix, label, group_field))
        guarded(lambda: (check_decision_options(target_fpr, cols), resolve_model(model),
                         _check_data(data, opts, read_sources)))
        from flows.pawn import pawn_evaluate

        out = run_flow(pawn_evaluate, detector=model, data=data, prep=opts, batch_size=batch_size,
                       experiment=experiment, dtype=dtype, target_fpr=target_fpr, groups=cols)
        print_table(out["table"])
        from tasks.pawn_metrics import summary_line
        from tasks.pawn_train import format_fpr_table

        res = out["result"]
        typer.echo(summary_line(res["fit"]["component"]["label"], res["test"]["metrics"], res["threshold"]))
        for col, table in res["test"]["fpr_by"].items():
            typer.echo(format_fpr_table(table, "human source" if col == "source" else col))

    @pawn_app.command("score")
    def score(files: list[str] = typer.Argument(..., help="txt (one text per paragraph), JSONL, CSV or Parquet "
                                                "files, or '-' for stdin."),
              model: str = typer.Option(..., "--model", "-m", help="Registered name[@alias|/version] or a detector "
                                        "directory."),
              fmt: str = typer.Option("json", "--format", "-f", help="json or csv."),
              out: Optional[str] = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
              text_field: str = TEXT_FIELD, batch_size: int = typer.Option(16, help="Texts per ONNX Runtime batch.")) -> None:
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
