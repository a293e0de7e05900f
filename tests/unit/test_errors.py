"""Errors early and plain (no models, no Prefect server): preset files, retry conditions, the CLI's top-level error
handler and option-named parameter errors."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest
from prefect import Task
from prefect.states import Failed

from flows.params import ComparisonPreset
from registry.specs import SpecError, load_preset
from tasks.retry import is_deterministic, transient

# --- presets --------------------------------------------------------------------------------------------------


def test_preset_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("components:\n  - baseline\n tasks: [kv_retrieval\n")
    with pytest.raises(SpecError, match=r"mine\.yaml, line 3, column 2: YAML syntax error"):
        load_preset(str(bad), ComparisonPreset)


def test_preset_unknown_key_lists_the_valid_ones(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("components: [baseline]\ntask: [kv_retrieval]\n")
    with pytest.raises(SpecError) as e:
        load_preset(str(typo), ComparisonPreset)
    msg = str(e.value)
    assert "typo.yaml" in msg and "unknown key(s) task" in msg
    assert "valid keys: components, dtype, include, model, retrieval, seed, seeds, sinks, tasks" in msg


def test_preset_components_as_a_string_is_an_error(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("components: baseline,zerotuning\ntasks: [kv_retrieval]\n")
    with pytest.raises(SpecError, match=r"flat\.yaml: components: Input should be a valid list"):
        load_preset(str(flat), ComparisonPreset)


@pytest.mark.parametrize("name", ["quickstart", "quickstart-demo"])
def test_shipped_comparison_presets_pass_their_schema(name):
    assert load_preset(name, ComparisonPreset)["components"]


def test_lm_preset_unknown_section_lists_the_valid_ones():
    from components.base import ParamError
    from components.lm.preset import LMPreset

    with pytest.raises(ParamError, match=r"unknown section\(s\) trian; valid: include, mixture, model, train"):
        LMPreset.from_dict("x", {**load_preset("lm/tiny"), "trian": {}})


# --- retries: transient errors only ---------------------------------------------------------------------------


def _retried(exc: BaseException) -> bool:
    return transient(None, None, Failed(data=exc))


def test_missing_perplexity_source_is_not_retried(tmp_path):
    import registry

    bench = registry.get("perplexity", family="benchmark").create({"source": str(tmp_path / "missing.txt")})
    with pytest.raises(Exception) as e:
        bench.build("eval")
    assert not _retried(e.value)


def test_deterministic_errors_are_not_retried_transient_ones_are():
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from components.base import ParamError
    from components.modeling import ModelFileError, ModelNotFoundError
    from components.numerics import NonFiniteLogitsError

    for exc in (ValueError("x"), ParamError("x"), FileNotFoundError("x"), KeyError("x"), TypeError("x"),
                ModelNotFoundError("x"), ModelFileError("x"), NonFiniteLogitsError("x"),
                OfflineModeIsEnabled("offline"), LocalEntryNotFoundError("couldn't connect")):
        assert is_deterministic(exc) and not _retried(exc), exc
    from tasks.tracking import TrackingUnavailable

    for exc in (TrackingUnavailable("MLflow down"), ConnectionResetError("reset"), TimeoutError("slow")):
        assert _retried(exc), exc


def test_every_task_with_retries_retries_only_transient_errors():
    import tasks

    retrying = []
    for mod in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{mod.name}")
        for obj in vars(module).values():
            if isinstance(obj, Task) and obj.fn.__module__ == module.__name__ and obj.retries:
                retrying.append(obj.name)
                assert obj.retry_condition_fn is transient, f"{module.__name__}.{obj.name} retries every error"
    assert {"prepare_data", "load_model", "log_evaluation"} <= set(retrying)


# --- the CLI's top-level handler ------------------------------------------------------------------------------


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    import attnflow.cli as cli

    monkeypatch.setattr(sys, "argv", ["attnflow", *argv])
    monkeypatch.setitem(cli.DEBUG, "on", False)
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def test_unexpected_error_is_one_line_traceback_only_with_debug(monkeypatch, capsys):
    import registry

    def broken(*a, **k):
        raise RuntimeError("registry exploded")

    monkeypatch.setattr(registry, "latest", broken)
    code, out = _main(monkeypatch, capsys, "components")
    assert code == 1
    assert out.startswith("error: RuntimeError: registry exploded") and "Traceback" not in out
    assert "--debug" in out
    import attnflow.cli as cli

    monkeypatch.setattr(sys, "argv", ["attnflow", "--debug", "components"])
    with pytest.raises(RuntimeError, match="registry exploded"):  # --debug: the exception and its traceback
        cli.main()


def test_bad_preset_file_through_the_cli_names_file_and_line(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("components: [baseline\n")
    code, out = _main(monkeypatch, capsys, "compare", "--preset", str(bad))
    assert code == 2 and "bad.yaml, line 2" in out and "Traceback" not in out


@pytest.mark.parametrize("argv, message", [
    (["compare", "--seeds", "a,b"], "--seeds 'a,b': give comma-separated integers"),
    (["evaluate", "--seeds", "1,x"], "--seeds '1,x': give comma-separated integers"),
])
def test_seeds_errors_name_the_option(monkeypatch, capsys, argv, message):
    code, out = _main(monkeypatch, capsys, *argv)
    assert code == 2 and message in out, out


def test_failed_task_logs_lose_their_traceback_on_the_console_unless_debug(monkeypatch):
    import logging

    import prefect  # noqa: F401  (sets up Prefect's logging: its console handler on the root logger)

    import attnflow.cli as cli

    try:
        raise ValueError("bad row")
    except ValueError:
        exc_info = sys.exc_info()

    def record():
        return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed", None, exc_info)

    monkeypatch.setitem(cli.DEBUG, "on", False)
    quiet = record()
    assert cli._NoTraceback().filter(quiet) and quiet.exc_info is None and quiet.getMessage() == "Task run failed"
    monkeypatch.setitem(cli.DEBUG, "on", True)
    loud = record()
    assert cli._NoTraceback().filter(loud) and loud.exc_info is exc_info
    console = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    assert console
    from attnflow.output import console as flow_console

    with flow_console("test", (cli._NoTraceback(),)) as log:  # what run_flow wraps a flow in
        assert all(any(isinstance(f, cli._NoTraceback) for f in h.filters) for h in console)
        logging.getLogger("prefect.attnflow_test").info("into the log file")
    assert not any(isinstance(f, cli._NoTraceback) for h in console for f in h.filters)
    assert "into the log file" in log.read_text()
