"""Do the training-free patches help a small model? Head search, then baseline vs ACT vs ZeroTuning vs PASTA vs
soft injection on icl_classification and kv_retrieval, mean +- std over data seeds.

Runs the real flows (``head-search`` then ``compare`` per task), so everything is also in MLflow under
ATTNFLOW_HOME (experiments ``bench-head-search`` and ``bench-training-free``). Per task:

1. ACT head filtering, and ZeroTuning head profiling + gamma grid (supervised: accuracy; unsupervised: mean
   prediction entropy), on the task's train split (calibration rows);
2. compare on the eval split over ``--seeds``: baseline, ACT on the searched heads and on all heads, ZeroTuning
   with each searched head set/gamma (when one beat the baseline) and with gamma=2 on all heads, PASTA, and soft
   injection fitted on the train split.

    python bench/training_free_eval.py --model demo
    python bench/training_free_eval.py --model shared:stories260k --seeds 0,1,2 --json out.json
    python bench/training_free_eval.py --smoke    # demo model, kv_retrieval with 6 rows, heads of layer 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# task -> (spec, calibration spec, PASTA steering for it)
TASKS = {
    # emphasise the label tokens of the demonstrations (text between "->" and the end of the line)
    "icl_classification": ("icl_classification(n_examples=100)", "icl_classification(n_examples=64)",
                           "pasta(alpha=0.5, span_start=->, span_end=\\n)"),
    # emphasise the key-value context: the text between "Pairs: " and the ". " before the queried key
    "kv_retrieval": ("kv_retrieval(n_examples=100)", "kv_retrieval(n_examples=64)",
                     "pasta(alpha=0.5, span_start=Pairs: , span_end=. )"),
}


def resolve_model(ref: str) -> str:
    if ref.startswith("shared:"):
        shared = Path(os.environ.get("ATTNFLOW_SHARED", REPO / ".." / "shared"))
        return str((shared / "data" / "models" / ref.split(":", 1)[1]).resolve())
    return ref


def run_task(model: str, name: str, seeds: list[int], workers: int, smoke: bool = False) -> dict:
    from flows.compare import compare
    from flows.head_search import head_search

    spec, calib, pasta = TASKS[name]
    layers = "all"
    if smoke:  # a few rows, the heads of the demo model's last layer, one gamma
        spec, calib, layers = f"{name}(n_examples=6)", f"{name}(n_examples=6)", "3:*"
    gammas = [1.5] if smoke else [1.5, 2.0, 4.0]
    act = head_search(model=model, method="act", task=calib, layers=layers, workers=workers,
                      experiment="bench-head-search")
    zt = {obj: head_search(model=model, method="zerotuning", task=calib, objective=obj, grid={"gamma": gammas},
                           layers=layers, workers=workers, experiment="bench-head-search")
          for obj in ("accuracy", "entropy")}
    components = ["baseline", f"act(heads={act['ref']})", "act", "zerotuning(gamma=2)", pasta,
                  "soft_injection(n_shots=4)"]
    for found in zt.values():  # supervised, then unsupervised search; only when a gamma beat the baseline
        if found["refined"] and found["heads"]:
            components.insert(-2, f"zerotuning(gamma={found['refined']['gamma']:.3g}, heads={found['ref']})")
    out = compare(model=model, components=list(dict.fromkeys(components)), tasks=[spec], seeds=seeds,
                  experiment="bench-training-free", progress=False)
    return {"act_heads": act["heads"], "act_gains": act["selection"]["gains"], "act_run": act["run_id"],
            "zt": {obj: {"heads": f["heads"], "group": f["selection"]["group"],
                         "gamma": (f["refined"] or {}).get("gamma"), "grid": f["selection"].get("refine_grid"),
                         "run": f["run_id"]} for obj, f in zt.items()},
            "table": out["table"], "run_id": out["run_id"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="model directory, 'demo', or shared:<name> (../shared models)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.seeds, args.tasks = "demo", "0", "kv_retrieval"
    import torch

    torch.set_num_threads(1)
    from tasks.report import to_markdown

    model = resolve_model(args.model)
    if args.smoke:  # the shipped demo model (4 layers), not a user-trained copy under ATTNFLOW_HOME: layer 3 exists
        model = str(Path(__file__).resolve().parents[1] / "assets" / "demo-lm")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for name in args.tasks.split(","):
        results[name] = run_task(model, name, seeds, args.workers, smoke=args.smoke)
        r = results[name]
        zt = "; ".join(f"{obj}: {z['group']}-effective {z['heads']}, gamma {z['gamma']} (grid {z['grid']})"
                       for obj, z in r["zt"].items())
        print(f"\n## {name} on {args.model}\nACT heads: {r['act_heads']}\nZeroTuning search ({zt})\n\n"
              f"{to_markdown(r['table'])}\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
