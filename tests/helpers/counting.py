"""Count the repeated work of a request: spec parses, component builds, config reads and code fingerprints.

    with counting() as counts:
        compare(...)
    counts["parse"]["zerotuning"], counts["build"]["kv_retrieval"], counts["config"]["*"]

Counts are per component name (``"*"`` for config reads and totals). Parsing is counted at the spec regex that
every ``registry.specs.parse`` call goes through, so modules that imported ``parse`` by name are counted too;
building at ``Component.from_params`` (what ``ComponentInfo.create`` and ``Spec.create`` call); config reads at
``transformers.AutoConfig.from_pretrained`` (what ``components.modeling.load_config`` and model loading call).
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

_LOCK = threading.Lock()


class _CountingPattern:
    """Stands in for ``registry.specs._SPEC``; counts every match by component name."""

    def __init__(self, pattern: Any, counts: dict[str, Counter]) -> None:
        self.pattern, self.counts = pattern, counts

    def match(self, text: str, *args: Any) -> Any:
        m = self.pattern.match(text, *args)
        with _LOCK:
            self.counts["parse"][m.group(1) if m else "?"] += 1
            self.counts["parse"]["*"] += 1
        return m


@contextmanager
def counting() -> Iterator[dict[str, Counter]]:
    """Count parses, builds, config reads and code fingerprints inside the block (all threads)."""
    import transformers

    import registry
    from components.base import Component
    from registry import specs

    counts: dict[str, Counter] = defaultdict(Counter)

    def bump(kind: str, name: str) -> None:
        with _LOCK:
            counts[kind][name] += 1
            counts[kind]["*"] += 1

    orig_pattern = specs._SPEC
    orig_from_params = Component.__dict__["from_params"]
    orig_config = transformers.AutoConfig.__dict__["from_pretrained"]
    orig_code_fp = registry.code_fingerprint

    def from_params(cls, params=None):
        bump("build", cls.component_name or cls.__name__)
        return orig_from_params.__func__(cls, params)

    def from_pretrained(cls, *args, **kwargs):
        bump("config", str(args[0]) if args else "?")
        return orig_config.__func__(cls, *args, **kwargs)

    def code_fingerprint(cls):
        bump("code_fingerprint", getattr(cls, "component_name", "") or cls.__name__)
        return orig_code_fp(cls)

    specs._SPEC = _CountingPattern(orig_pattern, counts)
    Component.from_params = classmethod(from_params)
    transformers.AutoConfig.from_pretrained = classmethod(from_pretrained)
    registry.code_fingerprint = code_fingerprint
    try:
        yield counts
    finally:
        specs._SPEC = orig_pattern
        Component.from_params = orig_from_params
        transformers.AutoConfig.from_pretrained = orig_config
        registry.code_fingerprint = orig_code_fp


def summary(counts: dict[str, Counter], names: list[str]) -> str:
    """One line per kind: the count for each of ``names`` and the total."""
    lines = []
    for kind in ("parse", "build", "config", "code_fingerprint"):
        c = counts.get(kind, Counter())
        lines.append(f"{kind:17s} " + "  ".join(f"{n}={c[n]}" for n in names) + f"  total={c['*']}")
    return "\n".join(lines)
