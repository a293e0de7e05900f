"""generate-images: prompts x diffusion component stacks x seeds on one text-to-image model, images in MLflow.

validate (model folder, prompts, components, metrics; no weights) -> load the model once and check every component
against its denoiser -> one image per (stack, prompt, seed), each from the on-disk image cache when the same inputs
were generated before -> metrics (seconds per image; shape detector and CLIP score when available) -> a parent run
with the image grid, the cross-attention map grid and the summary, one child run per stack with its images.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Dtype, Experiment, ModelName, Positive, Seeds, Specs
from infra.runners import task_runner
from tasks.diffusion import plan_images
from tasks.image_compare import comparison_markdown, log_comparison
from tasks.image_log import log_images, summary_markdown
from tasks.images import generate_image, load_t2i_model, score_images
from tasks.report import log_run_link, log_table
from tasks.runs import tracked_run
from tasks.tracking import publish_components

DEFAULT_PROMPTS = ["a red circle", "a blue square left of a green triangle"]
DEFAULT_COMPONENTS = ["baseline", "softpag(scale=2)"]


@flow(name="generate-images", log_prints=True, task_runner=task_runner())
def generate_images(
    model: ModelName = "demo-t2i",
    prompts: list[str] = DEFAULT_PROMPTS,  # noqa: B006 - a Prefect parameter default, never mutated
    prompt_file: str = "",
    components: Specs = DEFAULT_COMPONENTS,
    seeds: Seeds = [0, 1],  # noqa: B006 - a Prefect parameter default, never mutated
    steps: Positive = 20,
    cfg_scale: float = 1.0,
    maps: list[str] = [],  # noqa: B006 - a Prefect parameter default, never mutated
    metrics: list[str] = ["shapes"],  # noqa: B006 - a Prefect parameter default, never mutated
    clip_model: str = "",
    experiment: Experiment = "generate-images",
    dtype: Dtype = "float32",
) -> dict[str, Any]:
    """Generate images for prompts x component stacks x seeds and log them with their metrics.

    Args:
        model: Text-to-image model folder (components/diffusion/pipeline.py layout) or a name under
            $ATTNFLOW_HOME/models, e.g. "demo-t2i".
        prompts: Prompts, one list item each (ignored when prompt_file is given).
        prompt_file: A .txt (one prompt per line), .jsonl ({"prompt": ...}) or .parquet ("prompt" column) file.
        components: Diffusion component stacks, one item per grid row: "baseline", "softpag(scale=2)", or
            several joined by "+", e.g. "softpag(scale=2)+word_reweight(words=circle;scale=2)".
        seeds: Sampling seeds (initial noise and scheduler noise).
        steps: Denoising steps.
        cfg_scale: Classifier-free guidance scale (1 = the conditional pass only).
        maps: Prompt words whose cross-attention maps are recorded and drawn (cross_maps), e.g. "circle".
        metrics: Per-image metric hooks: "shapes" (the coloured-shape detector, skipped when absent) or
            "module:function" taking (image, prompt) and returning {name: value}.
        clip_model: A CLIP model (hub id or folder) for the CLIP score; empty = no CLIP score.
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
    """
    # 1. Validate the model folder, prompts, component stacks and metrics before any weights load.
    plan = plan_images(model, prompts, prompt_file or None, components, seeds, steps, cfg_scale, maps, metrics,
                       clip_model or None)
    versions = publish_components(plan.refs)
    # 2. Load the model once; every component is checked against its denoiser.
    loaded = load_t2i_model(plan.model, plan, dtype=dtype)
    with tracked_run(experiment, f"generate-images {loaded.name}",
                     tags={"attnflow.model": loaded.name, "attnflow.kind": "generate-images"},
                     params={"model": plan.model, "components": [s.label for s in plan.stacks],
                             "prompts": list(plan.prompts), "seeds": list(plan.seeds), "steps": plan.steps,
                             "cfg_scale": plan.cfg_scale}) as parent:
        # 3. One image per (stack, prompt, seed), served from the image cache when generated before.
        records = [generate_image(loaded, plan, stack, None, p, s) for stack, _, p, s in plan.cells()]
        # 4. Metrics, then the grids, the per-stack runs and the summary.
        scored = score_images(records, plan)
        summary = log_images(parent, experiment, plan, scored, loaded.name, loaded.digest, versions,
                             "generate-images")
        # 5. Stacks against the baseline over seeds (paired, 95 % intervals).
        comparison = log_comparison(parent, scored)
    log_table(summary_markdown(summary))
    log_table(comparison_markdown(comparison))
    log_run_link(parent, experiment)
    return {"summary": summary, "comparison": comparison, "images": scored, "run_id": parent,
            "experiment": experiment}


if __name__ == "__main__":
    generate_images()
