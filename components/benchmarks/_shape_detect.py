"""A deterministic detector of the coloured shapes of ``_scenes`` and prompt-level metrics on it (no model needed).

Detection (``detect(image)``):

1. every pixel is assigned to the nearest of the palette colours, white and black in RGB (Euclidean distance);
   a pixel farther than ``max_dist`` from all of them, or of chroma (max - min channel) below ``min_chroma``
   (greys; the palette's chroma is 120..210, a half-and-half blend with white still 60..105), is background;
2. per colour, 4-connected components of its pixels (``scipy.ndimage.label``); components smaller than
   ``min_area`` of a grid cell's area are noise;
3. shape from the blob's fill ratio ``area / bbox area`` and its vertical profile: a triangle (apex up, as rendered)
   has a narrow top and ``fill`` about 1/2, a circle ``pi/4``, a square 1. Rule: ``top/bottom`` width ratio < 0.6
   or fill < 0.62 -> triangle; fill >= 0.89 -> square; otherwise circle. The top/bottom widths are the blob's mean
   row widths in the top and bottom quarters of its box;
4. cell: the 3 x 3 grid cell holding the blob's centroid.

Metrics for a prompt (``score(prompt, detections)``), objects parsed from captions of the form "a red circle at the
top left and a blue square at the bottom" (position optional):

- ``colour_present`` / ``shape_present``: share of asked objects whose colour (any shape) / shape (any colour) is
  detected; ``binding``: share whose (colour, shape) pair is detected (one detection matches one asked object);
- ``all_bound``: 1 if every asked object is bound; ``count``: 1 if the number of detections equals the number of
  asked objects; ``position``: share of asked objects (with a cell) detected with pair and cell;
- ``extra``: detections left unmatched (pairs the prompt did not ask for, e.g. leaked attributes).

``masked_fidelity`` scores inpainting: MSE and PSNR outside the mask against the source, and whether the asked
object is detected with its centroid inside the mask.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Sequence

import numpy as np

from components.benchmarks import _scenes

NEUTRALS = {"white": (255, 255, 255), "black": (0, 0, 0)}
_OBJ = re.compile(r"^(?:a|an) (\w+) (\w+)(?: at the ([a-z ]+))?$")


def _rgb(image: Any) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
    return arr.astype(np.float32)


def classify_pixels(image: Any, max_dist: float = 90.0, min_chroma: float = 40.0) -> tuple[np.ndarray, list[str]]:
    """(labels (H, W) int, names): label i < len(palette) is ``names[i]``; neutral, grey and far pixels are -1."""
    arr = _rgb(image)  # (H, W, 3)
    names = sorted(_scenes.COLOURS)
    refs = np.array([_scenes.COLOURS[n] for n in names] + list(NEUTRALS.values()), dtype=np.float32)  # (K, 3)
    dist = np.linalg.norm(arr[:, :, None, :] - refs[None, None], axis=-1)  # (H, W, K)
    lab = dist.argmin(-1)
    chroma = arr.max(-1) - arr.min(-1)  # (H, W)
    lab[(lab >= len(names)) | (dist.min(-1) > max_dist) | (chroma < min_chroma)] = -1
    return lab, names


def _shape(mask: np.ndarray) -> tuple[str, dict[str, float]]:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[y0:y1, x0:x1]
    fill = float(box.mean())
    q = max(1, (y1 - y0) // 4)
    top, bottom = box[:q].sum(1).mean(), box[-q:].sum(1).mean()
    ratio = float(top / bottom) if bottom > 0 else 1.0
    if ratio < 0.6 or fill < 0.62:
        shape = "triangle"
    elif fill >= 0.89:
        shape = "square"
    else:
        shape = "circle"
    return shape, {"fill": fill, "top_bottom": ratio}


def detect(image: Any, *, min_area: float = 0.15, max_dist: float = 90.0,
           min_chroma: float = 40.0) -> list[dict[str, Any]]:
    """Blobs of palette colours: [{"colour", "shape", "cell", "area", "centroid": (y, x), "bbox", "fill"}], sorted by
    cell then colour. ``min_area``: the smallest blob as a fraction of one grid cell's area."""
    from scipy import ndimage

    lab, names = classify_pixels(image, max_dist, min_chroma)
    h, w = lab.shape
    floor = min_area * (h / 3) * (w / 3)
    out = []
    for k, colour in enumerate(names):
        comps, n = ndimage.label(lab == k)
        for j in range(1, n + 1):
            m = comps == j
            area = int(m.sum())
            if area < floor:
                continue
            shape, feats = _shape(m)
            ys, xs = np.nonzero(m)
            cy, cx = float(ys.mean()), float(xs.mean())
            cell = min(2, int(3 * cy / h)) * 3 + min(2, int(3 * cx / w))
            out.append({"colour": colour, "shape": shape, "cell": cell, "area": area, "centroid": (cy, cx),
                        "bbox": (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1), **feats})
    return sorted(out, key=lambda d: (d["cell"], d["colour"]))


