"""Errors early and plain: parameter checks before any Prefect server starts, unreadable weights named, an
unreachable hub reported in one try."""

from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

from attnflow.cli import app

runner = CliRunner()


@pytest.fixture
def no_prefect_server(monkeypatch):
    """Fail the test if anything starts Prefect's temporary server (the CLI must fail before it)."""
    from prefect.server.api import server

    def refuse(*a, **k):
        raise AssertionError("a Prefect server was started")

    monkeypatch.setattr(server.SubprocessASGIServer, "start", refuse)


@pytest.mark.parametrize("argv, message", [
    (["compare", "--batch-size", "0"], "--batch-size 0: input should be greater than or equal to 1"),
    (["compare", "--dtype", "float99"], "--dtype 'float99': input should be 'float32', 'bfloat16' or 'float16'"),
    (["evaluate", "--batch-size", "0", "--dtype", "float99"], "--batch-size 0: input should be greater than or "
                                                              "equal to 1; --dtype 'float99'"),
    (["run", "compare", "--param", "batch_size=0"], "--param batch_size 0: input should be greater than"),
    (["analyze", "--dtype", "float99"], "--dtype 'float99'"),
])
def test_flow_parameter_errors_fail_before_any_server_naming_the_option(argv, message, tiny_llama_dir,
                                                                        no_prefect_server):
    if argv[0] != "run":
        argv = [*argv, "--model", str(tiny_llama_dir)]
    out = runner.invoke(app, argv)
    assert out.exit_code == 2, out.output
    assert message in re.sub(r"\s+", " ", out.output)


def test_preset_with_components_as_a_string_fails_before_any_server(tmp_path, tiny_llama_dir, no_prefect_server):
    preset = tmp_path / "mine.yaml"
    preset.write_text("components: baseline,zerotuning(gamma=2)\ntasks: [kv_retrieval]\n")
    out = runner.invoke(app, ["compare", "--model", str(tiny_llama_dir), "--preset", str(preset)])
    assert out.exit_code == 2, out.output
    assert "mine.yaml: components: Input should be a valid list" in re.sub(r"\s+", " ", out.output)


def test_truncated_safetensors_names_the_file(tmp_path):
    from components import modeling
    from tests.helpers.tiny import save_tiny

    model_dir = save_tiny(tmp_path / "m", "llama")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(modeling.ModelFileError, match=re.escape(str(weights)) + r".*truncated or corrupt"):
        modeling.load_model(str(model_dir))


def test_unreachable_hub_fails_once_without_retries(monkeypatch):
    """huggingface_hub retries a network error 5 times (~25 s); attnflow asks once and says what happened."""
    from huggingface_hub import constants

    from components import modeling
    from infra.stack import free_port

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(modeling.ModelNotFoundError, match=r"'someorg/no-such-model'.*did not answer"):
        modeling.load_config("someorg/no-such-model")
    assert time.monotonic() - start < 5
