"""The train-vlm recipe on a tiny model: a LLaVA built around a tiny random Llama (its weights copied exactly),
two stages with the language model frozen, held-out target loss lower after each stage, saved as safetensors with
a model card and processor, and loadable by the vlm-eval loader (tasks/vlm.py) and benchmark."""

from __future__ import annotations

import torch

import registry
from components import vlm_train as vt
from tasks.vlm import check_vision, load_vlm
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny import tiny_model, tokenizer

SIZE = 32


def test_caption_lists_objects_and_word():
    scene = {"objects": [{"colour": "red", "shape": "circle", "cell": 4},
                         {"colour": "orange", "shape": "square", "cell": 0}], "text": {"word": "CAT"}}
    assert vt.caption(scene) == "An orange square at the top left, a red circle at the centre. The word CAT."


def test_two_stages_lower_the_held_out_loss_and_save_a_loadable_model(tmp_path):
    lm, tok = tiny_model("llama"), tokenizer()
    model, proc = vt.build_llava(lm, tok, image_size=SIZE, patch_size=8, vision_hidden=32, vision_layers=2,
                                 vision_heads=2)
    ids = torch.tensor([[5, 17, 40, 3]])
    with torch.no_grad():
        want = lm(input_ids=ids).logits  # (1, 4, V_lm)
        assert torch.equal(model(input_ids=ids).logits[..., : want.shape[-1]], want)
    lm_before = {k: v.clone() for k, v in model.model.language_model.state_dict().items()}
    vision_before = model.model.vision_tower.state_dict()["embeddings.patch_embedding.weight"].clone()
    for stage, steps in (("align", 30), ("instruct", 20)):
        rows, held = vt.stage_rows(stage, 0, 24), vt.stage_rows(stage, 99, 6)
        before = vt.loss_on(model, proc, held, SIZE)
        losses = vt.train_stage(model, proc, rows, steps=steps, batch_size=8, lr=3e-3, image_size=SIZE)
        assert len(losses) == steps
        assert vt.loss_on(model, proc, held, SIZE) < before, stage
    after = model.model.language_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in lm_before.items())  # the LM stayed frozen
    assert not torch.equal(model.model.vision_tower.state_dict()["embeddings.patch_embedding.weight"],
                           vision_before)
    out = vt.save(model, proc, tmp_path / "vlm", {"stages": ["align", "instruct"]})
    assert (out / "model.safetensors").is_file() and "train-vlm recipe" in (out / "README.md").read_text()
    check_vision(str(out))
    loaded = load_vlm.fn(str(out))
    assert all(torch.equal(p, q) for p, q in zip(loaded.model.state_dict().values(), model.state_dict().values()))
    bench = registry.get("vlm_scenes").create({"n_scenes": "2", "image_size": str(SIZE), "max_new_tokens": "2"})
    result = bench.evaluate(loaded.model, loaded.tokenizer, bench.build("eval"))
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and "hallucination_rate" in result.metrics
