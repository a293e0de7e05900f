"""Tasks of the vision-language flows: validate a vlm-eval request (config only), load a VLM with its processor, and
evaluate one (patch, benchmark) pair on prepared image rows, or on a text benchmark's rows without images
(text-only accuracy of the VLM, ``text_only``).

Model sources: a local model directory or a hub id (with a warm cache offline). The family is checked from the
config before any weights are read (components/attention/vision.py names unsupported configurations); remote
model code is never run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from components import modeling
from components.attention import vision
from registry import specs
from registry.specs import ResolvedSpec, resolved
from tasks.data import load_data
from tasks.integrity import CHECKED, content_key
from tasks.models import LoadedModel
from tasks.plan import pin_benchmarks, resolve_refs
from tasks.retry import transient


@dataclass(frozen=True)
class VLMPlan:
    """A validated vlm-eval request: the model reference, the patches and the benchmarks (one per data seed)."""

    model: str
    components: list[ResolvedSpec]
    benchmarks: list[ResolvedSpec]
    seeds: dict[ResolvedSpec, int | None]

    @property
    def refs(self) -> list[str]:
        return [s.ref for s in [*self.components, *self.benchmarks]]

    def texts(self, which: str) -> list[str]:
        return [s.text for s in getattr(self, which)]

    def pairs(self) -> list[tuple[ResolvedSpec, ResolvedSpec]]:
        """(patch, benchmark) pairs to run: every pair, except image-only patches on text benchmarks."""
        return [(c, b) for c in self.components for b in self.benchmarks if runs_on(c.component, b.component)]


def runs_on(patch: Any, bench: Any) -> bool:
    """Whether ``patch`` can run on ``bench``: image benchmarks take every patch; text benchmarks (text-only
    prompts, no image) take patches that do not need image tokens, or that declare ``runs_without_images``."""
    return bench.needs_images or getattr(patch, "runs_without_images", not patch.needs_images)


def check_vision(model: str) -> Any:
    """The config of a supported vision-language decoder (config only, before weights); raises naming the problem."""
    ref = modeling.resolve(model)
    if ref.kind in ("gguf", "catalogue"):
        raise vision.UnsupportedVisionModelError(f"{model!r}: GGUF files and catalogue models are language models")
    config = modeling.load_config(ref)
    layout = vision.layout_of(config)
    if layout is None or layout.kind != "decoder":
        raise vision.UnsupportedVisionModelError(
            f"{model!r} ({type(config).__name__}) is not a vision-language decoder; supported: "
            f"{', '.join(vision.DECODERS)}")
    vision.model_class(config)
    return config


@task(cache_policy=NO_CACHE, task_run_name="validate vlm request")
def plan_vlm_request(model: str, components: list[str], benchmarks: list[str],
                     seeds: list[int] | None = None) -> VLMPlan:
    """Parse and validate every spec and the model's config before any weights or data are loaded."""
    comps = [resolve_refs(s).create("patch") for item in components for s in specs.parse_list(item)]
    benches = [s.create("benchmark") for item in benchmarks for s in specs.parse_list(item)]
    if not comps or not benches:
        raise specs.SpecError("give at least one component and one benchmark")
    for b in benches:
        if not b.needs_images and not any(runs_on(c, b) for c in comps):
            raise specs.SpecError(f"{b.component_name} is a text benchmark (text-only prompts) and none of the "
                                  "patches runs without images; add baseline or wings")
        if hasattr(b, "check_source"):
            b.check_source()
    readers = [c.component_name for c in comps if c.needs_inputs and not hasattr(c, "inputs_for")]
    if readers:
        raise specs.SpecError(f"{', '.join(readers)} read per-batch text inputs that vlm-eval does not provide")
    config = check_vision(model)
    for c in comps:
        c.check_model(config)
    pinned, seed_of = pin_benchmarks(benches, seeds)
    return VLMPlan(model, [ResolvedSpec.of(c) for c in comps], pinned, seed_of)


def check_encoder(model: str) -> Any:
    """The config of a supported vision encoder (ViT, CLIP or SigLIP vision tower; config only)."""
    config = modeling.load_config(modeling.resolve(model))
    layout = vision.layout_of(config)
    if layout is None or layout.kind != "encoder":
        raise vision.UnsupportedVisionModelError(
            f"{model!r} ({type(config).__name__}) is not a vision encoder; supported: {', '.join(vision.ENCODERS)}")
    vision.model_class(config)
    return config


@task(cache_policy=NO_CACHE, persist_result=False, retries=1, retry_delay_seconds=5,
      retry_condition_fn=transient, task_run_name="load vlm {model}")
