"""Image metrics and the image cache of the generate-images / inpaint flows: masked-region fidelity against a hand
computation, CLIP score against the model's towers run by hand, metric hooks (skipped with a message when absent),
and the cache (round trip, other inputs never served, damaged entries refused)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from components.diffusion import image_metrics
from tasks import image_cache


def _img(arr) -> Image.Image:
    return Image.fromarray(np.asarray(arr, dtype=np.uint8))


def test_masked_fidelity_is_mse_and_psnr_outside_the_mask():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (6, 6, 3))
    out = src.copy()
    out[1:3, 1:3] = 0  # inside the mask: ignored
    out[5, 5] = (src[5, 5] + 40) % 256  # outside: counted
    mask = np.zeros((6, 6))
    mask[1:3, 1:3] = 255
    got = image_metrics.masked_fidelity(_img(out), _img(src), _img(mask).convert("L"))
    keep = mask < 128
    mse = (((out.astype(float) - src) / 255.0)[keep] ** 2).mean()
    assert got["known_mse"] == pytest.approx(mse, rel=1e-12)
    assert got["known_psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
    same = image_metrics.masked_fidelity(_img(src), _img(src), _img(mask).convert("L"))
    assert same["known_mse"] == 0.0 and math.isinf(same["known_psnr"])
    assert image_metrics.masked_fidelity(_img(src), _img(src), _img(np.full((6, 6), 255)).convert("L")) == {}


def test_hooks_resolve_skip_and_prefix():
    hooks, skipped = image_metrics.resolve_hooks(["tests.helpers.t2i_folder:mean_red", "nope_mod:f",
                                                  "tests.helpers.t2i_folder:missing"])
    assert list(hooks) == ["mean_red"]
    assert skipped == ["metric 'nope_mod:f' skipped: module nope_mod is not available",
                       "metric 'tests.helpers.t2i_folder:missing' skipped: tests.helpers.t2i_folder has no "
                       "function missing"]
    red = np.zeros((2, 2, 3))
    red[..., 0] = 255
    assert image_metrics.run_hooks(hooks, _img(red), "a b") == {"mean_red/mean_red": 1.0, "mean_red/words": 2.0}
    with pytest.raises(ValueError, match="not one of \\['shapes'\\] and not a 'module:function' path"):
        image_metrics.check_hook("bleu")


def test_clip_score_equals_the_towers_by_hand(tmp_path):
    from tests.helpers.t2i_folder import save_tiny_clip

    path = save_tiny_clip(tmp_path / "clip")
    image_metrics.check_clip(str(path))
    scorer = image_metrics.ClipScorer(str(path))
    rng = np.random.default_rng(1)
    images = [_img(rng.integers(0, 256, (20, 20, 3))) for _ in range(3)]
    prompts = ["a red circle", "blue", "a green square left of it"]
    got = scorer.score(images, prompts)
    m, proc = scorer.model, scorer.processor
    want = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            px = proc(images=[image], return_tensors="pt")["pixel_values"]
            ids = proc(text=[prompt], return_tensors="pt")["input_ids"]
            v = m.visual_projection(m.vision_model(pixel_values=px).pooler_output)[0]
            t = m.text_projection(m.text_model(input_ids=ids).pooler_output)[0]
            want.append(100 * max(float(torch.nn.functional.cosine_similarity(v, t, dim=0)), 0.0))
    assert got == pytest.approx(want, abs=1e-4)
    assert any(w > 0 for w in want)


def test_image_cache_round_trip_and_refusals(tmp_path):
    inputs = {"model": "m", "prompt": "a red circle", "seed": 0}
    img = _img(np.arange(48).reshape(4, 4, 3))
    maps = {"circle": np.ones((2, 2), dtype=np.float32)}
    entry = image_cache.store(tmp_path, inputs, img, maps, 1.5)
    hit = image_cache.lookup(tmp_path, inputs)
    assert hit == entry and hit["seconds"] == 1.5
    assert np.array_equal(image_cache.read_maps(hit["maps"])["circle"], maps["circle"])
    assert image_cache.lookup(tmp_path, {**inputs, "seed": 1}) is None
    # an entry holding other inputs under this key (a collision, or a copied file) is never served
    meta = entry["png"].with_suffix(".json")
    meta.write_text(meta.read_text().replace('"seed": 0', '"seed": 5'))
    assert image_cache.lookup(tmp_path, inputs) is None
    image_cache.store(tmp_path, inputs, img, maps, 1.5)
    entry["maps"].write_bytes(entry["maps"].read_bytes()[:-3])  # truncated maps
    assert image_cache.lookup(tmp_path, inputs) is None
    assert image_cache.image_digest(img) != image_cache.image_digest(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
