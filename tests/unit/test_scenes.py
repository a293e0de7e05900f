"""Generated scenes (components/benchmarks/_scenes.py): deterministic, drawn where the scene says, questions whose
answers follow from the scene, POPE's absent-object strategies, and POPE's metrics against hand counts."""

from __future__ import annotations

import random

import numpy as np
import pytest

from components.benchmarks import _scenes as sc


def _pixels_of(img, colour):
    a = np.asarray(img).astype(int)
    return (np.abs(a - np.array(sc.COLOURS[colour])).sum(-1) < 10)  # (H, W) bool


def test_dataset_and_images_are_deterministic():
    a, b = sc.dataset(3, 20), sc.dataset(3, 20)
    assert a == b and a != sc.dataset(4, 20)
    assert sc.render(a[0]["scene"]).tobytes() == sc.render(b[0]["scene"]).tobytes()


def test_objects_are_drawn_in_their_cells_only():
    rng = random.Random(0)
    for _ in range(30):
        scene = sc.sample_scene(rng, max_objects=5)
        size = 96
        img = sc.render(scene, size)
        for colour in sc.COLOURS:
            mask = _pixels_of(img, colour)
            cells = {o["cell"] for o in scene["objects"] if o["colour"] == colour}
            for cell in range(9):
                r, c = divmod(cell, 3)
                found = mask[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32].sum()
                assert (found > 50) == (cell in cells), (scene, colour, cell)


def test_answers_follow_from_the_scene():
    rows = sc.dataset(1, 60, text_prob=0.5)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"exists", "absent", "count", "position", "text"}
    for r in rows:
        objs = r["scene"]["objects"]
        pairs = {(o["colour"], o["shape"]) for o in objs}
        if r["kind"] in ("exists", "absent"):
            colour, shape = r["question"].removeprefix("Is there a ").removesuffix(" in the image?").split()
            assert ((colour, shape) in pairs) == (r["answer"] == "yes")
        elif r["kind"] == "count":
            shape = r["question"].split()[2].removesuffix("s")
            assert int(r["answer"]) == sum(o["shape"] == shape for o in objs)
        elif r["kind"] == "position":
            colour, shape = r["question"].removeprefix("Where is the ").removesuffix("?").split()
            (obj,) = [o for o in objs if (o["colour"], o["shape"]) == (colour, shape)]
            assert sc.CELLS[obj["cell"]] == r["answer"]
        else:
            assert r["answer"] == r["scene"]["text"]["word"]


def test_pope_strategies():
    adv = [r for r in sc.dataset(2, 80, strategy="adversarial") if r["kind"] == "absent"]
    shared = 0
    for r in adv:
        colour, shape = r["question"].removeprefix("Is there a ").removesuffix(" in the image?").split()
        present = {(o["colour"], o["shape"]) for o in r["scene"]["objects"]}
        assert (colour, shape) not in present
        shared += any(colour == c or shape == s for c, s in present)
    assert shared == len(adv)
    rows = sc.dataset(2, 80, strategy="popular")
    top = sc.popular_pairs([r["scene"] for r in rows if r["kind"] == "exists"])[:6]
    absent = [r for r in rows if r["kind"] == "absent"]
    in_top = sum(tuple(r["question"].split()[3:5]) in top for r in absent)
    assert in_top / len(absent) > 0.9  # asked about the dataset's most frequent pairs
    with pytest.raises(ValueError, match="strategy"):
        sc.questions(rows[0]["scene"], random.Random(0), strategy="nearest")


def test_pope_metrics_by_hand():
    preds = ["Yes.", "no", "yes, there is", "No", "maybe", "yes"]
    gold = ["yes", "yes", "no", "no", "yes", "yes"]
    m = sc.pope_metrics(preds, gold)
    # tp = 2 (0, 5), fp = 1 (2), fn = 2 (1, 4), correct = 0, 3, 5
    assert m["accuracy"] == pytest.approx(3 / 6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4) and m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["yes_ratio"] == pytest.approx(3 / 6) and m["other_ratio"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="predictions"):
        sc.pope_metrics(["yes"], ["yes", "no"])
    with pytest.raises(ValueError, match="yes or no"):
        sc.pope_metrics(["yes"], ["3"])
