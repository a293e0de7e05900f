"""A small built-in English text source: template-generated children's stories.

Used offline as filler (passkey haystacks), as the text part of the demo model's training mixture, and as the
default perplexity source when a user gives none. Deterministic for a seed; a few hundred words of vocabulary.
"""

from __future__ import annotations

import random

NAMES = ["Tom", "Lily", "Sam", "Mia", "Ben", "Anna", "Max", "Lucy", "Tim", "Sara", "Jack", "Emma", "Leo", "Zoe"]
ANIMALS = ["cat", "dog", "bird", "fox", "frog", "bear", "rabbit", "duck", "mouse", "horse", "owl", "fish"]
PLACES = ["park", "garden", "forest", "river", "house", "school", "beach", "farm", "hill", "shop", "lake", "town"]
THINGS = ["ball", "kite", "box", "cake", "book", "hat", "boat", "toy", "cup", "flower", "apple", "drum", "map"]
COLORS = ["red", "blue", "green", "yellow", "big", "small", "shiny", "soft", "old", "new", "happy", "little"]
FEELINGS = ["happy", "sad", "excited", "tired", "scared", "proud", "surprised", "calm", "curious", "brave"]
VERBS = ["found", "saw", "liked", "wanted", "lost", "made", "painted", "carried", "shared", "hid", "kept"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "quiet", "bright"]

_SENTENCES = [
    "{name} went to the {place} with a {color} {thing}.",
    "One day, {name} {verb} a {color} {thing} near the {place}.",
    "The {animal} was {feeling} because it {verb} a {thing}.",
    "{name} and the {animal} played all day at the {place}.",
    "It was a {weather} day, so {name} stayed at the {place}.",
    "{name} said, \"Look at my {color} {thing}!\"",
    "The {animal} ran to the {place} and {verb} a {thing}.",
    "{name} felt {feeling} when the {animal} came back.",
    "After lunch, {name} {verb} the {thing} for the {animal}.",
    "Everyone at the {place} smiled at the {color} {animal}.",
    "{name} asked the {animal}, \"Do you want my {thing}?\"",
    "At night, {name} was {feeling} and went to sleep.",
]


def sentence(rng: random.Random) -> str:
    tpl = rng.choice(_SENTENCES)
    return tpl.format(
        name=rng.choice(NAMES), animal=rng.choice(ANIMALS), place=rng.choice(PLACES), thing=rng.choice(THINGS),
        color=rng.choice(COLORS), feeling=rng.choice(FEELINGS), verb=rng.choice(VERBS), weather=rng.choice(WEATHER),
    )


def story(rng: random.Random, n_sentences: int | None = None) -> str:
    n = n_sentences if n_sentences is not None else rng.randint(4, 9)
    return " ".join(sentence(rng) for _ in range(n))


def stories(seed: int, n: int) -> list[str]:
    """``n`` stories, deterministic for ``seed``."""
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]


def filler(rng: random.Random, n_words: int) -> str:
    """Roughly ``n_words`` words of story text (whole sentences)."""
    out: list[str] = []
    count = 0
    while count < n_words:
        s = sentence(rng)
        out.append(s)
        count += len(s.split())
    return " ".join(out)
