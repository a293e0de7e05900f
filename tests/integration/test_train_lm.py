"""The LM trainer: loss goes down, checkpoints resume exactly after a kill, the output loads with from_pretrained."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.base import ParamError
from components.lm.model import save_model_dir
from components.lm.preset import LMPreset
from components.lm.trainer import latest_checkpoint, lr_at
from registry.specs import load_preset
from tests.helpers.train_script import run

REPO = Path(__file__).resolve().parents[2]


def test_tiny_training_lowers_loss_and_saves_loadable_dir(tmp_path):
    model, result = run(tmp_path / "ckpt", steps=30)  # tokenizer saved in tmp_path/tokenizer
    first, last = result.losses[0][1], result.losses[-1][1]
    assert last < first - 0.3, result.losses
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.train_script import setup

    _, tok, _, _ = setup(30, tmp_path / "tokenizer")
    out = save_model_dir(model, tok, tmp_path / "model", "# tiny\n")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    tok2 = AutoTokenizer.from_pretrained(out)
    ids = tok2("kv: abc:123. abc:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))


def test_resume_after_kill_loses_no_steps(tmp_path):
    steps = 20
    # Uninterrupted reference run.
    ref_model, _ = run(tmp_path / "ref", steps)
    # Interrupted run: a subprocess killed (SIGKILL) after its first checkpoint, then resumed here.
    ckpt = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.train_script", str(ckpt), str(steps), "0.4"],
                            cwd=REPO, env=env)
    deadline = time.time() + 240
    while latest_checkpoint(ckpt) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = latest_checkpoint(ckpt)
    assert done is not None and done.name == "step-0000005", done  # killed mid-run, after step 5
    model, result = run(ckpt, steps)
    assert result.resumed_from == 5 and result.step == steps
    for (name, a), (_, b) in zip(model.state_dict().items(), ref_model.state_dict().items()):
        assert torch.equal(a, b), name  # exactly the weights of the uninterrupted run


def test_lr_schedule_warmup_then_cosine():
    spec = LMPreset.from_dict("tiny", load_preset("lm/tiny"), {"train.steps": 100, "train.warmup": 10}).train
    lrs = [lr_at(s, spec) for s in range(100)]
    assert lrs[0] == pytest.approx(spec.lr / 10) and lrs[9] == pytest.approx(spec.lr)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(spec.lr * spec.min_lr_ratio, rel=0.05)


def test_bad_preset_is_named():
    from components.base import ParamError

    with pytest.raises(ParamError, match="model.hidden=30 must be divisible by model.heads=4"):
        LMPreset.from_dict("x", load_preset("lm/tiny"), {"model.hidden": 30, "model.heads": 4})
    with pytest.raises(ParamError, match="unknown key"):
        LMPreset.from_dict("x", {"model": {"width": 3}, "mixture": [{"text": "builtin:stories", "weight": 1}]})


def test_init_from_continues_a_saved_model_and_rejects_other_shapes(tmp_path):
    from components.base import ParamError
    from components.lm.model import build_model, load_weights
    from tests.helpers.train_script import setup

    spec, tok, _, model = setup(5, tmp_path / "tokenizer")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # differ from the seed's fresh initialisation
    src = save_model_dir(model, tok, tmp_path / "src", "# src\n")
    fresh = build_model(spec.model, tok, seed=spec.train.seed)
    load_weights(fresh, src)
    for (name, a), (_, b) in zip(fresh.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    wider = LMPreset.from_dict("x", load_preset("lm/tiny"), {"model.hidden": 2 * spec.model.hidden}).model
    with pytest.raises(ValueError, match="does not match the preset's model"):
        load_weights(build_model(wider, tok), src)
    with pytest.raises(ParamError, match="train.init_from=.*missing config.json"):
        LMPreset.from_dict("x", load_preset("lm/tiny"), {"train.init_from": str(tmp_path)})
    ok = LMPreset.from_dict("x", load_preset("lm/tiny"), {"train.init_from": str(src)})
    assert ok.train.init_from == str(src)


def test_task_loss_answers_labels_only_the_answer_tokens():
    """task_loss=answers: a task example's labels are its answers (the values of every query, each with the comma
    that ends it, and EOS after the last); text items still train on every token. task_loss=all labels every
    non-padding token."""
    from components.lm.mixture import Mixture
    from components.lm.tokenizer import train_tokenizer

    data = {"model": {"context": 256, "vocab_size": 400},
            "mixture": [{"task": "kv_retrieval(n_pairs=5, queries=3)", "weight": 1},
                        {"task": "passkey(lengths=20)", "weight": 1}, {"text": "builtin:stories", "weight": 1}]}
    spec = LMPreset.from_dict("x", data, {"train.task_loss": "answers", "train.batch_size": 4})
    tok = train_tokenizer(Mixture(spec, None).texts_for_tokenizer(n_per_item=200), 400)
    mix, mix_all = Mixture(spec, tok), Mixture(LMPreset.from_dict("x", data, {"train.batch_size": 4}), tok)
    seen = set()
    for step in range(40):
        b, b_all = mix.batch(step), mix_all.batch(step)
        assert torch.equal(b["input_ids"], b_all["input_ids"])  # same data, only the labels differ
        assert torch.equal(b_all["labels"] != -100, b_all["attention_mask"] == 1)
        source = spec.mixture[b["item"]]
        seen.add(source.task or source.text)
        for ids, labels in zip(b["input_ids"], b["labels"]):
            kept = tok.decode(ids[labels != -100])
            if source.text:
                assert torch.equal(labels != -100, ids != tok.pad_token_id)
            elif source.task.startswith("kv_retrieval"):
                values = kept.removesuffix(tok.eos_token).split(",")
                assert len(values) == 3 and all(v.strip() and " " not in v.strip() for v in values), kept
                assert kept.endswith(tok.eos_token)
            else:  # passkey: the whole target " 48213." and EOS
                assert re.fullmatch(r" \d{5}\.</s>", kept), kept
    assert len(seen) == 3
    with pytest.raises(ParamError, match="train.task_loss: 'prompt' is not one of 'all', 'answers'"):
        LMPreset.from_dict("x", data, {"train.task_loss": "prompt"})


def test_staged_preset_reference_is_validated(tmp_path):
    """train.init_from: preset:<name> names another LM preset (a training stage); an unknown one is named with the
    presets that exist, before any work. The trained stage it then continues from must be a model directory."""
    spec = LMPreset.from_dict("demo", load_preset("lm/demo"))
    assert spec.train.stage_preset == "demo-stage1"
    with pytest.raises(ParamError, match="not a model directory, train-lm.s or a pretrained checkpoint"):
        spec.continuing_from(str(tmp_path))
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / f).write_text("{}")
    assert spec.continuing_from(str(tmp_path)).train.init_from == str(tmp_path)
    assert LMPreset.from_dict("s1", load_preset("lm/demo-stage1")).train.stage_preset == ""
    with pytest.raises(ParamError, match=r"train.init_from='preset:nope': unknown preset 'lm/nope'; presets: demo, "):
        LMPreset.from_dict("x", load_preset("lm/tiny"), {"train.init_from": "preset:nope"})


def test_init_from_a_pretrained_checkpoint_keeps_its_architecture(tmp_path):
    """A model directory not written by train-lm (a pretrained Gemma-3 here) is loaded as itself, weights intact;
    an attention kernel in the preset is refused for it."""
    from components.lm.mixture import Mixture
    from components.lm.model import batch_loss, init_model
    from tests.helpers.tiny import save_tiny, tiny_model, tokenizer

    src = save_tiny(tmp_path / "gemma", "gemma3", layers=3)
    spec = LMPreset.from_dict("x", load_preset("lm/tiny"), {"train.init_from": str(src), "train.batch_size": 2})
    model = init_model(spec.model, tokenizer(), src)
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.float32
    want = tiny_model("gemma3", layers=3).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, want[name]), name
    assert batch_loss(model, Mixture(spec, tokenizer()).batch(0)) > 0
    kernel = LMPreset.from_dict("x", load_preset("lm/tiny"), {"model.attention": "lightning(block=64)"}).model
    with pytest.raises(ValueError, match="is a pretrained model: model.attention must be sdpa, eager or a kernel"):
        init_model(kernel, tokenizer(), src)
