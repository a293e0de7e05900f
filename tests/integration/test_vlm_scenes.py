"""Running a VLM on generated scenes: a tiny random LLaVA with a real LlavaProcessor (CLIP image processor + the
tests' tokenizer with an <image> token). The model is random, so the answers are noise; what is tested is the
plumbing (prompts, batching, patch scopes, VHR's paired decoding) and the scoring, which is checked by hand."""

from __future__ import annotations

import functools

import pytest
import transformers as T

import registry
from components.benchmarks import _scenes
from components.benchmarks.vlm_scenes import answer, score
from components.patches.vhr import VisionAwareHeadReinforcement
from components.patches.visual_boost import VisualLogitBoost
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny import tiny_model, tokenizer
from tests.helpers.tiny_vlm import tiny_vlm


@functools.lru_cache(maxsize=1)
def _setup():
    tok = tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    proc = T.LlavaProcessor(image_processor=T.CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                            image_token="<image>", num_additional_image_tokens=1)
    model = tiny_vlm("llava", image_token=image_id, vocab_size=len(tok))
    return model, proc, _scenes.dataset(5, 3, strategy="adversarial", text_prob=1.0)


def test_answers_with_and_without_patches_and_paired():
    model, proc, rows = _setup()
    plain = answer(model, proc, rows, batch_size=4, max_new_tokens=3)
    assert len(plain) == len(rows) and all(isinstance(p, str) for p in plain)
    # the baseline patch and VHR's paired decoding without a patch leave the image rows' answers unchanged
    assert answer(model, proc, rows, batch_size=4, max_new_tokens=3,
                  patches=[registry.get("baseline").create()]) == plain
    assert answer(model, proc, rows, batch_size=4, max_new_tokens=3, paired=True) == plain
    boosted = answer(model, proc, rows, batch_size=4, max_new_tokens=3,
                     patches=[VisualLogitBoost(selection="all", start_layer=0, alpha=5.0)])
    vhr = answer(model, proc, rows, batch_size=4, max_new_tokens=3, paired=True,
                 patches=[VisionAwareHeadReinforcement(alpha=4.0)])
    assert len(boosted) == len(vhr) == len(rows)
    assert boosted != plain or vhr != plain  # at least one fix changes some greedy answer of this random model
    result = score(rows, plain)
    assert set(result.metrics) >= {"accuracy", "pope_accuracy", "hallucination_rate", "accuracy_count"}


def test_score_by_hand():
    rows = [{"scene_id": 0, "kind": "exists", "question": "q", "answer": "yes"},
            {"scene_id": 0, "kind": "absent", "question": "q", "answer": "no", "strategy": "random"},
            {"scene_id": 1, "kind": "absent", "question": "q", "answer": "no", "strategy": "adversarial"},
            {"scene_id": 1, "kind": "count", "question": "q", "answer": "2"},
            {"scene_id": 1, "kind": "position", "question": "q", "answer": "top left"},
            {"scene_id": 1, "kind": "text", "question": "q", "answer": "CAT"}]
    preds = ["Yes", "yes.", "No, there is not", "2 squares", "top right", "cat!"]
    r = score(rows, preds)
    assert [e["correct"] for e in r.examples] == [True, False, True, True, False, True]
    assert r.metrics["accuracy"] == pytest.approx(4 / 6)
    assert r.metrics["hallucination_rate"] == pytest.approx(1 / 2)
    assert r.metrics["pope_accuracy"] == pytest.approx(2 / 3) and r.metrics["yes_ratio"] == pytest.approx(2 / 3)
    assert r.metrics["pope_precision"] == pytest.approx(1 / 2) and r.metrics["pope_recall"] == 1.0
    assert r.breakdowns["by_strategy"] == [{"strategy": "random", "n": 1, "hallucination_rate": 1.0},
                                           {"strategy": "adversarial", "n": 1, "hallucination_rate": 0.0}]
    with pytest.raises(ValueError, match="2 predictions for 6 rows"):
        score(rows, preds[:2])


def test_bad_template_and_text_models_are_refused():
    model, proc, rows = _setup()
    with pytest.raises(ValueError, match="template needs"):
        answer(model, proc, rows, template="{question}")
    with pytest.raises(ValueError, match="not a supported vision-language decoder"):
        answer(tiny_model("llama"), proc, rows)


def test_scenes_render_at_the_models_input_size_by_default(monkeypatch):
    """image_size 0 draws each scene at the processor's crop size (what train-vlm trains on), not a resized 96 px."""
    from components.benchmarks import vlm_scenes

    model, proc, rows = _setup()
    assert vlm_scenes.processor_size(proc) == 32
    sizes = []
    real = vlm_scenes.row_image
    monkeypatch.setattr(vlm_scenes, "row_image", lambda r, s=96: sizes.append(s) or real(r, s))
    assert answer(model, proc, rows[:2], max_new_tokens=1) == answer(model, proc, rows[:2], image_size=32,
                                                                    max_new_tokens=1)
    assert sizes == [32, 32, 32, 32]
