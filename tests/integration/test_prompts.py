"""Prompt components (family ``prompt``): PGI template, SCA variants + integrated gradients, BM25 retrieval QA."""

from __future__ import annotations

import json
import math

import pytest
import torch

from components.base import ParamError
from components.benchmarks._userdata import combine_variants, score_options
from components.prompts import _bm25, _ig, sca
from components.prompts.base import PromptRowError
from registry.specs import parse
from tests.helpers.tiny import tiny_model, tokenizer

pytestmark = pytest.mark.integration


def rows() -> list[dict]:
    """Rows as classification builds them: demonstrations + query, with the raw content."""
    out = []
    for i, (text, label) in enumerate([("the film was a joy. I loved it", " positive"),
                                       ("a dull and tired story", " negative"),
                                       ("bright, warm and funny", " positive")]):
        demo = "Input: nice work\nLabel: positive\n\n"
        query = f"Input: {text}\nLabel:"
        out.append({"prompt": demo + query, "query": query, "content": text, "target": label,
                    "answer": label.strip(), "choices": [" negative", " positive"]})
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def prompt(spec: str):
    return parse(spec).create("prompt")


# -- PGI ------------------------------------------------------------------------------------------------------------
def test_pgi_puts_the_three_parts_before_the_prompt_or_the_query():
    r = rows()[0]
    pgi = prompt("pgi(persona=P.,grouping=G.,intelligence=I.)")
    assert pgi.rewrite(None, None, [r])[0]["prompt"] == "P.\nG.\nI.\n" + r["prompt"]
    at_query = prompt("pgi(persona=P.,grouping=,intelligence=I.,position=query)").rewrite(None, None, [r])[0]
    assert at_query["prompt"] == "Input: nice work\nLabel: positive\n\nP.\nI.\n" + r["query"]


def test_identity_prompt_components_equal_the_plain_prompt(model):
    tok = tokenizer()
    plain = score_options(model, tok, rows(), session=None, batch_size=4, progress=False)
    for spec in ("pgi(persona=,grouping=,intelligence=)", "sca(n_paraphrases=0)"):
        comp = prompt(spec)
        assert comp.is_identity()
        new = comp.rewrite(model, tok, rows())
        assert [r["prompt"] for r in new] == [r["prompt"] for r in rows()]
        got = score_options(model, tok, new, session=None, batch_size=4, progress=False)
        assert got.metrics == plain.metrics and got.examples == plain.examples


def test_rows_without_content_are_refused_before_any_work():
    with pytest.raises(PromptRowError, match="prompt, query and content"):
        prompt("pgi").rewrite(None, None, [{"prompt": "x"}])


# -- SCA ------------------------------------------------------------------------------------------------------------
def test_sca_pauses_at_sentence_ends_start_and_end():
    assert prompt("sca(pause_tokens=2,pause_position=sentence,n_paraphrases=0)").with_pauses("A b. C d") == \
        "A b. [PAUSE] [PAUSE] C d [PAUSE] [PAUSE]"
    assert prompt("sca(pause_tokens=1,pause_position=start,n_paraphrases=0)").with_pauses("A b.") == "[PAUSE] A b."
    assert prompt("sca(pause_tokens=1,n_paraphrases=0)").with_pauses("A b.") == "A b. [PAUSE]"


def test_sca_is_deterministic_for_a_seed(model):
    tok = tokenizer()
    comp = prompt("sca(n_paraphrases=2,max_new_tokens=8,ig_steps=4,pause_tokens=1,seed=3)")
    first = comp.rewrite(model, tok, rows())
    sca._CHOSEN.clear()  # recomputed, not served from this process's selections
    again = comp.rewrite(model, tok, list(reversed(rows())))[::-1]  # row order does not matter either
    assert [r["prompt"] for r in first] == [r["prompt"] for r in again]
    assert [r["sca_scores"] for r in first] == [r["sca_scores"] for r in again]
    for r, orig in zip(first, rows()):  # the chosen variant replaced the content, the rest of the prompt is kept
        assert r["prompt"].startswith("Input: nice work\nLabel: positive\n\nInput: ")
        assert r["sca_variant"].endswith("[PAUSE]") and r["sca_variant"] in r["prompt"]
        assert len(json.loads(r["sca_scores"])) >= 1


def test_sca_reads_paraphrases_from_a_file_and_picks_by_attribution(model, tmp_path):
    path = tmp_path / "para.jsonl"
    path.write_text(json.dumps({"text": "a dull and tired story", "paraphrases": ["a boring, worn-out tale"]}) + "\n")
    comp = prompt(f"sca(paraphrase_file={path},selection=content_mass,ig_steps=4)")
    out = comp.rewrite(model, tokenizer(), rows())
    scores = json.loads(out[1]["sca_scores"])
    assert len(scores) == 2 and out[1]["sca_variant"] == ["a dull and tired story", "a boring, worn-out tale"][
        max(range(2), key=scores.__getitem__)]
    assert json.loads(out[0]["sca_scores"]) == [0.0]  # no paraphrase for this content: the original, unscored
    assert comp.data_fingerprint()


@pytest.mark.parametrize("spec, message", [
    ("sca(n_paraphrases=3,sampling=greedy)", "greedy decoding gives one paraphrase"),
    ("sca(ig_steps=0)", "ig_steps=0 is out of range"),
    ("sca(paraphrase_file=/nope.jsonl)", "does not exist"),
    ("sca(paraphrase_prompt=Rewrite)", "must contain {text}"),
])
def test_sca_bad_parameters_fail_at_construction(spec, message):
    with pytest.raises(ParamError, match=message):
        prompt(spec)


