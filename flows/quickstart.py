"""quickstart: the offline tour. Demo model -> compare the quickstart methods on the task suite -> MLflow.

The demo model ships with the repository (assets/demo-lm, trained by ``attnflow train-lm --preset demo``); if it
is missing it is trained first. A second run reuses the model and the cached evaluations.
"""

from __future__ import annotations

from typing import Any

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.compare import compare
from flows.train_lm import train_lm
from infra.settings import settings
from registry.specs import load_preset
from tasks.demo import ensure_registered, find_demo


@flow(name="quickstart", log_prints=True)
def quickstart(preset: str = "quickstart", experiment: str = "quickstart", train_if_missing: bool = True,
               demo_preset: str = "demo", progress: bool = True) -> dict[str, Any]:
    """Compare baseline, ZeroTuning and head masking on the synthetic suite and perplexity, on the demo model.

    Args:
        preset: Comparison preset (registry/presets/<name>.yaml).
        experiment: MLflow experiment.
        train_if_missing: Train the demo model when neither ATTNFLOW_HOME/models/demo-lm nor assets/demo-lm exists.
        demo_preset: LM preset used when the demo model has to be trained.
        progress: Show progress bars.
    """
    # 1. The demo model: shipped, trained earlier, or trained now.
    model_dir = find_demo()
    if model_dir is None:
        if not train_if_missing:
            raise FileNotFoundError("the demo model is missing; run `attnflow train-lm --preset demo`")
        print(f"demo model not found: training it (attnflow train-lm --preset {demo_preset})")
        out_dir = str(settings().models_dir / "demo-lm")
        model_dir = train_lm(preset=demo_preset, out=out_dir, register_model=False, progress=progress)["model_dir"]
    # 2. Registered once in MLflow as attnflow.demo-lm@champion.
    ensure_registered(model_dir)
    # 3. The comparison.
    cfg = load_preset(preset)
    out = compare(model="demo", components=cfg["components"], tasks=cfg["tasks"], seeds=cfg.get("seeds", [0]),
                  experiment=experiment, progress=progress)
    store = settings().tracking_uri
    print(f"\nOpen the MLflow UI on these runs:\n  mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000\n"
          f"then http://127.0.0.1:5000 -> experiment '{experiment}' (or `attnflow up` for the full local stack).")
    return out
