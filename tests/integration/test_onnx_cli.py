"""`attnflow export-onnx` / `attnflow generate`: bad input is reported before any flow or model load."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import registry
from attnflow.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--component", "nope"], "unknown patch component 'nope'"),
        (["--component", "kv_retrieval"], "unknown patch component 'kv_retrieval'"),
        (["--component", "zerotuning", "--param", "gamma=0"], "gamma=0.0 is out of range"),
        (["--component", "head_mask", "--param", "heads=7:0"], "7:0 out of range for a model with 2 layers"),
        (["--optimize", "fast"], "--optimize 'fast': input should be 'none', 'ort-cpu' or 'ort-gpu'"),
        (["--attention-form", "dense"], "--attention-form 'dense': input should be 'bias' or 'channels'"),
        (["--parity-lengths", "1,64"], "parity length(s) [1] outside [2, 512]"),
        (["--parity-lengths", "a"], "--parity-lengths 'a': give comma-separated integers"),
        (["--parity-multiple", "0"], "parity multiple 0.0 must be > 0"),
        (["--opset", "13"], "--opset 13 is not supported: use 18 to 23"),
    ],
)
def test_export_bad_input_fails_fast(args, message, tiny_llama_dir):
    out = runner.invoke(app, ["export-onnx", "--model", str(tiny_llama_dir), *args])
    assert out.exit_code == 2, out.output
    assert message in re.sub(r"\s+", " ", out.output)
    assert "Starting temporary server" not in out.output  # no Prefect flow was started


def test_export_refuses_a_component_that_is_not_exportable(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(registry.get("head_mask").cls, "onnx_exportable", False)
    out = runner.invoke(app, ["export-onnx", "--model", str(tiny_llama_dir), "--component", "head_mask",
                              "--param", "heads=0:1"])
    assert out.exit_code == 2
    assert "head_mask@1.0.0 cannot be exported to ONNX: it declares onnx_exportable = False" in \
        re.sub(r"\s+", " ", out.output)


def test_export_refuses_a_component_that_must_be_fitted(tiny_llama_dir):
    """soft_injection (needs_fit) is refused by its capability attribute before any model load or trace."""
    out = runner.invoke(app, ["export-onnx", "--model", str(tiny_llama_dir), "--component", "soft_injection"])
    assert out.exit_code == 2, out.output
    text = re.sub(r"\s+", " ", out.output)
    assert "soft_injection@1.0.0 cannot be exported to ONNX: it must be fitted" in text
    assert "Starting temporary server" not in out.output and "torch.export" not in out.output


# Every registered patch that cannot be exported, the parameters it needs, and the reason its refusal gives.
REFUSED = {
    "act": ([], "its sink sets are data-dependent"),
    "head_pattern_override": (["--param", "heads=0:1"], "it writes one query row per batch row"),
    "pasta": (["--param", "spans=-12:"], "it reads per-batch inputs (session.set_inputs"),
    "rep_shift": ([], "it adds a fitted shift vector to a decoder layer's output with a module hook"),
    "soft_injection": ([], "it must be fitted on a benchmark's train split (needs_fit)"),
    "var": (["--param", "sink_dims=0"], "it reads image-token positions and hidden states captured outside the graph"),
    "vhr": ([], "it pairs batch rows and reads image-token positions captured outside the graph"),
    "visual_logit_boost": ([], "it reads image-token positions captured from input_ids outside the graph"),
    "wings": ([], "it adds trained modules through forward hooks outside the attention function"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_every_non_exportable_component_is_refused_before_the_model_loads(name):
    """Refused by the validate step, before the model path is even checked (it does not exist here)."""
    params, reason = REFUSED[name]
    out = runner.invoke(app, ["export-onnx", "--model", "./missing/model", "--component", name, *params])
    assert out.exit_code == 2, out.output
    text = re.sub(r"\s+", " ", out.output)
    assert f"{name}@{registry.get(name).version} cannot be exported to ONNX: {reason}" in text
    assert "missing" not in text and "Starting temporary server" not in out.output and "torch.export" not in text


def test_refusals_cover_every_non_exportable_patch():
    from components.onnx.export import NotExportableError, check_exportable

    refused = set()
    for info in registry.latest("patch"):
        try:
            check_exportable([info.cls.__new__(info.cls)])
        except NotExportableError:
            refused.add(info.name)
    assert refused == set(REFUSED)


def test_export_unsupported_model_and_missing_paths(tmp_path):
    from transformers import MambaConfig

    MambaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path / "mamba")
    out = runner.invoke(app, ["export-onnx", "--model", str(tmp_path / "mamba")])
    assert out.exit_code == 2 and "MambaForCausalLM cannot be patched" in out.output
    out = runner.invoke(app, ["export-onnx", "--model", "./missing/model"])
    assert out.exit_code == 2 and "model path './missing/model' does not exist" in out.output


def test_export_refuses_to_overwrite_a_foreign_directory(tiny_llama_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = runner.invoke(app, ["export-onnx", "--model", str(tiny_llama_dir), "--out", str(tmp_path)])
    assert out.exit_code == 2 and "is not an attnflow export directory" in re.sub(r"\s+", " ", out.output)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--onnx", "/nonexistent/dir", "--prompt", "hi"], "--onnx '/nonexistent/dir' is not a directory"),
        (["--onnx", ".", "--prompt", "hi", "--provider", "tpu"], "--provider 'tpu' is not one of cpu, cuda"),
        (["--onnx", ".", "--prompt", "hi", "--sample", "--temperature", "0"], "--temperature 0.0 must be > 0"),
        (["--onnx", ".", "--prompt", "hi"], "holds no model.onnx"),
    ],
)
def test_generate_bad_input(args, message):
    out = runner.invoke(app, ["generate", *args])
    assert out.exit_code == 2, out.output
    assert message in re.sub(r"\s+", " ", out.output)