def load_vlm(model: str, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """A supported vision-language decoder (SDPA attention) and its processor in the ``tokenizer`` slot; a vision
    encoder has none (its analyzers build pixel values themselves)."""
    from transformers import AutoProcessor

    ref = modeling.resolve(model)
    mdl = modeling.load_vision_model(ref, dtype=dtype, device=device)
    decoder = vision.layout_of(mdl.config).kind == "decoder"
    processor = AutoProcessor.from_pretrained(ref.location, trust_remote_code=False) if decoder else None
    info = modeling.describe(mdl)
    print(f"loaded {ref.name}: {info['model_class']}, {info['n_params']:,} parameters")
    return LoadedModel(ref, mdl, processor, modeling.model_fingerprint(ref), info, dtype, device, False, vision=True)


def text_only(model: Any, processor: Any, bench: Any, rows: list[dict[str, Any]], patch: Any,
              batch_size: int = 8) -> Any:
    """A text benchmark's result on a VLM: its prompts without any image, scored through the VLM (the language
    model behind it, with its image token in the vocabulary) inside the patch scope; measures text-only
    forgetting (Wings, arXiv:2406.03496)."""
    from components.attention.session import applied

    with applied(model, patch) as session:
        return bench.evaluate(model, processor.tokenizer, rows, session=session, batch_size=batch_size)


def _vlm_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same weights + same patch + same benchmark + same prepared rows -> same result."""
    key = [parameters["loaded"].fingerprint, resolved(parameters["component"], "patch").fingerprint,
           resolved(parameters["benchmark"], "benchmark").fingerprint, content_key(parameters["data_path"]),
           parameters.get("batch_size")]
    return "vlm-eval-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:24]


def _fit_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same weights + same component code + same fit parameters (``fit_params()``, e.g. not a steering strength)
    -> same fitted state (the fit reads generated data only)."""
    from registry import code_fingerprint

    comp = resolved(parameters["component"], "patch").component
    key = [parameters["loaded"].fingerprint, code_fingerprint(type(comp)), comp.fit_params()]
    return "vlm-fit-" + hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


@task(cache_key_fn=_fit_cache_key, result_serializer=CHECKED, retries=0, task_run_name="fit {component}")
def fit_vlm_component(loaded: LoadedModel, component: ResolvedSpec | str) -> dict[str, Any]:
    """The fitted state (``fitted_state()``) of an image patch with ``needs_fit`` whose fit reads generated data
    only (``rep_shift``: its shift vector from paired scenes), cached by (weights, component fingerprint)."""
    comp = resolved(component, "patch").component
    fitted = comp.fit(loaded.model, loaded.tokenizer, [])
    print(f"fitted {comp.label()}: " + ", ".join(f"{k}={v}" for k, v in fitted.fit_record().items()))
    return fitted.fitted_state()


@task(cache_key_fn=_vlm_cache_key, result_serializer=CHECKED, retries=0,
      task_run_name="vlm-evaluate {component} on {benchmark}")
def vlm_evaluate(loaded: LoadedModel, component: ResolvedSpec | str, benchmark: ResolvedSpec | str,
                 data_path: str, batch_size: int = 8) -> dict[str, Any]:
    """Answer and score the prepared rows with the patch applied during decoding; the record log_evaluation logs."""
    spec, bench_spec = resolved(component, "patch"), resolved(benchmark, "benchmark")
    comp, bench = spec.component, bench_spec.component
    rows = load_data(data_path)
    start = time.perf_counter()
    if comp.needs_fit:
        comp = comp.with_state(fit_vlm_component(loaded, spec))
    if bench.needs_images:
        result = bench.evaluate(loaded.model, loaded.tokenizer, rows, batch_size=batch_size, patches=[comp])
    else:
        result = text_only(loaded.model, loaded.tokenizer, bench, rows, comp, batch_size)
    seconds = time.perf_counter() - start
    print(f"{spec.label} on {bench_spec.label}: "
          + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()) + f" ({seconds:.1f}s)")
    return {
        "component": spec.record(), "benchmark": bench_spec.record(), "metrics": result.metrics,
        "higher_is_better": {k: bench.metrics.get(k, True) for k in result.metrics},
        "primary_metric": bench.primary_metric, "examples": result.examples, "breakdowns": result.breakdowns,
        "figures": {k: list(v) for k, v in bench.figures.items()}, "fit": {}, "seconds": seconds,
        "model": loaded.name, "model_fingerprint": loaded.fingerprint,
        "data_fingerprint": (content_key(data_path) or "")[:16],
    }
