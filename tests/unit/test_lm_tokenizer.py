"""The train-lm tokenizer: byte-level BPE with digits one per token, or whole-number tokens (``number_tokens``)."""

from __future__ import annotations

import pytest

from components.lm.tokenizer import number_strings, train_tokenizer

CORPUS = ["Tom saw the dog near the river. The pass key is 48213. abc:042 xyz:907."] * 40


def _pieces(tok, text):
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def test_digits_are_one_per_token_by_default():
    tok = train_tokenizer(CORPUS, vocab_size=300)
    assert [p for p in _pieces(tok, "key 48213.") if p.isdigit()] == list("48213")


def test_number_tokens_chunk_numbers_left_to_right_and_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = train_tokenizer(CORPUS, vocab_size=300, number_tokens=3)
    assert len(number_strings(3)) == 1110 and number_strings(2)[:12] == [*"0123456789", "00", "01"]
    cases = {"key 48213.": ["482", "13"], "abc:042 xyz:7": ["042", "7"], "1234567": ["123", "456", "7"],
             "x 00 0 999": ["00", "0", "999"]}
    saved = tmp_path / "tok"
    tok.save_pretrained(saved)
    loaded = AutoTokenizer.from_pretrained(saved)
    for t in (tok, loaded):
        for text, numbers in cases.items():
            assert [p for p in _pieces(t, text) if p.isdigit()] == numbers, text
            assert t.decode(t(text)["input_ids"], skip_special_tokens=True) == text
        assert len(t) == len(tok)
    vocab = tok.get_vocab()
    assert all(s in vocab for s in number_strings(3))  # every 1-3 digit string is in the vocabulary once
    assert len(set(vocab[s] for s in number_strings(3))) == 1110


def test_bad_number_tokens_is_named():
    with pytest.raises(ValueError, match="number_tokens=4"):
        train_tokenizer(CORPUS, vocab_size=300, number_tokens=4)
    from components.base import ParamError
    from components.lm.preset import LMPreset

    with pytest.raises(ParamError, match="model.number_tokens"):
        LMPreset.from_dict("x", {"mixture": [{"task": "kv_retrieval", "weight": 1}]}, {"model.number_tokens": 5})


def test_training_only_parameters_are_dropped_for_evaluation():
    from components.lm.mixture import eval_spec

    assert eval_spec("kv_retrieval(n_pairs=8, queries=8)") == "kv_retrieval(n_pairs=8)"
    assert eval_spec("associative_recall@1.1.0(queries=4)") == "associative_recall@1.1.0"
    assert eval_spec("passkey(lengths=40;80)") == "passkey(lengths=40;80)"
