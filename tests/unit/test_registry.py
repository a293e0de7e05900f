"""Registry, specs, parameters and fingerprints (no models)."""

from __future__ import annotations

import dataclasses
import pydoc
import re

import pytest

import registry
from components.base import ParamError, param_docs
from components.heads import HeadSet
from registry.specs import SpecError, load_preset, parse, parse_kv, parse_list, split_top_level


def test_lookup_by_name_and_version():
    assert registry.get("zerotuning").version == "1.0.0"
    assert registry.get("zerotuning@1").ref == "zerotuning@1.0.0"
    assert registry.get("zerotuning@1.0").ref == "zerotuning@1.0.0"
    assert registry.get("zerotuning@1.0.0").family == "patch"


def test_unknown_name_lists_what_exists():
    with pytest.raises(registry.UnknownComponentError) as e:
        registry.get("zerotunin")
    msg = str(e.value)
    assert "Did you mean zerotuning" in msg and "head_mask" in msg and "baseline" in msg


def test_unknown_version_lists_versions():
    with pytest.raises(registry.UnknownComponentError, match=r"no version '9'.*1\.0\.0"):
        registry.get("zerotuning@9")


def test_family_filter():
    with pytest.raises(registry.UnknownComponentError, match="unknown benchmark component"):
        registry.get("zerotuning", family="benchmark")


def test_every_component_has_an_example_with_a_stable_fingerprint():
    for info in registry.all_components():
        comp = info.create(info.cls.example)
        assert comp.fingerprint() == info.create(info.cls.example).fingerprint()


@pytest.mark.parametrize("info", registry.all_components(), ids=lambda i: i.ref)
def test_every_parameter_is_described_in_the_class_docstring(info):
    own = info.cls.__dict__.get("__doc__") or ""
    assert re.search(r"^\s*Parameters\n\s*-+$", own, re.M), f"{info.ref}: class docstring lacks a Parameters section"
    fields = [f.name for f in dataclasses.fields(info.cls) if f.init and not f.name.startswith("_")]
    docs = param_docs(info.cls)
    assert [f for f in fields if not docs.get(f)] == [], f"{info.ref}: parameters without a description"
    assert sorted(set(docs) - set(fields)) == [], f"{info.ref}: described names that are not parameters"
    assert {p.name: p.doc for p in info.cls.param_specs()} == {f: docs[f] for f in fields}
    page = pydoc.render_doc(info.cls, renderer=pydoc.plaintext)  # what help() prints, in a " | " margin
    rendered = " ".join(w for w in page.split() if w != "|")
    assert all(" ".join(docs[f].split()) in rendered for f in fields)


def test_param_docs_reads_numpy_entries_of_the_class_docstring_only():
    class Parent:
        """Parent.

        Parameters
        ----------
        inherited : int
            Never read for a subclass.
        """

    class Child(Parent):
        """Child.

        Parameters
        ----------
        a, b : float
            Two numbers
            on two lines.
        flag
            A bare name.
        empty : str

        Notes
        -----
        c : int
            Not a parameter (another section).
        """

    assert param_docs(Child) == {"a": "Two numbers on two lines.", "b": "Two numbers on two lines.",
                                 "flag": "A bare name.", "empty": ""}

    class Undocumented(Parent):
        pass

    assert param_docs(Undocumented) == {}


def test_param_parsing_and_validation():
    zt = registry.get("zerotuning").create({"gamma": "4", "heads": "0:1,2:*"})
    assert zt.gamma == 4.0 and (2, 5) in zt.heads and (0, 1) in zt.heads and (0, 2) not in zt.heads
    with pytest.raises(ParamError, match="unknown parameter.*gama.*valid parameters: gamma, heads"):
        registry.get("zerotuning").create({"gama": "4"})
    with pytest.raises(ParamError, match=r"gamma=-1.0 is out of range"):
        registry.get("zerotuning").create({"gamma": "-1"})
    with pytest.raises(ParamError, match="not a number"):
        registry.get("zerotuning").create({"gamma": "abc"})
    with pytest.raises(ParamError, match="head_mask: heads is required"):
        registry.get("head_mask").create({})
    with pytest.raises(ParamError, match="'uniform', 'zero'"):
        registry.get("head_mask").create({"heads": "0:0", "mode": "half"})


def test_fingerprint_tracks_params_and_code():
    a = registry.get("zerotuning").create({"gamma": "2"})
    b = registry.get("zerotuning").create({"gamma": "3"})
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == registry.get("zerotuning").create({"gamma": 2.0}).fingerprint()
    assert registry.code_fingerprint(type(a)) != registry.code_fingerprint(registry.get("head_mask").cls)


def test_headset_forms_and_validation():
    hs = HeadSet.parse("L0H3,1-2:0,*:7")
    assert (0, 3) in hs and (1, 0) in hs and (2, 0) in hs and (5, 7) in hs and (0, 4) not in hs
    assert HeadSet.parse(hs.to_param()) == hs
    with pytest.raises(ValueError, match="3:9 out of range for a model with 2 layers x 8 heads"):
        HeadSet.parse("3:9").validate(2, 8)
    with pytest.raises(ValueError, match="MLflow reference"):
        HeadSet.parse("mlflow:abc/heads.json")


def test_headset_from_file(tmp_path):
    f = tmp_path / "heads.json"
    f.write_text('{"heads": [[0, 1], [2, 3]]}')
    hs = HeadSet.parse(f"file:{f}")
    assert hs.expand(3, 4) == [(0, 1), (2, 3)]


def test_specs():
    assert split_top_level("a,b(x=1,y=2),c") == ["a", "b(x=1,y=2)", "c"]
    s = parse("zerotuning@1.0.0(gamma=4, heads=0:1;2:3)")
    assert (s.name, s.version, s.params) == ("zerotuning", "1.0.0", {"gamma": "4", "heads": "0:1,2:3"})
    assert parse(s.text()) == s
    assert [x.name for x in parse_list("baseline,head_mask(heads=0:1;1:1)")] == ["baseline", "head_mask"]
    with pytest.raises(SpecError):
        parse("zerotuning(gamma)")
    with pytest.raises(SpecError, match="unbalanced"):
        parse_list("a(b")
    assert parse_kv(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(SpecError, match="expected key=value"):
        parse_kv(["nope"])


@pytest.mark.parametrize("name", ["quickstart", "quickstart-demo"])
def test_quickstart_presets_are_valid(name):
    preset = load_preset(name)
    assert preset["model"]
    for s in parse_list(preset["components"]):
        s.create("patch")
    for s in parse_list(preset["tasks"]):
        s.create("benchmark")
    for key, family in (("sinks", "analyzer"), ("retrieval", "analyzer")):
        if key in preset:
            parse(preset[key]).create(family)
    with pytest.raises(SpecError, match="unknown preset"):
        load_preset("nope")


def test_text_reading_patch_with_window_benchmark_is_refused_before_the_model_loads():
    from tasks.plan import plan_request

    with pytest.raises(SpecError, match="pasta reads the prompt texts.*perplexity"):
        plan_request.fn("no/such-model-is-ever-loaded", ["baseline", "pasta(spans=-40:)"],
                        ["kv_retrieval", "perplexity"], [0])
