"""Clean / corrupted prompt pairs for circuit analysis, generated from templates.

- ``ioi`` (indirect object identification, Wang et al. 2022, arXiv 2211.00593): "When Mary and John went to the
  park, John gave a ball to" -> " Mary". The corrupted prompt replaces the three name slots by three other names
  (the paper's "ABC" distribution), so the indirect object can no longer be found. Metric: logit(IO) - logit(S).
- ``colored_objects`` (Merullo et al. 2024, arXiv 2310.08744, 1-shot, 3 objects): "Q: On the table, I see a red
  ball, a blue cup, and a green kite. What color is the cup?\\nA:" -> " blue", after one solved example. The
  corrupted prompt asks about another object of the same table. Metric: logit(answer) - logit(other object's colour).

Names, objects and places come from the built-in story vocabulary, so small models trained on it know the words.
Each row: ``clean``, ``corrupt``, ``answer``, ``distractor`` (leading spaces included: the continuation).
"""

from __future__ import annotations

import random
from typing import Any

from components.benchmarks import _text

PROMPT_SETS = ("ioi", "colored_objects")

IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {thing} to",
    "Then, {A} and {B} were at the {place}. {S} gave a {thing} to",
    "After {A} and {B} went to the {place}, {S} gave the {thing} to",
    "While {A} and {B} were playing at the {place}, {S} gave a {thing} to",
    "Then {A} and {B} had a {thing} at the {place}. {S} gave it to",
)
COLORS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "black", "white", "brown")
OBJECTS = tuple(_text.THINGS)


def ioi_pair(rng: random.Random) -> dict[str, Any]:
    io, s, c1, c2, c3 = rng.sample(_text.NAMES, 5)
    tpl = rng.choice(IOI_TEMPLATES)
    place, thing = rng.choice(_text.PLACES), rng.choice(_text.THINGS)
    a, b = (io, s) if rng.random() < 0.5 else (s, io)  # ABBA and BABA orders
    clean = tpl.format(A=a, B=b, S=s, place=place, thing=thing)
    corrupt = tpl.format(A=c1, B=c2, S=c3, place=place, thing=thing)
    return {"clean": clean, "corrupt": corrupt, "answer": " " + io, "distractor": " " + s}


def _table(rng: random.Random) -> tuple[list[str], list[str]]:
    return rng.sample(OBJECTS, 3), rng.sample(COLORS, 3)


def _question(objects: list[str], colors: list[str], asked: int) -> str:
    items = ", ".join(f"a {c} {o}" for o, c in zip(objects[:2], colors[:2])) + f", and a {colors[2]} {objects[2]}"
    return f"Q: On the table, I see {items}. What color is the {objects[asked]}?\nA:"


def colored_objects_pair(rng: random.Random) -> dict[str, Any]:
    shot_objects, shot_colors = _table(rng)
    shot_asked = rng.randrange(3)
    shot = _question(shot_objects, shot_colors, shot_asked) + f" {shot_colors[shot_asked]}\n"
    objects, colors = _table(rng)
    asked, other = rng.sample(range(3), 2)
    return {"clean": shot + _question(objects, colors, asked), "corrupt": shot + _question(objects, colors, other),
            "answer": " " + colors[asked], "distractor": " " + colors[other]}


def prompt_pairs(kind: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` clean/corrupt pairs of a prompt set, deterministic for the seed."""
    if kind not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {kind!r}; sets: {', '.join(PROMPT_SETS)}")
    rng = random.Random(seed)
    make = ioi_pair if kind == "ioi" else colored_objects_pair
    return [make(rng) for _ in range(n)]
