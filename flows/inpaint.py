"""inpaint: source images + masks x prompts x diffusion component stacks x seeds on one text-to-image model.

validate (model folder, sources and masks, or generated scenes, prompts, components; no weights) -> load the model
once (a plain denoiser blends the known region each step, an inpainting denoiser takes the mask and masked image as
input channels) -> one image per (stack, source, prompt, seed), each from the on-disk image cache when generated
before -> metrics (masked-region fidelity, seconds per image; shape detector and CLIP score when available) -> a
parent run with the grid (first row: the masked sources) and the summary, one child run per stack.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Count, Dtype, Experiment, ModelName, Positive, Seeds, Specs
from infra.runners import task_runner
from tasks.diffusion import plan_inpaint
from tasks.image_compare import comparison_markdown, log_comparison
from tasks.image_log import log_images, summary_markdown
from tasks.images import generate_image, load_t2i_model, score_images
from tasks.report import log_run_link, log_table
from tasks.runs import tracked_run
from tasks.tracking import publish_components

DEFAULT_PROMPTS = ["a red circle"]
DEFAULT_COMPONENTS = ["baseline", "softpag(scale=2)"]


@flow(name="inpaint", log_prints=True, task_runner=task_runner())
def inpaint(
    model: ModelName = "demo-t2i",
    images: list[str] = [],  # noqa: B006 - a Prefect parameter default, never mutated
    masks: list[str] = [],  # noqa: B006 - a Prefect parameter default, never mutated
    scenes: Count = 2,
    scene_seed: int = 0,
    prompts: list[str] = DEFAULT_PROMPTS,  # noqa: B006 - a Prefect parameter default, never mutated
    prompt_file: str = "",
    components: Specs = DEFAULT_COMPONENTS,
    seeds: Seeds = [0, 1],  # noqa: B006 - a Prefect parameter default, never mutated
    steps: Positive = 20,
    cfg_scale: float = 1.0,
    resample: Positive = 1,
    maps: list[str] = [],  # noqa: B006 - a Prefect parameter default, never mutated
    metrics: list[str] = ["shapes"],  # noqa: B006 - a Prefect parameter default, never mutated
    clip_model: str = "",
    experiment: Experiment = "inpaint",
    dtype: Dtype = "float32",
) -> dict[str, Any]:
    """Fill the masked region of source images for prompts x component stacks x seeds and log the results.

    Args:
        model: Text-to-image model folder (components/diffusion/pipeline.py layout) or a name under
            $ATTNFLOW_HOME/models, e.g. "demo-t2i".
        images: Source image files; when given, scenes must be 0.
        masks: Mask files (white = the region to fill), one per source image or one for all.
        scenes: Without images: this many generated coloured-shape scenes, each with its first object's cell masked.
        scene_seed: Seed of the generated scenes.
        prompts: Prompts, one list item each (ignored when prompt_file is given).
        prompt_file: A .txt (one prompt per line), .jsonl ({"prompt": ...}) or .parquet ("prompt" column) file.
        components: Diffusion component stacks, one item per grid row: "baseline", "softpag(scale=2)", or
            several joined by "+".
        seeds: Sampling seeds (initial noise, scheduler noise and the known region's noise).
        steps: Denoising steps.
        cfg_scale: Classifier-free guidance scale (1 = the conditional pass only).
        resample: RePaint resampling count per step for plain denoisers (1 = none).
        maps: Prompt words whose cross-attention maps are recorded and drawn (cross_maps).
        metrics: Per-image metric hooks: "shapes" (skipped when absent) or "module:function".
        clip_model: A CLIP model (hub id or folder) for the CLIP score; empty = no CLIP score.
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
    """
    # 1. Validate the model folder, sources and masks (or write the generated scenes), prompts and components.
    plan = plan_inpaint(model, prompts, prompt_file or None, components, seeds, images, masks, scenes, scene_seed,
                        steps, cfg_scale, resample, maps, metrics, clip_model or None)
    versions = publish_components(plan.refs)
    # 2. Load the model once; every component is checked against its denoiser.
    loaded = load_t2i_model(plan.model, plan, dtype=dtype)
    with tracked_run(experiment, f"inpaint {loaded.name}",
                     tags={"attnflow.model": loaded.name, "attnflow.kind": "inpaint"},
                     params={"model": plan.model, "components": [s.label for s in plan.stacks],
                             "sources": [s.origin if s.origin != "file" else s.image for s in plan.sources],
                             "prompts": list(plan.prompts), "seeds": list(plan.seeds), "steps": plan.steps,
                             "cfg_scale": plan.cfg_scale, "resample": plan.resample,
                             "layout": loaded.layout}) as parent:
        # 3. One image per (stack, source, prompt, seed), served from the image cache when generated before.
        records = [generate_image(loaded, plan, stack, src, p, s) for stack, src, p, s in plan.cells()]
        # 4. Metrics (masked-region fidelity among them), then the grid, the per-stack runs and the summary.
        scored = score_images(records, plan)
        summary = log_images(parent, experiment, plan, scored, loaded.name, loaded.digest, versions, "inpaint")
        # 5. Stacks against the baseline over seeds (paired, 95 % intervals).
        comparison = log_comparison(parent, scored)
    log_table(summary_markdown(summary))
    log_table(comparison_markdown(comparison))
    log_run_link(parent, experiment)
    return {"summary": summary, "comparison": comparison, "images": scored, "run_id": parent,
            "experiment": experiment}


if __name__ == "__main__":
    inpaint()
