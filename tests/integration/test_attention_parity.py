"""Every attention path agrees with the float64 materialised reference (issue 17, item 5).

Every registered patch (and pairs of patches on one layer) x every forced form of the dispatcher (none = fused
SDPA, each sparse bias in its cheaper exact form; ``lse`` = sparse biases corrected from the log-sum-exp whatever
their size; ``channels``, ``bias``, ``materialize``) x ``output_attentions``, on a left-padded
batch whose rows have different numbers of biased keys (PASTA's spans are ragged per row), prefill and two
KV-cache decode steps: logits (and the returned attention probabilities) equal the reference within 1e-5.

The reference (tests/helpers/reference.py) materialises float64 probabilities with its own masks and applies each
paper's formula from the component tests (``*_reference``); edits compose in the dispatcher's order: query scales,
then logit biases, then probability edits, then head-output edits. The ONNX part (test_onnx_export_parity) exports
the exportable patches; see ONNX_REFUSED for the others.
"""

from __future__ import annotations

import pytest
import torch

import registry
from components.attention.session import applied
from components.base import unescape
from components.onnx import export as onnx_export
from components.patches.pasta import char_spans, parse_ranges
from tests.helpers.compare import TOL, _step_logits
from tests.helpers.reference import reference
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny import tiny_model, tokenizer
from tests.integration.test_act import act_reference
from tests.integration.test_head_mask import uniform_reference, zero_reference
from tests.integration.test_head_pattern_override import override_reference
from tests.integration.test_pasta import outside_flags, pasta_reference
from tests.integration.test_soft_injection import fitted, si_reference
from tests.integration.test_zerotuning import zt_reference

# Ragged: rows of 51, 30 and 31 tokens (left padding) with 8, 26 and 23 tokens outside their bracketed spans. PASTA
# biases the outside set, so the longest row's sparse index is padded with -1 while its key 0 is biased: the case
# where KeyBias.dense() used to overwrite key 0 (issue 17 item 5).
TEXTS = ["abc [xyz:345 and a very long span of words that goes on and on] end",
         "the cat sat on a mat and [a dog] ran far away", "once upon [a time] there [was] a dog"]
# Text-only models: patches that act on image tokens (needs_images) are tested on tiny VLMs in their own files
# (tests/integration/test_visual_boost.py, test_var.py, test_vhr.py) and refused here by check_model.
IMAGE_PATCHES = {info.name for info in registry.latest("patch") if info.cls.needs_images}
PATCHES = {info.name for info in registry.latest("patch")} - IMAGE_PATCHES
FORMS = [None, "lse", "channels", "bias", "materialize"]
DECODE = torch.tensor([[5, 17], [40, 3], [9, 250]])  # two decode steps per row (fixed tokens)


def _create(name, **params):
    return registry.get(name).create({k: str(v) for k, v in params.items()})


def _pasta(**params):
    return _create("pasta", **{"alpha": 0.2, "span_start": "[", "span_end": "]", "heads": "0:*,1:2", **params})


def _pasta_ref(pasta, pad, texts=TEXTS):
    spans = [char_spans(t, parse_ranges(pasta.spans), unescape(pasta.span_start), unescape(pasta.span_end))
             for t in texts]
    return pasta_reference(pasta, [outside_flags(t, s) for t, s in zip(texts, spans)], pad)


