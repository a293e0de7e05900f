"""Wings (arXiv:2406.03496) on a tiny random LLaVA: every learner layer equals a float64 loop reference of the
formula on a ragged left-padded batch; zero-initialised learners leave the model unchanged; cached decoding equals
full recomputation; training moves only the adapter (Wings learners, or LoRA for the comparison); a saved adapter
reproduces the outputs; bad adapters are refused before any forward."""

from __future__ import annotations

import math

import pytest
import torch

from components import vlm_adapters, vlm_train
from components.attention.session import applied
from components.base import ParamError
from components.patches.wings import Wings, WingsConfig, WingsLearners
from registry import get
from tests.helpers.threads import one_thread  # noqa: F401
from tests.helpers.tiny_vlm import tiny_llava_with_processor, tiny_vlm, vlm_batch


def _random_learners(model, seed=3, layers=None):
    learners = WingsLearners.for_model(model, layers, rank=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learners.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return learners


def _rope64(x, pos, theta):  # x (dh,), pos int
    dh = len(x)
    out = torch.empty_like(x)
    for i in range(dh // 2):
        ang = pos * theta ** (-2 * i / dh)
        c, s = math.cos(ang), math.sin(ang)
        out[i] = x[i] * c - x[i + dh // 2] * s
        out[i + dh // 2] = x[i + dh // 2] * c + x[i] * s
    return out


class _Lorra64:
    """One learner in float64 for one batch row: keys and values of every feature row computed once."""

    def __init__(self, m, feats, pos, n_heads, theta):
        self.w = {n: (getattr(m, n).b.weight.double() @ getattr(m, n).a.weight.double()).detach() for n in "qkvo"}
        self.h, self.theta, self.d = n_heads, theta, feats.shape[1]
        self.dh = self.d // n_heads
        self.keys = {j: [_rope64((f + self.w["k"] @ f)[h * self.dh:(h + 1) * self.dh], pos[j], theta)
                         for h in range(n_heads)] for j, f in enumerate(feats) if j in pos}
        self.values = {j: f + self.w["v"] @ f for j, f in enumerate(feats) if j in pos}

    def __call__(self, x, keys, pos_q):
        """One query x (d,) at position pos_q against the key indices ``keys`` -> (d,)."""
        if not keys:
            return torch.zeros(self.d, dtype=torch.float64)
        q = x + self.w["q"] @ x
        ctx = torch.zeros(self.d, dtype=torch.float64)
        for h in range(self.h):
            sl = slice(h * self.dh, (h + 1) * self.dh)
            qh = _rope64(q[sl], pos_q, self.theta)
            scores = [float(self.keys[j][h] @ qh) / math.sqrt(self.dh) for j in keys]
            mx = max(scores)
            e = [math.exp(v - mx) for v in scores]
            ctx[sl] = sum(ei / sum(e) * self.values[j][sl] for ei, j in zip(e, keys))
        return self.w["o"] @ ctx


def _capture(model, inputs, patch=None):
    """Per decoder layer: (input hidden state, output hidden state); and the language model's input embeddings."""
    layers = model.model.language_model.layers
    seen, emb = {}, {}
    hooks = [layer.register_forward_hook(
        lambda mod, args, kwargs, out, i=i: seen.__setitem__(i, (args[0] if args else kwargs["hidden_states"], out)),
        with_kwargs=True) for i, layer in enumerate(layers)]
    hooks.append(model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: emb.__setitem__("x", kwargs["inputs_embeds"]), with_kwargs=True))
    try:
        with torch.no_grad():
            if patch is None:
                model(**inputs)
            else:
                with applied(model, patch):
                    model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen, emb["x"]


def test_learner_layers_equal_a_float64_loop_reference_on_a_ragged_batch():
    model = tiny_vlm("llava")
    inputs, expected = vlm_batch("llava")  # row 1 is left-padded; 2 images in row 0, 1 in row 1
    learners = _random_learners(model)
    cfg = learners.cfg
    seen, feats = _capture(model, inputs, Wings.of(learners))
    feats = feats.detach()
    mask = inputs["attention_mask"]
    for layer_idx, layer in enumerate(model.model.language_model.layers):
        h_in, h_out = seen[layer_idx]
        block = learners.blocks[str(layer_idx)]
        with torch.no_grad():  # stock eager attention on the same input: attention output and probabilities
            model.config.get_text_config()._attn_implementation = "eager"
            normed = layer.input_layernorm(h_in)
            pos_ids = torch.arange(h_in.shape[1])[None].expand(h_in.shape[0], -1)
            cos, sin = model.model.language_model.rotary_emb(h_in, pos_ids)
            attn_out, probs = layer.self_attn(normed, position_embeddings=(cos, sin), attention_mask=_mask4d(mask))
            model.config.get_text_config()._attn_implementation = "sdpa"
        x = (h_in + attn_out).double().detach()
        for b in range(x.shape[0]):
            real = [j for j in range(x.shape[1]) if mask[b, j]]
            pos = {j: k for k, j in enumerate(real)}  # positions from the row's first real token
            f = feats[b].double()
            images = [j for j in real if expected[b, j]]
            texts = [j for j in real if not expected[b, j]]
            delta = torch.zeros_like(x[b])
            visual = _Lorra64(block.visual, f, pos, cfg.n_heads, cfg.rope_theta)
            textual = _Lorra64(block.textual, f, pos, cfg.n_heads, cfg.rope_theta)
            for i in real:
                a = probs[b, :, i].double().sum(0)  # (S,) summed over heads
                logit = sum(a[j] * block.router.linear.weight[:, pos[j]].double() for j in real)
                logit = logit + block.router.linear.bias.double()
                r = torch.softmax(torch.nn.functional.silu(logit), 0)
                vis = visual(x[b, i], images, pos[i])
                txt = textual(x[b, i], [j for j in texts if pos[j] <= pos[i]], pos[i])
                delta[i] = r[0] * vis + r[1] * txt
            xb = x[b] + delta
            ref = xb + layer.mlp.double()(layer.post_attention_layernorm.double()(xb))
            layer.float()
            assert torch.allclose(h_out[b, real].double(), ref[real], atol=2e-4, rtol=1e-4), (layer_idx, b)


def _mask4d(mask):
    t = mask.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    allowed = causal[None, None] & mask.bool()[:, None, None, :]
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


def test_zero_initialised_learners_leave_the_model_unchanged():
    model = tiny_vlm("llava")
    inputs, _ = vlm_batch("llava")
    baseline = get("baseline").create({})
    with torch.no_grad():
        stock = model(**inputs).logits
        with applied(model, baseline, force="materialize"):
            materialised = model(**inputs).logits
        with applied(model, Wings.of(WingsLearners.for_model(model))):
            wings = model(**inputs).logits
    assert torch.equal(wings, materialised)  # learners add exactly 0; same attention path
    assert torch.allclose(wings, stock, atol=1e-5)


def test_cached_decoding_equals_full_recomputation():
    model = tiny_vlm("llava")
    inputs, _ = vlm_batch("llava")
    patch = Wings.of(_random_learners(model, layers=(1,)))
    with torch.no_grad(), applied(model, patch):
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        seq = out.sequences
        full = model(input_ids=seq, attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(
            seq[:, inputs["input_ids"].shape[1]:])], 1), pixel_values=inputs["pixel_values"]).logits
    t0 = inputs["input_ids"].shape[1]
    for k, step in enumerate(out.logits):
        assert torch.allclose(step, full[:, t0 - 1 + k], atol=1e-4), k


def _train_rows(n=8):
    return vlm_train.stage_rows("instruct", 0, n)


@pytest.mark.parametrize("kind", ["wings", "lora"])
def test_a_few_steps_train_only_the_adapter(kind):
    model, proc = tiny_llava_with_processor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = vlm_adapters.prepare(model, kind, rank=4)
    start = [p.detach().clone() for p in prepared.params]
    losses = vlm_train.train_stage(prepared.model, proc, _train_rows(), steps=3, batch_size=4, lr=1e-2,
                                   image_size=32, progress=False, params=prepared.params, scope=prepared.scope)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, p) for a, p in zip(start, prepared.params))
    final = vlm_adapters.finish(prepared)
    after = final.state_dict()
    assert set(after) == set(before)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    if kind == "wings":
        assert changed == []  # the model itself is untouched; only the learners moved
    else:  # LoRA merged into the language model's attention projections only
        assert changed and all("language_model" in k and k.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj",
                                                                                  "o_proj") for k in changed)


