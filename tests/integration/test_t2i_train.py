"""The demo-t2i recipe at tiny sizes: captions and tokenizer (one token per word), training lowers the held-out
noise-prediction loss, and the saved folder loads with load_t2i and samples through runner.sample (with a
component scope) the same images as the in-memory model."""

from __future__ import annotations

import pytest
import torch

from components.diffusion import t2i_train as T
from components.diffusion.pipeline import load_t2i, save_t2i
from components.diffusion.softpag import SoftPAG

TINY = dict(image_size=16, channels=(8, 16, 16), text_hidden=16, text_layers=1, heads=2)


def test_captions_and_word_level_tokenizer():
    scene = {"objects": [{"shape": "square", "colour": "blue", "cell": 7}, {"shape": "circle", "colour": "orange",
                                                                           "cell": 0}], "text": None}
    text = T.caption(scene)
    assert text == "an orange circle at the top left and a blue square at the bottom"
    tok = T.build_tokenizer()
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.split()) + 2 and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    longest = " and ".join(["a purple triangle at the bottom right"] * T.MAX_OBJECTS)
    assert len(tok(longest)["input_ids"]) == T.max_caption_tokens()
    caps = {T.caption(s) for s in T.scenes(0, 300)}
    assert all(tok.unk_token_id not in tok(c)["input_ids"] for c in caps)
    assert {len(s["objects"]) for s in T.scenes(0, 300)} == {1, 2, 3}


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="divisible"):
        T.build_model(**{**TINY, "image_size": 18})
    with pytest.raises(ValueError, match="multiples of heads"):
        T.build_model(**{**TINY, "heads": 3})
    with pytest.raises(ValueError, match="cfg_dropout"):
        T.train(T.build_model(**TINY), steps=1, n_scenes=4, cfg_dropout=1.0)


def test_training_lowers_held_out_loss_and_the_saved_model_samples(tmp_path):
    torch.manual_seed(0)
    model = T.build_model(**TINY)
    held = T.held_out_set(99, 32, TINY["image_size"])
    before = T.held_out_loss(model, held)
    losses = T.train(model, steps=60, n_scenes=64, batch_size=16, lr=3e-3, ema_decay=0.0, progress=False)
    after = T.held_out_loss(model, held)
    assert len(losses) == 60 and after < 0.8 * before, (before, after)
    # EMA path: runs and leaves finite weights.
    assert all(torch.isfinite(torch.tensor(T.train(model, steps=3, n_scenes=8, batch_size=4, ema_decay=0.9,
                                                   mixed_precision=True, progress=False))))
    path = save_t2i(model, tmp_path / "demo")
    loaded = load_t2i(path)
    assert loaded.max_length == T.max_caption_tokens() and loaded.image_size == 16 and loaded.vae is None
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.fingerprint_parts()["weights"] == model.fingerprint_parts()["weights"]
    prompts = ["a red circle at the top left", "a blue square at the bottom and a green triangle at the top"]
    a = T.generate(model, prompts, steps=3, seed=1)
    b = T.generate(loaded, prompts, steps=3, seed=1, components=[SoftPAG(strength=0.5, scale=0.0)])
    assert [im.size for im in a] == [(16, 16)] * 2
    assert [list(im.getdata()) for im in a] == [list(im.getdata()) for im in b]


@pytest.mark.parametrize("prediction", T.PREDICTIONS)
def test_loss_target_is_the_schedulers_prediction_type(prediction):
    """diffusion_loss == MSE(unet(x_t), target) with x_t from the scheduler's add_noise and the target from
    diffusers' get_velocity (v) or the noise (eps); v models sample on trailing timesteps (start at t = 999)."""
    model = T.build_model(**TINY, prediction=prediction)
    sched = model.scheduler
    assert sched.config.prediction_type == prediction
    held = T.held_out_set(3, 4, TINY["image_size"])
    ids = T.tokenize(model, held["captions"])
    x0, noise, t = held["x0"], held["noise"], held["t"]
    with torch.no_grad():
        got = T.diffusion_loss(model, x0, ids, t, noise)
        xt = sched.add_noise(x0, noise, t)
        out = model.unet(xt, t, encoder_hidden_states=model.text_encoder(ids)[0]).sample
    target = sched.get_velocity(x0, noise, t) if prediction == "v_prediction" else noise
    assert torch.allclose(got, torch.nn.functional.mse_loss(out, target), rtol=1e-5, atol=1e-7)
    sched.set_timesteps(10)
    assert int(sched.timesteps[0]) == (999 if prediction == "v_prediction" else 901)
    with pytest.raises(ValueError, match="prediction 'x0'"):
        T.build_model(**TINY, prediction="x0")
