"""Every claim of `attnflow reproduce` on the real models, with the shared data, one table per model.

Runs the real `reproduce` flow (everything also lands in MLflow under ATTNFLOW_HOME, experiment `bench-reproduce`)
with the shared data: corpus = ../shared/data/corpus/sotu.txt (perplexity, sink probes), haystack =
../shared/data/corpus/paul_graham_essays (needle tests), and the no-sink control model
../shared/data/models/stories260k for the sinks claim. Models are directories or catalogue names
(``smollm2-135m``, ``gemma3-270m``) resolved to ATTNFLOW_HOME/models/<name>, else $ATTNFLOW_MODELS_DIR/<name>.

    python bench/reproduce.py --models smollm2-135m,gemma3-270m --seeds 0,1,2
    python bench/reproduce.py --models smollm2-135m --claims sinks --json out.json
    python bench/reproduce.py --smoke      # the sinks claim on the demo model (its own control), 4 samples
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shared() -> Path:
    return Path(os.environ.get("ATTNFLOW_SHARED", REPO / ".." / "shared")).resolve()


def resolve_model(ref: str) -> str:
    """A directory as given, or a catalogue name under ATTNFLOW_HOME/models, then $ATTNFLOW_MODELS_DIR."""
    if Path(ref).is_dir():
        return str(Path(ref).resolve())
    from infra.settings import settings

    candidates = [settings().home / "models" / ref]
    if os.environ.get("ATTNFLOW_MODELS_DIR"):
        candidates.append(Path(os.environ["ATTNFLOW_MODELS_DIR"]) / ref)
    for c in candidates:
        if c.is_dir():
            return str(c)
    sys.exit(f"model {ref!r}: not a directory and not found at {', '.join(map(str, candidates))} "
             "(pull it with `attnflow models pull`, or set ATTNFLOW_MODELS_DIR)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m", help="comma-separated directories or names")
    ap.add_argument("--claims", default="", help="comma-separated claim names (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--experiment", default="bench-reproduce")
    ap.add_argument("--option", action="append", default=[], help="claim option claim.key=value (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="write every ClaimResult here")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        from components.modeling import resolve

        demo = resolve("demo").location
        args.models, args.claims, args.experiment = demo, "sinks", "bench-reproduce-smoke"
        args.option = [*args.option, "sinks.n_samples=4", f"sinks.control_model={demo}"]
    import torch

    torch.set_num_threads(args.threads)
    from flows.reproduce import reproduce

    data_dir = shared() / "data"
    data = {"corpus": str(data_dir / "corpus" / "sotu.txt"),
            "haystack": str(data_dir / "corpus" / "paul_graham_essays")}
    for key in ("sst2", "agnews", "trec"):  # the few-shot claims' datasets, when their module is plugged in
        found = sorted((data_dir / "tasks").glob(f"{key}*"))
        if found:
            data[key] = str(found[0])
    options = {"sinks": {"control_model": str(data_dir / "models" / "stories260k")}}
    if args.smoke:  # built-in text only
        data, options = {}, {}
    for item in args.option:  # claim.key=value; numbers as numbers
        key, value = item.split("=", 1)
        claim, name = key.split(".", 1)
        options.setdefault(claim, {})[name] = int(value) if value.lstrip("-").isdigit() else value
    claims = [c for c in args.claims.split(",") if c]
    options = {k: v for k, v in options.items() if not claims or k in claims}
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {}
    for ref in args.models.split(","):
        model = resolve_model(ref)
        start = time.perf_counter()
        state = reproduce(model=model, claims=claims, seeds=seeds, data=data, options=options, dtype=args.dtype,
                          experiment=args.experiment, progress=False, return_state=True)
        if not state.is_completed():  # a claim failed: the others are logged and tabled in MLflow
            print(f"\n## {ref}: the flow failed: {state.message}")
            continue
        res = state.result()
        out[ref] = {"model": model, "wall_s": time.perf_counter() - start, "run_id": res["run_id"],
                    "results": res["results"]}
        print(f"\n## {ref} ({model}, {args.dtype}, seeds {args.seeds}, {out[ref]['wall_s']:.0f} s)\n\n{res['table']}\n")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(out, indent=1, default=str))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
