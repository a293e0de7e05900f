"""Model resolution (config only, before any weights) and loading."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components import modeling, numerics
from tasks.retry import transient


@dataclass
class LoadedModel:
    """A loaded model with what identifies it.

    Pickles as its reference: a task runner that ships tasks to other processes (Dask) sends the model reference,
    and each worker process loads the weights once (checked against the fingerprint) instead of receiving them.
    """

    ref: modeling.ModelRef
    model: Any
    tokenizer: Any
    fingerprint: str
    info: dict[str, Any]
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    vision: bool = False  # a vision-language model with its processor in ``tokenizer`` (tasks/vlm.py)

    @property
    def name(self) -> str:
        return self.ref.name

    def __reduce__(self):
        return (_reload, (self.ref, self.dtype, self.device, self.trust_remote_code, self.fingerprint, self.vision))


_LOADED: dict[tuple[Any, ...], LoadedModel] = {}
_LOCK = threading.Lock()


def _reload(ref: modeling.ModelRef, dtype: str, device: str, trust_remote_code: bool, fingerprint: str,
            vision: bool = False) -> LoadedModel:
    """The model behind a pickled LoadedModel, loaded once per process; fails if the weights changed since."""
    key = (ref, dtype, device, trust_remote_code, fingerprint, vision)
    with _LOCK:
        if key not in _LOADED:
            now = modeling.model_fingerprint(ref)
            if now != fingerprint:
                raise RuntimeError(f"model {ref.ref!r} changed on disk (fingerprint {now} != {fingerprint}); "
                                   "re-run so every worker evaluates the same weights")
            if vision:
                from tasks.vlm import load_vlm

                _LOADED[key] = load_vlm.fn(ref.ref, dtype=dtype, device=device)
                return _LOADED[key]
            mdl, tok = modeling.load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
            numerics.check_finite(mdl, tok, dtype, ref.name)
            _LOADED[key] = LoadedModel(ref, mdl, tok, fingerprint, modeling.describe(mdl), dtype, device,
                                       trust_remote_code)
        return _LOADED[key]


def check_model(model: str, trust_remote_code: bool = False) -> modeling.ModelRef:
    """Resolve a model reference and check its architecture from the config alone (fails before loading)."""
    ref = modeling.resolve(model)
    modeling.check_supported(modeling.load_config(ref, trust_remote_code=trust_remote_code))
    return ref


def checked_config(model: str, trust_remote_code: bool = False) -> Any:
    """:func:`check_model`, returning the config it read (so that a plan reads it once)."""
    config = modeling.load_config(modeling.resolve(model), trust_remote_code=trust_remote_code)
    modeling.check_supported(config)
    return config


@task(cache_policy=NO_CACHE, persist_result=False, retries=1, retry_delay_seconds=5,
      retry_condition_fn=transient, task_run_name="load {model}")
def load_model(model: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM + tokenizer (hub id, local directory, 'demo', a .gguf file or a catalogue name; a catalogue
    model not pulled yet is pulled and registered in MLflow first)."""
    ref = modeling.resolve(model)
    if ref.kind in ("catalogue", "gguf"):
        from components import model_sources

        pulling = ref.kind == "catalogue"
        ref = model_sources.materialize(ref)
        if pulling:
            from tasks.model_registry import register_pulled

            register_pulled.fn(ref.location)
    mdl, tok = modeling.load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    numerics.check_finite(mdl, tok, dtype, ref.name)  # e.g. Gemma-3 in float16: NaN logits, fail now and say why
    info = modeling.describe(mdl)
    print(f"loaded {ref.name}: {info['model_class']}, {info['n_params']:,} parameters, "
          f"{info['n_layers']} layers x {info['n_heads']} heads")
    return LoadedModel(ref, mdl, tok, modeling.model_fingerprint(ref), info, dtype, device, trust_remote_code)