@pytest.mark.parametrize("baseline", ["zero", "pad"])
def test_integrated_gradients_satisfy_completeness(model, baseline):
    tok = tokenizer()
    ids = tok("Input: the film was a joy\nLabel:")["input_ids"]
    attr = _ig.integrated_gradients(model, ids, steps=256, baseline=baseline, pad_id=tok.pad_token_id, chunk=64)
    gap = attr.f_input - attr.f_baseline
    assert abs(gap) > 1e-2  # a non-trivial difference to explain
    assert abs(sum(attr.scores) - gap) < 0.01 * abs(gap) + 1e-4
    coarse = _ig.integrated_gradients(model, ids, steps=2, baseline=baseline, pad_id=tok.pad_token_id)
    assert coarse.target == attr.target and len(coarse.scores) == len(ids)


def test_uniform_points_miss_the_rmsnorm_step_near_a_zero_baseline(model):
    """Why the default spacing is 3: with a = t (uniform) the sum is far from the gap at the same step count."""
    ids = tokenizer()("Input: the film was a joy\nLabel:")["input_ids"]
    uniform = _ig.integrated_gradients(model, ids, steps=64, spacing=1.0, chunk=64)
    packed = _ig.integrated_gradients(model, ids, steps=64, spacing=3.0, chunk=64)
    gap = packed.f_input - packed.f_baseline
    assert abs(sum(packed.scores) - gap) < abs(sum(uniform.scores) - gap)


def test_integrated_gradients_f_is_the_top_token_logprob(model):
    tok = tokenizer()
    ids = tok("Input: bright\nLabel:")["input_ids"]
    attr = _ig.integrated_gradients(model, ids, steps=2)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
    assert attr.target == int(logp.argmax()) and attr.f_input == pytest.approx(float(logp.max()), abs=1e-5)


# -- retrieval-augmented QA -----------------------------------------------------------------------------------------
FILLER = ["The river runs past the old mill in spring.", "Bakers rise early to prepare bread for the town.",
          "A comet was seen over the northern hills last year.", "The library keeps maps of every valley.",
          "Farmers trade wool and cheese at the market."]


def corpus(tmp_path, planted: str = "The capital of Quintoria is Zorblax, a city of bridges.") -> str:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in FILLER[:2] + [planted] + FILLER[2:]))
    return str(path)


def test_retrieval_returns_the_planted_paragraph(tmp_path):
    rag = prompt(f"rag(corpus={corpus(tmp_path)},k=2,chunk_sentences=1,cache_dir={tmp_path / 'cache'})")
    hits = rag.retrieve(["What is the capital of Quintoria?", "Who rises early to bake bread?"])
    assert hits[0][0][0].startswith("The capital of Quintoria is Zorblax")
    assert hits[1][0][0] == "Bakers rise early to prepare bread for the town."
    assert hits[0][0][1] > hits[0][1][1]


def test_index_is_cached_and_rebuilt_when_the_corpus_changes(tmp_path):
    path = corpus(tmp_path)
    cache = tmp_path / "cache"
    spec = f"rag(corpus={path},k=1,chunk_sentences=1,cache_dir={cache})"
    _bm25.clear_memory()
    assert prompt(spec).index().built
    key = prompt(spec).data_fingerprint()
    _bm25.clear_memory()  # a new process: read from disk, not rebuilt
    again = prompt(spec).index()
    assert not again.built and again.key == key and sorted(p.name for p in cache.iterdir()) == [key]
    corpus(tmp_path, planted="The capital of Quintoria is Vellmar.")  # same path, new content
    changed = prompt(spec)
    assert changed.data_fingerprint() != key
    index = changed.index()
    assert index.built and changed.retrieve(["capital of Quintoria"])[0][0][0] == "The capital of Quintoria is Vellmar."
    assert len(list(cache.iterdir())) == 2


def test_rag_builds_one_prompt_per_paragraph_and_reranks(model, tmp_path):
    rag = prompt(f"rag(corpus={corpus(tmp_path)},k=3,chunk_sentences=1,cache_dir={tmp_path / 'c'},scoring=mixture)")
    out = rag.rewrite(model, tokenizer(), rows())
    r = out[0]
    assert len(r["prompt_variants"]) == 3 and r["variant_combine"] == "logsumexp"
    assert all(v.startswith("Input: nice work\nLabel: positive\n\nEvidence: ") and v.endswith(r["query"])
               for v in r["prompt_variants"])
    assert math.isclose(sum(math.exp(w) for w in r["variant_prior"]), 1.0, rel_tol=1e-6)
    result = score_options(model, tokenizer(), out, session=None, batch_size=4, progress=False)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and len(result.examples) == 3


def test_variant_combination_by_hand():
    scores = [[-1.0, -3.0], [-2.0, -0.5]]  # 2 variants x 2 options
    assert combine_variants(scores, None, "max") == [-1.0, -0.5]
    lse = combine_variants(scores, [math.log(0.25), math.log(0.75)], "logsumexp")
    assert lse[0] == pytest.approx(math.log(0.25 * math.exp(-1) + 0.75 * math.exp(-2)))
    assert lse[1] == pytest.approx(math.log(0.25 * math.exp(-3) + 0.75 * math.exp(-0.5)))
    assert combine_variants([[-1.0, -2.0]], None, "max") == [-1.0, -2.0]


def test_rag_refuses_a_missing_or_unsupported_corpus(tmp_path):
    with pytest.raises(ParamError, match="does not exist"):
        prompt(f"rag(corpus={tmp_path / 'none.jsonl'})")
    (tmp_path / "x.pdf").write_text("x")
    with pytest.raises(ParamError, match="unsupported file type"):
        prompt(f"rag(corpus={tmp_path / 'x.pdf'})")
    with pytest.raises(ParamError, match="required"):
        prompt("rag")
