"""Small labelled detection data sets for tests, generated on the spot (no downloads).

Human texts are template stories; machine texts are sampled from the tiny test model itself, so they are
high-likelihood text for that backbone and every detector has something to find."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.benchmarks import _text


@torch.no_grad()
def machine_texts(model, tokenizer, n: int, seed: int = 0, new_tokens: int = 24) -> list[str]:
    torch.manual_seed(seed)
    prompt = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=0.7,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, top_k=None, top_p=None)
    texts = tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)
    return [t if t.strip() else "the" for t in texts]


def human_texts(n: int, seed: int = 0) -> list[str]:
    return [" ".join(_text.stories(seed * 1000 + i, 1)[0].split()[:18]) for i in range(n)]


def pair_file(path: Path, model, tokenizer, n: int, seed: int = 0) -> Path:
    """A Fast-DetectGPT style ``{"original": [...], "sampled": [...]}`` file."""
    path.write_text(json.dumps({"original": human_texts(n, seed), "sampled": machine_texts(model, tokenizer, n, seed)}))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Torch with 2 threads on a loaded 2-core machine is up to 30x slower for these small models (OpenMP spin
    barriers); the PAWN tests run with 1 thread and restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
