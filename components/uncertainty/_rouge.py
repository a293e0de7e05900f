"""ROUGE-L and exact match, written out here (no extra dependency).

ROUGE-L follows Google's ``rouge_score`` package (``RougeScorer(["rougeL"])`` without stemming, the scorer the SAR
reference code uses): text is lower-cased, every run of characters outside ``[a-z0-9]`` becomes a space, tokens are
the space-separated pieces; with LCS the length of the longest common subsequence of the two token lists,
P = LCS / len(prediction), R = LCS / len(target) and F = 2PR / (P + R) (0 when either side has no token).

Exact match follows SQuAD's normalisation: lower case, punctuation and the articles a/an/the removed, whitespace
collapsed; a prediction matches when its normalised text equals a reference's.
"""

from __future__ import annotations

import re
import string

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def tokens(text: str) -> list[str]:
    """rouge_score's default tokenisation (no stemming)."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, target: str) -> float:
    """ROUGE-L F-measure of ``prediction`` against ``target`` (symmetric in its two arguments)."""
    p, t = tokens(prediction), tokens(target)
    lcs = lcs_length(p, t)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(t)
    return 2 * precision * recall / (precision + recall)


def normalize(text: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, target: str) -> float:
    return float(normalize(prediction) == normalize(target))
