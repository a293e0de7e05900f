"""Train the tiny preset with the real trainer (used by the resume-after-kill test, also as a subprocess).

    python -m tests.helpers.train_script <ckpt_dir> <steps> [step_delay_seconds]

The tokenizer is trained once and saved beside the checkpoints (as the train-lm flow does in its run directory),
so a resumed run sees exactly the same token ids.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from components.lm.mixture import Mixture
from components.lm.model import build_model
from components.lm.preset import LMPreset
from components.lm.tokenizer import train_tokenizer
from components.lm.trainer import train
from registry.specs import load_preset


def setup(steps: int, tok_dir: Path | None = None):
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    spec = LMPreset.from_dict("tiny", load_preset("lm/tiny"), {"train.steps": steps, "train.checkpoint_every": 5})
    if tok_dir is not None and (tok_dir / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tok = train_tokenizer(Mixture(spec, None).texts_for_tokenizer(n_per_item=200), spec.model.vocab_size)
        if tok_dir is not None:
            tok.save_pretrained(tok_dir)
    mixture = Mixture(spec, tok)
    return spec, tok, mixture, build_model(spec.model, tok, seed=spec.train.seed)


def run(ckpt_dir: Path, steps: int, delay: float = 0.0):
    spec, tok, mixture, model = setup(steps, ckpt_dir.parent / "tokenizer")

    def batches(step: int):
        if delay:
            time.sleep(delay)
        return mixture.batch(step)

    result = train(model, batches, spec.train, ckpt_dir, progress=False)
    return model, result


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
