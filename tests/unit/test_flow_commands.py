"""Flows are the single definition of their parameters: every generated command is derived from its flow (option
set, defaults, help text), short flags mean one thing across commands, flow = command = deployment name, and
prefect.yaml carries only overrides. Also the console output helpers (tables fitted to the terminal, quiet logs)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from attnflow.cli import app
from attnflow.flowcli import GENERATED, LAZY, load

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {("", n) for n in ("compare", "evaluate", "quickstart", "analyze", "retrieval-heads", "head-search",
                             "export-onnx", "report", "reproduce", "train-lm", "sink-emergence", "arch-compare",
                             "instability-proxies", "icl-linear", "icl-softmax-heads", "homeostasis")}
EXPECTED |= {("", n) for n in ("vlm-eval", "train-vlm", "uncertainty")}
EXPECTED |= {("", n) for n in ("generate-images", "inpaint", "train-t2i")}
EXPECTED |= {("pawn", n) for n in ("prep", "features", "train", "run", "evaluate")}


def _expected_option(name: str, schema: dict) -> str:
    kind = next(s for s in schema.get("anyOf", [schema]) if s.get("type") != "null")["type"]
    stem = name[:-1] if kind == "object" and name.endswith("s") else name
    return "--" + stem.replace("_", "-")


def test_the_commands_that_mirror_a_flow_are_generated_from_it():
    assert EXPECTED <= set(LAZY), sorted(EXPECTED - set(LAZY))
    assert all(LAZY[k].group or LAZY[k].flow_names == (k[1],) for k in LAZY)


def _expected(flow) -> dict[str, dict]:
    """Flow parameter schemas by the command's parameter name; a pydantic-model parameter's fields as
    ``<param>__<field>`` (each its own option)."""
    out = {}
    for param, s in flow.parameters.properties.items():
        ref = s.get("$ref") or next((a.get("$ref") for a in s.get("allOf", [])), None)
        if ref:
            fields = flow.parameters.definitions[ref.rsplit("/", 1)[-1]]["properties"]
            out.update({f"{param}__{f}": {**fs, "_name": f} for f, fs in fields.items()})
        else:
            out[param] = {**s, "_name": param}
    return out


@pytest.mark.parametrize("group, name", sorted(EXPECTED))
def test_command_matches_its_flow(group, name):
    """Same option set, option names from the parameter names, help = the flow's parameter description (the text
    the Prefect UI shows), defaults = the flow's defaults."""
    command = load(name, group)
    flow = LAZY[(group, name)].flow
    assert flow.name == (name if not group else f"{group}-{name}" if name != "run" else group)
    schema = _expected(flow)
    options = {p.name: p for p in command.params if p.name in schema}
    assert set(options) == set(schema), f"{name}: options {sorted(options)} vs flow parameters {sorted(schema)}"
    for param, s in schema.items():
        opt = options[param]
        if opt.param_type_name == "argument":
            continue
        assert _expected_option(s["_name"], s) in opt.opts, (name, param, opt.opts)
        description = " ".join(s.get("description", "").split())
        assert description, f"flow {name!r} documents no parameter {param!r} (its docstring's Args: section)"
        assert opt.help.replace("\\[", "[").startswith(description), (name, param, opt.help)
        default = s.get("default")
        if isinstance(default, bool):
            assert opt.default is default, (name, param)
        elif isinstance(default, list) and default:
            assert opt.default == [",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in default)]
        elif default not in (None, {}, []):
            assert opt.default == default, (name, param, opt.default, default)
        if "enum" in s:
            assert opt.metavar == "|".join(s["enum"])


def test_short_flags_mean_one_thing_across_commands():
    meanings: dict[str, set[str]] = {}

    def walk(group, path=""):
        for cname, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{path}{cname} ")
                continue
            for p in cmd.params:
                longs = [o for o in p.opts if o.startswith("--")]
                for short in (o for o in p.opts if re.fullmatch(r"-\w", o)):
                    meanings.setdefault(short, set()).add(longs[0].rstrip("s") if longs else p.name)

    root = typer.main.get_command(app)
    for group, name in LAZY:
        (root.commands[group] if group else root).commands[name] = load(name, group)
    walk(root)
    clashes = {s: m for s, m in meanings.items() if len(m) > 1}
    assert not clashes, clashes


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _flow_of(entrypoint: str):
    import importlib

    path, fn = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), fn)


