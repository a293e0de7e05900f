"""Generated scenes with questions whose answers are known: coloured shapes on a 3 x 3 grid, optional text.

The data layer of issue 22's generated benchmark and of the ``demo-vlm`` training data (neither is built yet, see
docs/vlm.md). A scene is plain data (JSON rows); ``render`` draws it deterministically with PIL. Questions:

- ``exists``: "Is there a red circle in the image?" about a present object: "yes";
- ``absent``: the same about an absent (colour, shape) pair: "no", sampled POPE-style (Li et al., "Evaluating
  Object Hallucination in Large Vision-Language Models", EMNLP 2023, arXiv 2305.10355): ``random`` (any absent
  pair), ``popular`` (the absent pairs most frequent in the whole dataset) or ``adversarial`` (an absent pair that
  shares its shape or its colour with a present object, the analogue of POPE's co-occurring objects);
- ``count``: "How many squares are there?" (a digit);
- ``position``: "Where is the blue triangle?" (a cell name; only for objects unique in the scene);
- ``text``: "What word is written in the image?" (only when the scene has a word).

``pope_metrics`` gives POPE's metrics over yes/no answers (the positive class is "yes").
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (140, 60, 180), "orange": (240, 140, 30)}
CELLS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
WORDS = ("CAT", "SUN", "BOX", "MAP", "KEY", "CUP", "HAT", "PEN")
STRATEGIES = ("random", "popular", "adversarial")


def sample_scene(rng: random.Random, max_objects: int = 4, text_prob: float = 0.3) -> dict[str, Any]:
    """A scene: 1..max_objects objects in distinct cells ({shape, colour, cell}) and an optional word in a free
    cell."""
    if not 1 <= max_objects <= len(CELLS) - 1:
        raise ValueError(f"max_objects must be in 1..{len(CELLS) - 1}, got {max_objects}")
    cells = rng.sample(range(len(CELLS)), rng.randint(1, max_objects) + 1)  # the last one is free (for text)
    objects = [{"shape": rng.choice(SHAPES), "colour": rng.choice(sorted(COLOURS)), "cell": c} for c in cells[:-1]]
    text = {"word": rng.choice(WORDS), "cell": cells[-1]} if rng.random() < text_prob else None
    return {"objects": objects, "text": text}


def render(scene: dict[str, Any], size: int = 96):
    """The scene as an RGB PIL image of ``size`` x ``size`` pixels (white background, black text)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    cell = size / 3
    pad = cell * 0.15
    for obj in scene["objects"]:
        r, c = divmod(obj["cell"], 3)
        x0, y0, x1, y1 = c * cell + pad, r * cell + pad, (c + 1) * cell - pad, (r + 1) * cell - pad
        colour = COLOURS[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif obj["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    if scene.get("text"):
        r, c = divmod(scene["text"]["cell"], 3)
        draw.text((c * cell + pad, r * cell + cell / 3), scene["text"]["word"], fill=(0, 0, 0),
                  font=ImageFont.load_default())
    return img


def _name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def questions(scene: dict[str, Any], rng: random.Random, strategy: str = "random",
              popular: list[tuple[str, str]] | None = None) -> list[dict[str, str]]:
    """The scene's questions: one ``exists`` and one ``absent`` (balanced, as POPE), one ``count``, one
    ``position`` when an object is unique, one ``text`` when there is a word."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    objs = scene["objects"]
    present = {(o["colour"], o["shape"]) for o in objs}
    absent = [(c, s) for c in sorted(COLOURS) for s in SHAPES if (c, s) not in present]
    if strategy == "popular":
        if popular is None:
            raise ValueError("strategy=popular needs the dataset's pairs by frequency (popular_pairs)")
        pool = [p for p in popular if p not in present][:3] or absent
    elif strategy == "adversarial":
        pool = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)] or absent
    else:
        pool = absent
    obj = rng.choice(objs)
    gone = rng.choice(pool)
    out = [
        {"kind": "exists", "question": f"Is there a {_name(obj['colour'], obj['shape'])} in the image?",
         "answer": "yes"},
        {"kind": "absent", "question": f"Is there a {_name(*gone)} in the image?", "answer": "no",
         "strategy": strategy},
    ]
    shape = rng.choice(SHAPES)
    out.append({"kind": "count", "question": f"How many {shape}s are there?",
                "answer": str(sum(o["shape"] == shape for o in objs))})
    unique = [o for o in objs if sum((p["colour"], p["shape"]) == (o["colour"], o["shape"]) for p in objs) == 1]
    if unique:
        u = rng.choice(unique)
        out.append({"kind": "position", "question": f"Where is the {_name(u['colour'], u['shape'])}?",
                    "answer": CELLS[u["cell"]]})
    if scene.get("text"):
        out.append({"kind": "text", "question": "What word is written in the image?", "answer": scene["text"]["word"]})
    return out


def popular_pairs(scenes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(colour, shape) pairs by how many scenes contain them, most frequent first (ties alphabetical)."""
    counts = Counter(p for s in scenes for p in {(o["colour"], o["shape"]) for o in s["objects"]})
    return sorted(counts, key=lambda p: (-counts[p], p))


def dataset(seed: int, n_scenes: int, strategy: str = "random", max_objects: int = 4,
            text_prob: float = 0.3) -> list[dict[str, Any]]:
    """Rows {"scene_id", "scene", "kind", "question", "answer", ...}: ``n_scenes`` scenes and their questions,
    deterministic for the arguments."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, max_objects, text_prob) for _ in range(n_scenes)]
    popular = popular_pairs(scenes) if strategy == "popular" else None
    return [{"scene_id": i, "scene": s, **q} for i, s in enumerate(scenes)
            for q in questions(s, rng, strategy, popular)]


def yes_no(text: str) -> str:
    """'yes', 'no' or 'other' from a free-form answer (its first word, case and punctuation ignored)."""
    words = text.strip().lower().split()
    first = words[0].strip(".,!?:;\"'") if words else ""
    return first if first in ("yes", "no") else "other"


def pope_metrics(predictions: list[str], answers: list[str]) -> dict[str, float]:
    """POPE's metrics over yes/no questions: accuracy, precision, recall and F1 of "yes" (positive = object present),
    the yes ratio, and the share of answers that are neither yes nor no (counted as wrong)."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    pred = [yes_no(p) for p in predictions]
    gold = [yes_no(a) for a in answers]
    if "other" in gold:
        raise ValueError("pope_metrics: every answer must be yes or no")
    tp = sum(p == "yes" and g == "yes" for p, g in zip(pred, gold))
    fp = sum(p == "yes" and g == "no" for p, g in zip(pred, gold))
    fn = sum(p != "yes" and g == "yes" for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": pred.count("yes") / len(pred),
        "other_ratio": pred.count("other") / len(pred),
    }
