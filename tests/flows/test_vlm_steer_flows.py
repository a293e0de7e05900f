"""The flows on the two issue-22 additions, tiny random LLaVA with a real processor: vlm-eval fits ``rep_shift``
(its shift vector, cached by weights and spec) before decoding, and the analysis flow's validation
accepts a vision-language decoder for ``vision_head_importance`` (the analysis itself is tested in
tests/integration/test_vision_head_importance.py). Plumbing only (the model is random)."""

from __future__ import annotations

import pytest

from components.attention.vision import UnsupportedVisionModelError
from tests.helpers.tiny_vlm import save_tiny_llava


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def test_vlm_eval_fits_rep_shift_once_per_weights_and_fit_parameters(llava_dir, monkeypatch):
    from components.patches import rep_shift
    from flows.vlm_eval import vlm_eval

    calls = []
    real = rep_shift.RepShift.fit
    monkeypatch.setattr(rep_shift.RepShift, "fit", lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    comps = ["baseline", "rep_shift(layer=0, n_pairs=2, alpha=0)", "rep_shift(layer=0, n_pairs=2, alpha=40)"]
    state = vlm_eval(model=str(llava_dir), components=comps, tasks=["vlm_scenes(n_scenes=3, max_new_tokens=2)"],
                     experiment="rep-shift-test", batch_size=4, return_state=True)
    assert state.is_completed(), state
    assert len(calls) == 1  # alpha is not a fit parameter: the second spec reads the cached vector
    import mlflow

    from infra.settings import settings

    mlflow.set_tracking_uri(settings().tracking_uri)
    runs = mlflow.search_runs(experiment_names=["rep-shift-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state.result()["run_id"]]
    assert len(children) == 3


def test_analysis_plan_accepts_a_vlm_for_vision_head_importance_only(llava_dir, tiny_llama_dir):
    from tasks.analysis import plan_analysis

    with pytest.raises(UnsupportedVisionModelError, match="is not a vision-language decoder"):
        plan_analysis.fn(str(tiny_llama_dir), "vision_head_importance")
    with pytest.raises(UnsupportedVisionModelError, match="is not a vision encoder"):
        plan_analysis.fn(str(llava_dir), "attention_distance")
    assert plan_analysis.fn(str(llava_dir), "vision_head_importance(n_scenes=2)").startswith("vision_head_importance")