def test_every_flow_has_a_command_of_its_name():
    """Each flow of flows/ is reachable as ``attnflow <flow name>`` (or ``attnflow pawn <step>`` for the pawn-*
    flows), generated from it."""
    import importlib
    import pkgutil

    from prefect import Flow

    import flows

    names = {c.flow_names[0] for c in LAZY.values()}
    found = set()
    for mod in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"flows.{mod.name}")
        found |= {v.name for v in vars(module).values() if isinstance(v, Flow) and v.__module__ == module.__name__}
    assert found, "no flows found"
    assert not found - names, f"flows without a command: {sorted(found - names)}"


def test_flow_command_and_deployment_share_one_name():
    by_flow: dict[str, list[str]] = {}
    for d in _deployments():
        by_flow.setdefault(_flow_of(d["entrypoint"]).name, []).append(d["name"])
    for flow_name, names in by_flow.items():
        assert flow_name in names, f"flow {flow_name!r} is deployed only as {names}: name one deployment after it"
    for group, name in LAZY:
        assert group or name in by_flow, f"command {name!r} has no deployment named after its flow"


def test_prefect_yaml_carries_only_overrides():
    """An unscheduled deployment's parameters differ from the flow's defaults (a scheduled one may pin them)."""
    import inspect

    for d in _deployments():
        if d.get("schedules"):
            continue
        defaults = {k: p.default for k, p in inspect.signature(_flow_of(d["entrypoint"]).fn).parameters.items()}
        restated = {k: v for k, v in (d.get("parameters") or {}).items() if defaults.get(k) == v}
        assert not restated, f"deployment {d['name']!r} restates flow defaults {restated}"
        assert "description" not in d or d["name"] != _flow_of(d["entrypoint"]).name, \
            f"deployment {d['name']!r}: its description is the flow's docstring"


def test_run_accepts_the_old_export_flow_name(monkeypatch):
    import attnflow.cli

    seen = {}
    monkeypatch.setattr(attnflow.cli, "run_flow", lambda flow, **params: seen.setdefault("flow", flow.name))
    out = CliRunner().invoke(app, ["run", "export", "--param", "kv_cache=true"])
    assert out.exit_code == 0, out.output
    assert seen["flow"] == "export-onnx" and "now 'export-onnx'" in out.output


def test_options_left_out_are_not_passed_and_given_ones_are_converted(monkeypatch):
    import attnflow.cli

    seen = {}

    def fake(flow, checked=False, **params):
        seen.update(params)
        return {"table": None}

    monkeypatch.setattr(attnflow.cli, "run_flow", fake)
    monkeypatch.setattr("tasks.plan.plan_request.fn", lambda *a, **k: None)
    out = CliRunner().invoke(app, ["compare", "-c", "baseline,zerotuning(gamma=2, heads=0:1)", "-c", "act",
                                   "--seeds", "0,1", "--no-progress"])
    assert out.exit_code == 0, out.output
    assert seen["components"] == ["baseline", "zerotuning(gamma=2, heads=0:1)", "act"]
    assert seen["seeds"] == [0, 1] and seen["progress"] is False
    assert seen["tasks"] == GENERATED["compare"].parameters.properties["tasks"]["default"]