def parse_prompt(prompt: str) -> list[dict[str, Any]]:
    """Objects asked by a caption: [{"colour", "shape", "cell" (index or None)}]; unknown words raise ValueError."""
    objs = []
    for part in prompt.strip().rstrip(".").lower().split(" and "):
        m = _OBJ.match(part.strip())
        if not m or m.group(1) not in _scenes.COLOURS or m.group(2) not in _scenes.SHAPES:
            raise ValueError(f"cannot parse {part!r} of prompt {prompt!r}: expected 'a <colour> <shape> [at the "
                             f"<cell>]' with colours {sorted(_scenes.COLOURS)} and shapes {list(_scenes.SHAPES)}")
        cell = m.group(3)
        if cell is not None and cell not in _scenes.CELLS:
            raise ValueError(f"unknown cell {cell!r} in prompt {prompt!r}: one of {list(_scenes.CELLS)}")
        objs.append({"colour": m.group(1), "shape": m.group(2),
                     "cell": None if cell is None else _scenes.CELLS.index(cell)})
    return objs


def _matched(asked: Sequence[tuple], found: Sequence[tuple]) -> int:
    """How many asked items are matched one to one by found items (multiset intersection size)."""
    return sum((Counter(asked) & Counter(found)).values())


def score(prompt: str | Sequence[dict[str, Any]], detections: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Prompt-level metrics (module docstring) of ``detections`` for ``prompt`` (a caption or parsed objects)."""
    asked = parse_prompt(prompt) if isinstance(prompt, str) else list(prompt)
    if not asked:
        raise ValueError("score: the prompt asks for no object")
    n = len(asked)
    pairs = _matched([(a["colour"], a["shape"]) for a in asked], [(d["colour"], d["shape"]) for d in detections])
    placed = [a for a in asked if a["cell"] is not None]
    pos = _matched([(a["colour"], a["shape"], a["cell"]) for a in placed],
                   [(d["colour"], d["shape"], d["cell"]) for d in detections])
    return {
        "colour_present": _matched([a["colour"] for a in asked], [d["colour"] for d in detections]) / n,
        "shape_present": _matched([a["shape"] for a in asked], [d["shape"] for d in detections]) / n,
        "binding": pairs / n,
        "all_bound": float(pairs == n),
        "count": float(len(detections) == n),
        "position": pos / len(placed) if placed else math.nan,
        "extra": float(len(detections) - pairs),
    }


def score_image(image: Any, prompt: str, **detect_kw: Any) -> dict[str, float]:
    """``score(prompt, detect(image))``."""
    return score(prompt, detect(image, **detect_kw))


def parseable(prompt: str) -> bool:
    """True if ``prompt`` is in the detector's grammar ("a <colour> <shape> [at the <cell>]" joined by "and")."""
    try:
        parse_prompt(prompt)
    except ValueError:
        return False
    return True


score_image.applies = parseable  # metric hooks (components/diffusion/image_metrics.py) skip other prompts


def masked_fidelity(result: Any, source: Any, mask: np.ndarray, prompt: str | None = None,
                    **detect_kw: Any) -> dict[str, float]:
    """Inpainting scores: ``mse_outside`` / ``psnr_outside`` (pixels in [0, 255], outside the mask, result vs
    source; PSNR inf when equal) and, with a prompt, ``object_in_mask`` (share of asked (colour, shape) pairs
    detected with the centroid inside the mask)."""
    a, b = _rgb(result), _rgb(source)
    m = np.asarray(mask).astype(bool)
    if a.shape != b.shape or m.shape != a.shape[:2]:
        raise ValueError(f"result {a.shape}, source {b.shape} and mask {m.shape} must share H and W")
    if m.all():
        raise ValueError("the mask covers the whole image: nothing outside it to compare")
    mse = float(((a - b) ** 2)[~m].mean())
    out = {"mse_outside": mse, "psnr_outside": math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)}
    if prompt is not None:
        asked = parse_prompt(prompt)
        inside = [d for d in detect(result, **detect_kw)
                  if m[int(round(d["centroid"][0])), int(round(d["centroid"][1]))]]
        out["object_in_mask"] = _matched([(o["colour"], o["shape"]) for o in asked],
                                         [(d["colour"], d["shape"]) for d in inside]) / len(asked)
    return out