# name -> builder(model, pad) -> [(patch, kind, reference edit)], kind in "probs" (edit_probs) / "out" (edit_out).
# Builders list the patches in the dispatcher's order (query scales, biases, probability edits, output edits).
def _single(name):
    def build(model, pad):
        if name == "baseline":
            return [(_create("baseline"), "probs", lambda layer, p, info: p)]
        if name == "head_mask_uniform":
            hm = _create("head_mask", heads="0:1,1:0-2")
            return [(hm, "probs", uniform_reference(hm))]
        if name == "head_mask_zero":
            hm = _create("head_mask", heads="0:2,1:1", mode="zero")
            return [(hm, "out", zero_reference(hm))]
        if name == "zerotuning":
            zt = _create("zerotuning", gamma=3, heads="0:1,1:*")  # log gamma >= -log 2: the lse correction
            return [(zt, "probs", zt_reference(zt, 4))]
        if name == "pasta_sparse":  # ragged sparse index (the outside set), +log 4: corrected from the lse
            pa = _pasta(alpha=4)
            return [(pa, "probs", _pasta_ref(pa, pad))]
        if name == "pasta_ranges":  # -log 0.3 on the spans (the smaller set), keys overlapping pasta_sparse's
            pa = _pasta(alpha=0.3, spans="2:9,-6:", span_start="", span_end="", heads="0:*,1:*")
            return [(pa, "probs", _pasta_ref(pa, pad))]
        if name == "pasta_dense":
            pa = _pasta(sparse_max=0, alpha=4, heads="0:0-2,1:*")
            return [(pa, "probs", _pasta_ref(pa, pad))]
        if name == "pasta_strong":  # sparse, but -log 100 < -log 2 on the spans: the channel form (item 6)
            pa = _pasta(alpha=100, spans="2:9,-6:", span_start="", span_end="")
            return [(pa, "probs", _pasta_ref(pa, pad))]
        if name == "act":
            act = _create("act", beta=0.4, tau=0.08, heads="0:1,1:*")
            return [(act, "probs", act_reference(act))]
        if name == "head_pattern_override":
            po = _create("head_pattern_override", heads="0:1,1:0-1", positions="0,-3")
            return [(po, "probs", override_reference(po))]
        if name == "soft_injection":
            si = fitted(model)
            return [(si, "out", si_reference(si, lambda b, info: info.q_len - 1))]
        raise ValueError(name)

    return build


SINGLE = ["baseline", "head_mask_uniform", "head_mask_zero", "zerotuning", "pasta_sparse", "pasta_ranges",
          "pasta_dense", "pasta_strong", "act", "head_pattern_override", "soft_injection"]
PAIRS = [("head_mask_uniform", "zerotuning"), ("zerotuning", "pasta_sparse"), ("pasta_dense", "zerotuning"),
         ("pasta_sparse", "pasta_ranges"), ("pasta_sparse", "pasta_strong"), ("pasta_sparse", "act"),
         ("act", "head_pattern_override"),
         ("head_mask_zero", "soft_injection")]
CASES = {n: _single(n) for n in SINGLE} | {
    f"{a}+{b}": (lambda a, b: lambda model, pad: _single(a)(model, pad) + _single(b)(model, pad))(a, b)
    for a, b in PAIRS}


def test_every_registered_patch_is_covered():
    covered = {p.component_name for build in CASES.values() for p, _, _ in build(tiny_model(), [0, 0, 0])}
    assert covered == PATCHES, "add the new patch to CASES (and to the ONNX lists)"


def _chain(edits):
    def edit(layer, x, info):
        for e in edits:
            x = e(layer, x, info)
        return x

    return edit if edits else None


def _batch(texts=TEXTS):
    tok = tokenizer()
    tok.padding_side = "left"
    enc = tok(texts, padding=True, return_tensors="pt")
    pad = [int((m == 0).sum()) for m in enc["attention_mask"]]
    return tok, enc, pad


