"""The reusable compressed-prefill cache on a tiny random Llama: one prefill per key, answers identical to the live
cache, a new key for every input that changes the cache, corrupted files recomputed, ratio 0 = no press."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from components.presses._decode import generate_on_cache
from components.scbench import protocol
from registry.specs import ResolvedSpec, parse
from tasks import prefill_cache
from tasks.models import load_model


def _press(text: str) -> ResolvedSpec:
    return ResolvedSpec.of(parse(text).create("press"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from tests.helpers.tiny import save_tiny

    return load_model.fn(str(save_tiny(tmp_path_factory.mktemp("tiny-gqa"), "llama_gqa")))


def _ids(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (1, n), generator=g)


class Forwards:
    """Counts the model's forward calls and the tokens they process."""

    def __init__(self, model):
        self.calls, self.tokens = 0, 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls += 1
        self.tokens += kwargs["input_ids"].shape[1]


@pytest.mark.parametrize("spec", ["snapkv(ratio=0.5, window=8)", "h2o(ratio=0.5)", "adakv(ratio=0.5)",
                                  "pyramidkv(ratio=0.5, window=8)", "streaming_llm(budget=24, evict_every=2)"])
def test_stored_prefill_is_computed_once_and_answers_exactly_as_the_live_cache(loaded, tmp_path, spec):
    press, ctx, q = _press(spec), _ids(0, 64), _ids(1, 6)
    live, _ = generate_on_cache(loaded.model, press.component, ctx, None, q, 8)
    count = Forwards(loaded.model)
    first = prefill_cache.compressed_prefill(loaded, press, ctx, root=tmp_path)
    assert not first.info["hit"] and count.calls == 1 and count.tokens == 64  # one prefill of the context
    second = prefill_cache.compressed_prefill(loaded, press, ctx, root=tmp_path)
    assert second.info["hit"] and count.calls == 1  # served from disk: no second prefill
    count.handle.remove()
    assert second.info["prefill_seconds"] == pytest.approx(first.seconds)
    for pre in (first, second):
        assert torch.equal(protocol._reuse.answer(loaded.model, press.component, pre, q, 8), live)
    assert second.bytes_ratio == first.bytes_ratio < 1.0
    assert second.kv_bytes == first.kv_bytes


def test_every_key_part_gives_another_key(loaded, tmp_path):
    base = _press("snapkv(ratio=0.5, window=8)")
    ctx = _ids(0, 48)
    key = prefill_cache.cache_key(prefill_cache.identity(loaded, base, ctx))
    other_model = load_model.fn(str(_other_model(tmp_path)))
    bf16 = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).to(torch.bfloat16))
    variants = {
        "context": (loaded, base, _ids(5, 48)),
        "context length": (loaded, base, ctx[:, :47]),
        "press": (loaded, _press("knorm(ratio=0.5)"), ctx),
        "press parameter": (loaded, _press("snapkv(ratio=0.5, window=4)"), ctx),
        "ratio": (loaded, _press("snapkv(ratio=0.25, window=8)"), ctx),
        "budget": (loaded, _press("snapkv(budget=20, window=8)"), ctx),
        "model": (other_model, base, ctx),
        "dtype": (bf16, base, ctx),
    }
    keys = {name: prefill_cache.cache_key(prefill_cache.identity(*args)) for name, args in variants.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(keys), keys
    prefill_cache.compressed_prefill(loaded, base, ctx, root=tmp_path)
    for name, (ld, press, ids) in variants.items():  # none of them is served the stored file
        assert not prefill_cache.compressed_prefill(ld, press, ids, root=tmp_path).info["hit"], name


def _other_model(tmp_path):
    from tests.helpers.tiny import save_tiny

    return save_tiny(tmp_path / "other", "llama_gqa", seed=1)


@pytest.mark.parametrize("damage", ["flip", "truncate", "other_key"])
def test_a_damaged_file_is_recomputed_not_trusted(loaded, tmp_path, damage):
    press, ctx, q = _press("h2o(ratio=0.5)"), _ids(2, 40), _ids(3, 5)
    fresh = prefill_cache.compressed_prefill(loaded, press, ctx, root=tmp_path)
    path = prefill_cache.path_for(fresh.info["key"], tmp_path)
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[-100] ^= 0x01  # one bit of a tensor
        path.write_bytes(bytes(blob))
    elif damage == "truncate":
        path.write_bytes(bytes(blob[: len(blob) // 2]))
    else:  # a valid file written for another key, copied under this one
        other = prefill_cache.compressed_prefill(loaded, press, _ids(9, 40), root=tmp_path)
        path.write_bytes(prefill_cache.path_for(other.info["key"], tmp_path).read_bytes())
    with pytest.raises(prefill_cache.CorruptPrefillError):
        prefill_cache.load(path, fresh.info["key"])
    again = prefill_cache.compressed_prefill(loaded, press, ctx, root=tmp_path)
    assert not again.info["hit"] and again.info["rebuilt"]
    assert prefill_cache.compressed_prefill(loaded, press, ctx, root=tmp_path).info["hit"]  # rewritten intact
    want = protocol._reuse.answer(loaded.model, press.component, fresh, q, 6)
    assert torch.equal(protocol._reuse.answer(loaded.model, press.component, again, q, 6), want)


@torch.no_grad()
def _unpressed(model, ctx, q, n):
    """Greedy decoding of the same calls with no press at all."""
    mask = torch.ones_like(ctx)
    cache = model(input_ids=ctx, attention_mask=mask, use_cache=True).past_key_values
    mask = torch.cat([mask, torch.ones_like(q)], 1)
    logits = model(input_ids=q, attention_mask=mask, past_key_values=cache, use_cache=True).logits
    out = []
    for _ in range(n):
        tok = logits[:, -1].argmax(-1, keepdim=True)
        out.append(tok)
        mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
        logits = model(input_ids=tok, attention_mask=mask, past_key_values=cache, use_cache=True).logits
    return torch.cat(out, 1)


def test_ratio_zero_answers_equal_the_unpressed_model_in_both_modes(loaded, tmp_path):
    task = protocol.task_from_spec("kv(n_contexts=1, n_pairs=10, n_queries=3)")
    session, fmt = task.sessions()[0], task.format()
    ctx = protocol.context_ids(loaded.tokenizer, session.context)
    for spec in ("snapkv(ratio=0, window=8)", "streaming_llm(ratio=0)"):
        press = _press(spec)
        pre = prefill_cache.compressed_prefill(loaded, press, ctx, root=tmp_path)
        assert pre.bytes_ratio == 1.0
        for mode in protocol.MODES:
            recs = protocol.run_session(loaded.model, loaded.tokenizer, press.component, pre, session, fmt, mode)
            for i, r in enumerate(recs):
                q = protocol.query_ids(loaded.tokenizer, protocol.follow_up(session, fmt, i, mode))
                want = loaded.tokenizer.decode(_unpressed(loaded.model, ctx, q, fmt.max_new_tokens)[0],
                                               skip_special_tokens=True)
                assert r["output"] == want and r["query_tokens"] == q.shape[1]
            if mode == "multi_turn":
                assert [r["query_tokens"] for r in recs] == sorted(r["query_tokens"] for r in recs)
                assert recs[-1]["query_tokens"] > recs[0]["query_tokens"]
