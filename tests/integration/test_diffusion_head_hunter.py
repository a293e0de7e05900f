"""HeadHunter's greedy head search (components/diffusion/head_hunter.py) on a tiny random UNet: candidates are the
self-attention heads, the first pick is the best single head, each round adds the head that maximises the
objective over the pool (checked against brute force), the recorded scores are what the objective gives for
those sets, bad parameters fail before any sampling, and the UNet is left as it was."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from components.diffusion.head_hunter import candidate_heads, hunt
from components.diffusion.runner import encode_prompts, sample
from components.diffusion.softpag import SoftPAG
from components.heads import HeadSet
from tests.helpers.tiny_diffusion import tiny_text_encoder, tiny_tokenizer, tiny_unet


@pytest.fixture(scope="module")
def setup():
    unet, tok, te = tiny_unet(), tiny_tokenizer(), tiny_text_encoder()
    cond, _ = encode_prompts(tok, te, ["a red circle"])
    uncond, _ = encode_prompts(tok, te, [""])

    def run(comps):
        return sample(unet, DDIMScheduler(num_train_timesteps=50), cond, uncond=uncond, cfg_scale=2.0,
                      components=comps, steps=2, seed=3)

    return unet, run


def test_candidates_are_the_self_attention_heads(setup):
    unet, _ = setup
    heads = candidate_heads(unet)
    selfs = [i for i, (n, m) in enumerate((n, m) for n, m in unet.named_modules()
                                           if type(m).__name__ == "Attention") if not m.is_cross_attention]
    assert sorted({layer for layer, _ in heads}) == selfs and len(heads) == 4 * len(selfs)
    assert {layer for layer, _ in candidate_heads(unet, blocks=("mid_block",))} < set(selfs)
    with pytest.raises(ValueError, match="no self-attention module in blocks"):
        candidate_heads(unet, blocks=("nowhere",))


def test_greedy_search_matches_brute_force(setup):
    unet, run = setup
    blocks = ("mid_block", "up_blocks.1")
    cands = candidate_heads(unet, blocks)[:6]
    target = run([SoftPAG(scale=3.0, blocks=blocks, heads=HeadSet.of([cands[4], cands[1]]))])
    seen = []

    def objective(comp):
        seen.append(comp.heads)
        return -float((run([comp]) - target).pow(2).mean())

    before = {k: v.clone() for k, v in unet.state_dict().items()}
    procs = dict(unet.attn_processors)
    res = hunt(objective, cands, blocks=blocks, pool=len(cands), rounds=3)
    assert res.calls == len(seen) == 6 + 5 + (4 if len(res.steps) >= 2 else 0)
    assert res.steps[0].head == max(cands, key=lambda h: (res.single[h], -h[0], -h[1]))
    # round 2 = the best pair containing the first head, over every other candidate (brute force)
    pair = {h: objective(SoftPAG(scale=3.0, blocks=blocks, heads=HeadSet.of([res.steps[0].head, h])))
            for h in cands if h != res.steps[0].head}
    assert res.steps[1].head == max(pair, key=pair.get)
    for step in res.steps:  # each recorded score is the objective of its set, and scores only go up
        assert objective(SoftPAG(scale=3.0, blocks=blocks, heads=HeadSet.of(step.heads))) == step.score
    assert all(b.score > a.score for a, b in zip(res.steps, res.steps[1:]))
    assert res.heads == HeadSet.of(res.steps[-1].heads)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in procs.items()}


def test_bad_parameters_fail_before_sampling(setup):
    unet, _ = setup

    def objective(comp):
        raise AssertionError("sampled")

    cands = candidate_heads(unet)
    for kwargs, message in (({"pool": 0}, "pool"), ({"rounds": 0}, "rounds"), ({"strength": 2.0}, "strength")):
        with pytest.raises(Exception, match=message):
            hunt(objective, cands, **kwargs)
    with pytest.raises(ValueError, match="repeat"):
        hunt(objective, [cands[0], cands[0]])
    with pytest.raises(ValueError, match="no candidate"):
        hunt(objective, [])