def test_saved_adapter_reproduces_outputs_and_keys_caches(tmp_path):
    model = tiny_vlm("llava")
    inputs, _ = vlm_batch("llava")
    learners = _random_learners(model, layers=(0,))
    path = learners.save(tmp_path / "wings")
    loaded = Wings(adapter=str(path))
    with torch.no_grad():
        with applied(model, Wings.of(learners)):
            a = model(**inputs).logits
        with applied(model, loaded):
            b = model(**inputs).logits
    assert torch.equal(a, b)
    assert loaded.adapter_sha256 and Wings(adapter=str(path), adapter_sha256=loaded.adapter_sha256)
    first = loaded.fingerprint()
    with torch.no_grad():
        learners.blocks["0"].router.linear.bias.add_(1.0)
    learners.save(path)
    assert Wings(adapter=str(path)).fingerprint() != first  # new weights, new cache key


def test_bad_adapters_are_refused_before_any_forward(tmp_path):
    model = tiny_vlm("llava")
    calls = []
    model.model.language_model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ParamError, match="not a Wings adapter folder"):
        with applied(model, Wings(adapter=str(tmp_path / "missing"))):
            pass
    other = WingsLearners(WingsConfig(layers=(0,), hidden=32, n_heads=4))
    with pytest.raises(ParamError, match="does not fit the model"):
        with applied(model, Wings(adapter=str(other.save(tmp_path / "other")))):
            pass
    path = WingsLearners.for_model(model).save(tmp_path / "ok")
    with pytest.raises(ParamError, match="does not match"):
        Wings(adapter=str(path), adapter_sha256="0" * 64)
    for bad, message in ((dict(layers=(0, 0)), "distinct"), (dict(rank=0), "rank"), (dict(n_heads=3), "head size")):
        with pytest.raises(ParamError, match=message):
            WingsConfig(**{**dict(layers=(0,), hidden=64, n_heads=4), **bad})
    with pytest.raises(ParamError, match="layer >= the model's 2"):
        WingsLearners.for_model(model, layers=(2,))
    with pytest.raises(ParamError, match="not one of"):
        vlm_adapters.check("prefix", 4, None)
    assert calls == []
