"""The generations and similarity caches on a tiny random Llama: resumable, refusing other inputs, and scoring every
uncertainty method from them without generating; pluggable cross-encoder / NLI models built here."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

import registry
from components.data import DataSourceError
from components.uncertainty import _generate
from tasks import generations as G
from tasks import similarity_cache as S
from tasks.models import load_model
from tasks.pawn_cache import CacheMismatchError
from tasks.uncertainty import plan_methods, score_all
from tasks.uncertainty_data import prepare_qa, read_qa
from tests.helpers.tiny import save_tiny, tokenizer

CONFIG = dict(n_samples=2, max_new_tokens=4, shard_size=2, batch_size=2, template="Q: {question}\nA:", stop=["\n"])


def _qa(path, n=4, offset=0):
    path.write_text("\n".join(json.dumps({"question": f"what is abc:{i:03d}?", "answers": [f"xyz:{i * 7:03d}"]})
                              for i in range(offset, offset + n)))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, attnflow_home):
    tmp = tmp_path_factory.mktemp("gens")
    lm = load_model.fn(str(save_tiny(tmp / "tiny")))
    data = prepare_qa.fn(str(_qa(tmp / "qa.jsonl")))
    return tmp, lm, data


def _rows(cache_dir):
    return G.load_table(cache_dir)[1].drop(["sample_emb"]).to_pylist()


def test_cache_resumes_after_interruption_and_reuses(setup, monkeypatch):
    tmp, lm, data = setup
    config = G.sampling_config(**CONFIG)
    whole = G.build(lm, data, config, cache_dir=str(tmp / "whole"))
    assert whole["complete"] and whole["computed_shards"] == [0, 1]
    real, calls = _generate.generate, []

    def dies_on_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted")
        return real(*a, **k)

    monkeypatch.setattr(_generate, "generate", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        G.build(lm, data, config, cache_dir=str(tmp / "part"))
    assert len(G.read_manifest(tmp / "part")["shards"]) == 1
    monkeypatch.setattr(_generate, "generate", real)
    resumed = G.build(lm, data, config, cache_dir=str(tmp / "part"))
    assert resumed["computed_shards"] == [1] and resumed["complete"]
    assert _rows(tmp / "part") == _rows(tmp / "whole")  # same samples as an uninterrupted build
    again = G.build(lm, data, config, cache_dir=str(tmp / "whole"))
    assert again["computed_shards"] == []
    row = _rows(tmp / "whole")[0]
    assert len(row["sample_ids"]) == 2 and [len(x) for x in row["sample_ids"]] == [len(x) for x in row["sample_nll"]]


def test_cache_refuses_other_model_data_or_sampling(setup, tmp_path):
    tmp, lm, data = setup
    config = G.sampling_config(**CONFIG)
    built = G.build(lm, data, config, cache_dir=str(tmp / "whole"))
    other_lm = load_model.fn(str(save_tiny(tmp_path / "other", seed=1)))
    with pytest.raises(CacheMismatchError, match="built from model"):
        G.build(other_lm, data, config, cache_dir=str(tmp / "whole"))
    other_data = prepare_qa.fn(str(_qa(tmp_path / "qa2.jsonl", offset=10)))
    with pytest.raises(CacheMismatchError, match="built from data"):
        G.build(lm, other_data, config, cache_dir=str(tmp / "whole"))
    with pytest.raises(CacheMismatchError, match="built from sampling config"):
        G.build(lm, data, G.sampling_config(**{**CONFIG, "max_new_tokens": 3}), cache_dir=str(tmp / "whole"))
    # default directories are keyed by the inputs: another model or seed gets another key
    key = G.generations_key(G.identity(lm, data, config))
    assert key == built["key"]
    assert G.generations_key(G.identity(other_lm, data, config)) != key
    assert G.generations_key(G.identity(lm, data, G.sampling_config(**{**CONFIG, "seed": 1}))) != key
    with pytest.raises(CacheMismatchError, match="sampled from model"):
        S.build_similarity(other_lm, tmp / "whole")


def test_scoring_all_methods_from_the_cache_never_generates(setup, monkeypatch):
    tmp, lm, data = setup
    gens = G.build(lm, data, G.sampling_config(**CONFIG))
    sims = S.build_similarity(lm, gens["dir"])
    assert S.similarity_dirs(gens["dir"]) == [sims["dir"]]

    def forbidden(*a, **k):
        raise AssertionError("generated while scoring")

    for name in ("generate", "rescore", "hidden_relevance", "_last_hidden"):
        monkeypatch.setattr(_generate, name, forbidden)
    monkeypatch.setattr(torch.nn.Module, "__call__", forbidden)
    methods = plan_methods.fn([i.name for i in registry.latest("uncertainty")])
    out = score_all(methods, gens["dir"], sims["dir"])
    assert set(out["scores"]) == {m.label for m in methods} and len(out["greedy"]) == 4
    for scores in out["scores"].values():
        assert scores.shape == (4,) and all(s == s for s in scores)


def _pair_model(path, num_labels, id2label=None):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=num_labels, pad_token_id=0,
                     **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}))
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok = tokenizer()
    tok.save_pretrained(path)
    return str(path)


def test_cross_encoder_and_nli_backends(setup, tmp_path):
    tmp, lm, data = setup
    gens = G.build(lm, data, G.sampling_config(**CONFIG))
    ce = _pair_model(tmp_path / "ce", 1)
    nli = _pair_model(tmp_path / "nli", 3, {0: "contradiction", 1: "neutral", 2: "entailment"})
    sims = S.build_similarity(lm, gens["dir"], ce, nli)
    assert sims["similarity"]["kind"] == "model" and sims["entailment"]["kind"] == "model"
    table = pq.read_table(f"{sims['dir']}/shard-00000.parquet").to_pylist()
    for row in table:
        assert len(row["similarity"]) == 4 and all(0 <= x <= 1 for x in row["similarity"] + row["entailment"])
    data_out = S.load_samples(gens["dir"], sims["dir"])
    q = data_out["questions"][0]
    assert q.similarity[0, 1] == q.similarity[1, 0] and [len(r) for r in q.relevance] == [len(n) for n in q.nll]
    with pytest.raises(ValueError, match="has 3 outputs"):
        S.build_similarity(lm, gens["dir"], nli, "rouge")
    bad = _pair_model(tmp_path / "bad", 2, {0: "yes", 1: "no"})
    with pytest.raises(ValueError, match="one label naming entailment"):
        S.build_similarity(lm, gens["dir"], "hidden", bad)
    with pytest.raises(ValueError, match="similarity backend './nope'"):
        S.build_similarity(lm, gens["dir"], "./nope", "rouge")


def test_bad_data_fails_before_compute(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_qa(str(tmp_path / "missing.jsonl"))
    (tmp_path / "qa.txt").write_text("x")
    with pytest.raises(DataSourceError, match="expected one of"):
        read_qa(str(tmp_path / "qa.txt"))
    path = _qa(tmp_path / "qa.jsonl")
    with pytest.raises(DataSourceError, match="no field 'answer'"):
        read_qa(str(path), answers_field="answer")
    (tmp_path / "qa.csv").write_text("Question,Correct Answers\nWhy?,Because; For no reason\n")
    assert read_qa(str(tmp_path / "qa.csv"), "Question", "Correct Answers") == [
        {"id": "0", "question": "Why?", "references": ["Because", "For no reason"]}]
    with pytest.raises(ValueError, match="template must contain"):
        G.sampling_config(template="no placeholder")
