"""The committed demo-t2i is found by name on a fresh machine (empty ATTNFLOW_HOME) and loads as a model folder;
a name found nowhere is refused naming where it was looked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.diffusion.pipeline import load_t2i
from infra.settings import settings
from tasks.diffusion import model_dir

ROOT = Path(__file__).resolve().parents[2]


def test_demo_t2i_resolves_to_the_committed_weights():
    assert not (settings().models_dir / "demo-t2i").exists()  # the tests' own empty ATTNFLOW_HOME
    path = model_dir("demo-t2i")
    assert path == ROOT / "assets" / "demo-t2i"
    model = load_t2i(path)
    assert model.vae is None and model.image_size == 32 and model.sample_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="no folder"):
        model_dir("no-such-t2i")
