"""The coloured-shape detector on clean renders of generated scenes (exact) and on edge cases, and its metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from components.benchmarks import _scenes
from components.benchmarks import _shape_detect as D
from components.diffusion.t2i_train import caption, scenes


@pytest.mark.parametrize("size", [32, 64])
def test_clean_renders_are_detected_exactly(size):
    for s in scenes(11, 150):
        dets = D.detect(_scenes.render(s, size))
        want = sorted((o["cell"], o["colour"], o["shape"]) for o in s["objects"])
        assert sorted((d["cell"], d["colour"], d["shape"]) for d in dets) == want, (s, dets)
        r = D.score_image(_scenes.render(s, size), caption(s))
        assert r == {"colour_present": 1.0, "shape_present": 1.0, "binding": 1.0, "all_bound": 1.0, "count": 1.0,
                     "position": 1.0, "extra": 0.0}


def test_text_and_blank_images():
    scene = {"objects": [{"shape": "triangle", "colour": "green", "cell": 4}], "text": {"word": "CAT", "cell": 0}}
    dets = D.detect(_scenes.render(scene, 96))  # black text is not a palette colour
    assert [(d["colour"], d["shape"], d["cell"]) for d in dets] == [("green", "triangle", 4)]
    assert D.detect(Image.new("RGB", (32, 32), (255, 255, 255))) == []
    r = D.score("a red circle", [])
    assert r["binding"] == 0 and r["count"] == 0 and math.isnan(r["position"])


def test_small_noise_is_ignored_and_far_colours_are_background():
    img = _scenes.render({"objects": [{"shape": "square", "colour": "blue", "cell": 8}]}, 32)
    img.putpixel((2, 2), (220, 40, 40))  # one red pixel: below min_area
    ImageDraw.Draw(img).rectangle((12, 0, 20, 8), fill=(128, 128, 128))  # grey: far from every palette colour
    assert [(d["colour"], d["shape"], d["cell"]) for d in D.detect(img)] == [("blue", "square", 8)]


def test_binding_count_position_and_leakage():
    dets = [{"colour": "red", "shape": "square", "cell": 0}, {"colour": "blue", "shape": "circle", "cell": 2}]
    r = D.score("a red circle at the top left and a blue square at the top right", dets)  # attributes swapped
    assert r["colour_present"] == 1 and r["shape_present"] == 1
    assert r["binding"] == 0 and r["all_bound"] == 0 and r["position"] == 0 and r["extra"] == 2 and r["count"] == 1
    r = D.score("a red square at the top and a blue circle at the top right", dets)
    assert r["binding"] == 1 and r["position"] == 0.5 and r["extra"] == 0
    # Two asked red squares are not both matched by one detection.
    assert D.score("a red square and a red square", dets[:1])["binding"] == 0.5


def test_parse_prompt_and_bad_prompts():
    assert D.parse_prompt("an orange triangle at the bottom right and a red circle") == [
        {"colour": "orange", "shape": "triangle", "cell": 8}, {"colour": "red", "shape": "circle", "cell": None}]
    for bad in ("a pink circle", "a red hexagon", "a red circle at the middle", ""):
        with pytest.raises(ValueError, match="prompt"):
            D.parse_prompt(bad)
    with pytest.raises(ValueError, match="RGB"):
        D.detect(np.zeros((8, 8)))


def test_masked_fidelity():
    src = _scenes.render({"objects": [{"shape": "circle", "colour": "red", "cell": 0}]}, 32)
    mask = np.zeros((32, 32), bool)
    mask[21:, 21:] = True  # bottom right cell
    res = _scenes.render({"objects": [{"shape": "circle", "colour": "red", "cell": 0},
                                      {"shape": "square", "colour": "blue", "cell": 8}]}, 32)
    r = D.masked_fidelity(res, src, mask, "a blue square")
    assert r["mse_outside"] == 0 and r["psnr_outside"] == math.inf and r["object_in_mask"] == 1
    assert D.masked_fidelity(res, src, mask, "a red circle")["object_in_mask"] == 0  # detected, but outside
    noisy = np.asarray(res).copy()
    noisy[0, 31] = 0  # one changed pixel outside the mask
    r = D.masked_fidelity(noisy, src, mask)
    assert r["mse_outside"] == pytest.approx(3 * 255 ** 2 / 3 / (32 * 32 - mask.sum())) and "object_in_mask" not in r
    with pytest.raises(ValueError, match="whole image"):
        D.masked_fidelity(res, src, np.ones((32, 32), bool))
