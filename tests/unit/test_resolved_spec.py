"""ResolvedSpec: a component's pinned spec and identity, computed once; hashable, picklable, one spec-to-text."""

from __future__ import annotations

import pickle

import pytest

import registry
from registry.specs import ResolvedSpec, SpecError, format_spec, parse, resolved, spec_text


def test_resolved_spec_pins_identity_once_and_matches_the_component():
    comp = parse("zerotuning(gamma=3, heads=0:1;1:*)").create("patch")
    r = ResolvedSpec.of(comp)
    assert r.text == "zerotuning@1.0.0(gamma=3.0, heads=0:1;1:*)" == spec_text(comp) == str(r)
    assert (r.fingerprint, r.label, r.ref) == (comp.fingerprint(), comp.label(), "zerotuning@1.0.0")
    assert r.code_fingerprint == registry.code_fingerprint(type(comp))
    assert r.component is comp  # no rebuild
    assert parse(r.text).create("patch") == comp  # the text recreates it exactly
    assert r.record()["spec"] == r.text and r.record()["params"] == comp.params()


def test_resolved_specs_hash_by_content_and_differ_for_other_parameters():
    a = resolved("zerotuning(gamma=3)", "patch")
    b = resolved("zerotuning@1(gamma=3.0)", "patch")
    c = resolved("zerotuning(gamma=4)", "patch")
    assert a == b and hash(a) == hash(b) and len({a, b, c}) == 2
    assert a.fingerprint != c.fingerprint and a.text != c.text
    assert resolved(a, "patch") is a
    with pytest.raises(SpecError, match="not a benchmark"):
        resolved(a, "benchmark")


def test_pickling_drops_the_instance_and_rebuilds_it_once():
    r = resolved("head_mask(heads=0:1;2:3)", "patch")
    back = pickle.loads(pickle.dumps(r))
    assert back == r and "_component" not in back.__dict__
    assert back.component == r.component and back.component is back.component


def test_one_spec_to_text_function_round_trips_lists_and_commas():
    assert format_spec("x@1.0.0", {"heads": "0:1,2:3", "spans": [1, 2], "gamma": 2.0}) == \
        "x@1.0.0(heads=0:1;2:3, spans=1;2, gamma=2.0)"
    assert parse(format_spec("x", {"a": "1,2"})).params == {"a": "1,2"}
    kernel = registry.get("sigmoid", family="kernel").create()
    assert kernel.spec_text() == spec_text(kernel)
