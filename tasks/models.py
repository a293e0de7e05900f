"""Model resolution (config only, before any weights) and loading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components import modeling


@dataclass
class LoadedModel:
    """A loaded model with what identifies it."""

    ref: modeling.ModelRef
    model: Any
    tokenizer: Any
    fingerprint: str
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return self.ref.name


def check_model(model: str, trust_remote_code: bool = False) -> modeling.ModelRef:
    """Resolve a model reference and check its architecture from the config alone (fails before loading)."""
    ref = modeling.resolve(model)
    modeling.check_supported(modeling.load_config(ref, trust_remote_code=trust_remote_code))
    return ref


@task(cache_policy=NO_CACHE, persist_result=False, retries=1, retry_delay_seconds=5,
      task_run_name="load {model}")
def load_model(model: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM + tokenizer (hub id, local directory or 'demo')."""
    ref = modeling.resolve(model)
    mdl, tok = modeling.load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    info = modeling.describe(mdl)
    print(f"loaded {ref.name}: {info['model_class']}, {info['n_params']:,} parameters, "
          f"{info['n_layers']} layers x {info['n_heads']} heads")
    return LoadedModel(ref, mdl, tok, modeling.model_fingerprint(ref), info)
