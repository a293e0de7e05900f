"""HeadSet: which (layer, head) pairs a component acts on.

Text forms (used on the command line, in presets and in MLflow params):

- ``all``: every head of every layer; ``none``: no head.
- ``0:1,0:3``: layer 0 heads 1 and 3; ``2:*``: every head of layer 2; ``*:0``: head 0 of every layer.
- ``0:1-3``: heads 1, 2 and 3 of layer 0; ``1-2:*`` layers 1 and 2.
- ``file:/path/heads.json``: a JSON list of ``[layer, head]`` pairs (or ``{"heads": [...]}``), as written by the
  head-search flow. ``mlflow:<run_id>/<artifact>`` references are resolved to such a file by the tasks layer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_WILD = -1


def _parse_range(text: str, what: str, spec: str) -> list[int]:
    text = text.strip()
    if text == "*":
        return [_WILD]
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not m:
        raise ValueError(f"head set {spec!r}: {what} {text!r} is not a number, a range like 1-3, or *")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if hi < lo:
        raise ValueError(f"head set {spec!r}: empty {what} range {text!r}")
    return list(range(lo, hi + 1))


@dataclass(frozen=True)
class HeadSet:
    """An immutable set of (layer, head) pairs, where -1 stands for "every layer" / "every head"."""

    pairs: frozenset[tuple[int, int]]

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def all(cls) -> "HeadSet":
        return cls(frozenset({(_WILD, _WILD)}))

    @classmethod
    def none(cls) -> "HeadSet":
        return cls(frozenset())

    @classmethod
    def of(cls, pairs) -> "HeadSet":
        out = set()
        for p in pairs:
            if len(p) != 2:
                raise ValueError(f"head set entry {p!r} is not a (layer, head) pair")
            out.add((int(p[0]), int(p[1])))
        return cls(frozenset(out))

    @classmethod
    def parse(cls, spec: "str | HeadSet | list | tuple") -> "HeadSet":
        if isinstance(spec, HeadSet):
            return spec
        if isinstance(spec, (list, tuple)):
            return cls.of(spec)
        text = str(spec).strip()
        low = text.lower()
        if low in ("all", "*", "*:*"):
            return cls.all()
        if low in ("none", ""):
            return cls.none()
        if low.startswith("mlflow:"):
            raise ValueError(
                f"head set {text!r} is an MLflow reference; it must be resolved to a file first "
                "(the attnflow tasks do this for --param values)"
            )
        if low.startswith("file:"):
            return cls.from_file(text[5:])
        pairs: set[tuple[int, int]] = set()
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            m = re.fullmatch(r"[Ll](\d+)[Hh](\d+)", item)
            if m:
                pairs.add((int(m.group(1)), int(m.group(2))))
                continue
            if ":" not in item:
                raise ValueError(
                    f"head set {text!r}: entry {item!r} must look like layer:head (e.g. 0:3, 2:*, *:1, L0H3)"
                )
            lspec, hspec = item.split(":", 1)
            for layer in _parse_range(lspec, "layer", text):
                for head in _parse_range(hspec, "head", text):
                    pairs.add((layer, head))
        return cls(frozenset(pairs))

    @classmethod
    def from_file(cls, path: str | Path) -> "HeadSet":
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"head set file {str(p)!r} does not exist")
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            if "heads" not in data:
                raise ValueError(f"head set file {str(p)!r}: expected a list of [layer, head] or {{'heads': [...]}}")
            data = data["heads"]
        return cls.of(data)

    # -- queries ------------------------------------------------------------------------------------------------
    def __contains__(self, lh: tuple[int, int]) -> bool:
        layer, head = lh
        return any(
            (pl == _WILD or pl == layer) and (ph == _WILD or ph == head) for pl, ph in self.pairs
        )

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def heads_in_layer(self, layer: int, n_heads: int) -> list[int]:
        """Sorted heads of ``layer`` in the set."""
        return [h for h in range(n_heads) if (layer, h) in self]

    def expand(self, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
        """Every concrete (layer, head) pair for a model of this size."""
        return [(layer, h) for layer in range(n_layers) for h in self.heads_in_layer(layer, n_heads)]

    def validate(self, n_layers: int, n_heads: int, what: str = "heads") -> None:
        """Raise ValueError naming every pair that does not exist in a model with this many layers and heads."""
        bad = [
            (layer, h)
            for layer, h in sorted(self.pairs)
            if layer >= n_layers or h >= n_heads or layer < _WILD or h < _WILD
        ]
        if bad:
            shown = ", ".join(f"{'*' if a == _WILD else a}:{'*' if b == _WILD else b}" for a, b in bad[:8])
            raise ValueError(
                f"{what}: {shown} out of range for a model with {n_layers} layers x {n_heads} heads "
                f"(layers 0..{n_layers - 1}, heads 0..{n_heads - 1})"
            )

    def to_param(self) -> str:
        if (_WILD, _WILD) in self.pairs:
            return "all"
        if not self.pairs:
            return "none"
        return ",".join(
            f"{'*' if lay == _WILD else lay}:{'*' if h == _WILD else h}" for lay, h in sorted(self.pairs)
        )

    def __str__(self) -> str:
        return self.to_param()

    def __repr__(self) -> str:
        return f"HeadSet({self.to_param()!r})"