def test_the_command_list_needs_no_flow_import():
    """`attnflow --help` reads each flow's summary from its source: no torch import, well under a second."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from attnflow.cli import app; "
            "out = CliRunner().invoke(app, ['--help']).output; "
            "print('export-onnx' in out, 'torch' in sys.modules, 'flows.compare' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["True", "False", "False"], res.stdout + res.stderr


# --- output ----------------------------------------------------------------------------------------------------

def _table(n_cols: int, n: int = 2) -> dict:
    cols = [f"kv_retrieval(n_pairs={i})/accuracy" for i in range(n_cols)]
    rows = ["baseline", "head_pattern_override(heads=0:1)"]
    cells = {r: {c: {"mean": 0.5, "std": 0.01, "n": n} for c in cols} for r in rows}
    return {"title": "compare: demo-lm", "rows": rows, "columns": cols, "cells": cells,
            "higher_is_better": {c: True for c in cols}, "versions": {r: "1.0.0" for r in rows}}


def test_wide_table_is_split_into_column_groups_without_splitting_names(monkeypatch, capsys):
    from rich.console import Console

    from attnflow import output

    narrow = Console(width=90, force_terminal=True)
    monkeypatch.setattr("rich.console.Console", lambda *a, **k: narrow)
    output.print_table(_table(6), Path("/tmp/full.md"))
    text = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert max(len(line) for line in text.splitlines()) <= 90
    assert text.count("head_pattern_override(heads=0:1)") >= 2  # every group repeats the names, whole
    assert all(f"kv_retrieval(n_pairs={i})/accuracy" in text for i in range(6))
    assert "± = standard deviation over seeds" in text and "full table: /tmp/full.md" in text


def test_column_groups_fill_the_width():
    assert output_groups([10, 10, 10, 10], fixed=20, total=45) == [[0, 1], [2, 3]]
    assert output_groups([50, 5], fixed=20, total=45) == [[0], [1]]  # too wide alone: a group of its own


def output_groups(widths, fixed, total):
    from attnflow.output import column_groups

    return column_groups(widths, fixed, total)


def test_caption_only_when_a_cell_has_a_spread():
    from attnflow.output import table_caption

    assert table_caption(_table(1, n=1)) is None
    assert table_caption({**_table(1), "spread": "standard deviation over random head draws"}) == \
        "± = standard deviation over random head draws"


def test_console_hides_prefect_info_but_keeps_prints_and_warnings(monkeypatch):
    import prefect

    from attnflow import output

    monkeypatch.setitem(output.VERBOSE, "on", False)
    inside = str(Path(prefect.__file__).parent / "engine.py")

    def rec(path, level=logging.INFO, **extra):
        r = logging.LogRecord("prefect.flow_runs", level, path, 1, "msg", None, None)
        r.__dict__.update(extra)
        return r

    f = output.QuietPrefect()
    assert not f.filter(rec(inside))  # "Finished in state Completed()"
    assert f.filter(rec(inside, logging.WARNING))
    assert f.filter(rec(str(ROOT / "flows" / "compare.py")))  # a flow's print()
    task_print = rec(str(ROOT / "tasks" / "evaluate.py"))
    task_print.name = "prefect.task_runs"
    assert not f.filter(task_print)
    assert not f.filter(rec(str(ROOT / "flows" / "compare.py"), attnflow_table=True))
    assert not f.filter(rec(str(ROOT / "tasks" / "report.py"), attnflow_link=True))  # the CLI prints the link
    monkeypatch.setitem(output.VERBOSE, "on", True)
    assert f.filter(rec(inside)) and f.filter(rec(inside, attnflow_table=True))


def test_up_links_the_mlflow_runs_table(tmp_path):
    """`attnflow up` prints an address that opens a runs table (``#/experiments/<id>/runs``), not an experiment's
    overview tab; with no experiment yet, the experiments list."""
    from mlflow.tracking import MlflowClient

    from attnflow.output import runs_table_url

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert runs_table_url(store) == f"{store}/#/experiments"
    client = MlflowClient(tracking_uri=store)
    other = client.create_experiment("analyze", artifact_location=(tmp_path / "a").as_uri())
    assert runs_table_url(store) == f"{store}/#/experiments/{other}/runs"
    compare = client.create_experiment("compare", artifact_location=(tmp_path / "c").as_uri())
    assert runs_table_url(store) == f"{store}/#/experiments/{compare}/runs"
    assert runs_table_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/#/experiments"  # unreachable: the list


def test_every_command_shows_its_help():
    """`attnflow <command> --help` renders for every command and sub-command (help text is rich markup: a literal
    ``[/NAME]`` once made `attnflow up --help` fail)."""
    root = typer.main.get_command(app)
    paths = []
    for name, cmd in root.commands.items():
        paths += [[name, sub] for sub in cmd.commands] if hasattr(cmd, "commands") else [[name]]
    paths += [[group, name] if group else [name] for group, name in LAZY]
    runner = CliRunner()
    failed = {}
    for path in paths:
        res = runner.invoke(app, [*path, "--help"])
        if res.exit_code != 0 or "Usage" not in res.output:
            failed[" ".join(path)] = res.output[-300:]
    assert not failed, failed