@torch.no_grad()
def _run(model, enc, output_attentions, tok=None, patches=(), force=None):
    """Prefill logits and attentions, then the logits of two KV-cache decode steps."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    full_ids = torch.cat([ids, DECODE], 1)
    full_mask = torch.cat([mask, torch.ones_like(DECODE)], 1)
    scope = applied(model, *patches, force=force) if patches else reference(model, **_ref_edits)
    with scope as session:
        if patches:
            session.set_inputs(texts=TEXTS, tokenizer=tok)
        out = model(input_ids=ids, attention_mask=mask, output_attentions=output_attentions)
        dec = _step_logits(model, full_ids, full_mask, ids.shape[1])
    return out.logits, out.attentions, dec


_ref_edits: dict = {}


@pytest.mark.parametrize("output_attentions", [False, True], ids=["fused", "attn"])
@pytest.mark.parametrize("force", FORMS, ids=lambda f: f or "auto")
@pytest.mark.parametrize("case", list(CASES))
def test_every_path_matches_the_float64_reference(case, force, output_attentions):
    model = tiny_model("llama")
    tok, enc, pad = _batch()
    built = CASES[case](model, pad)
    got, got_att, got_dec = _run(model, enc, output_attentions, tok, [p for p, _, _ in built], force)
    built = CASES[case](model, pad)  # fresh reference closures (ACT's running statistics)
    _ref_edits.update(edit_probs=_chain([e for _, k, e in built if k == "probs"]),
                      edit_out=_chain([e for _, k, e in built if k == "out"]))
    try:
        want, want_att, want_dec = _run(model, enc, True)
    finally:
        _ref_edits.clear()
    valid = enc["attention_mask"].bool()  # (B, T) real query rows
    d = {"prefill": (got - want)[valid].abs().max().item(), "decode": (got_dec - want_dec).abs().max().item()}
    if output_attentions:
        d["attentions"] = max((a - b)[valid[:, None, :, None].expand_as(a)].abs().max().item()
                              for a, b in zip(got_att, want_att))
    assert max(d.values()) <= TOL, d
    if case != "baseline":
        with torch.no_grad():
            base = model(**enc).logits
        assert (got - base)[valid].abs().max().item() > 1e-3  # the patches act on this batch


# -- ONNX export ---------------------------------------------------------------------------------------------------
# Refused by components.onnx.export.check_exportable (tests/integration/test_onnx_cli.py checks each refusal):
# act and head_pattern_override have data-dependent edits (sink sets, per-row index writes) with no standard-op
# form; pasta reads per-batch texts (session inputs) that the graph has no input for; soft_injection must be fitted
# and its fitted state is not a spec parameter.
ONNX_REFUSED = {"act", "head_pattern_override", "pasta", "soft_injection"} | IMAGE_PATCHES  # image positions
# (case, form): the key bias in both exported forms, with a query scale on the same layer; every exportable patch
# at once in the bias form. Each export takes 25-70 s on the shared 2-core CI machine, hence two.
ONNX_CASES = [("all_exportable", "bias"), ("head_mask_uniform+zerotuning", "channels")]
CASES["all_exportable"] = lambda model, pad: [
    x for n in ("baseline", "head_mask_uniform", "zerotuning", "head_mask_zero") for x in _single(n)(model, pad)]


def test_onnx_refusals_are_the_non_exportable_patches():
    refused = set()
    for info in registry.latest("patch"):
        name, cls = info.name, info.cls
        if not cls.onnx_exportable or getattr(cls, "needs_fit", False) or cls.needs_inputs:
            refused.add(name)
    assert refused == ONNX_REFUSED
    exported = {p.component_name for c, _ in ONNX_CASES for p, _, _ in CASES[c](tiny_model(), [0, 0, 0])}
    assert exported == PATCHES - ONNX_REFUSED


@pytest.mark.parametrize("case, form", ONNX_CASES)
def test_onnx_export_parity(case, form, tmp_path):
    """The exported prefill graph, run by ONNX Runtime on the ragged left-padded batch, equals the reference."""
    from components.onnx.generate import open_session

    model = tiny_model("llama")
    tok, enc, pad = _batch()
    built = CASES[case](model, pad)
    onnx_export.export_graphs(model, [p for p, _, _ in built], tmp_path, kv_cache=False, form=form)
    sess, _ = open_session(tmp_path / onnx_export.PREFILL_FILE, "cpu")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    got = torch.from_numpy(sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])
    edits = dict(edit_probs=_chain([e for _, k, e in built if k == "probs"]),
                 edit_out=_chain([e for _, k, e in built if k == "out"]))
    with torch.no_grad(), reference(model, **edits):
        want = model(input_ids=ids, attention_mask=mask,
                     position_ids=onnx_export.position_ids(mask, ids.shape[1])).logits
    valid = mask.bool()
    assert (got - want)[valid].abs().max().item() <= TOL
