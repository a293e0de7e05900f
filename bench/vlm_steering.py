"""Concept-shift steering (rep_shift, arXiv:2501.03012) on a LLaVA-style model: colour flips and side effects.

For each colour pair (source -> target), decoder layer and strength alpha, the shift vector is fitted on paired
scenes (``RepShift.fit``, seed 0) and applied on held-out scenes (other seeds) that hold exactly one object, in the
source colour:

- ``caption``: "Describe the image." (the train-vlm caption prompt); the colour answer is the first colour word of
  the greedy caption; ``flip`` = it is the target colour, ``kept`` = it is still the source colour;
- ``yes_target``: "Is there a <target> <shape> in the image?" (truth: no); ``flip`` = answered yes;
- ``no_source``: "Is there a <source> <shape> in the image?" (truth: yes); ``flip`` = answered no;
- side effects: generated scene questions (components/benchmarks/_scenes.py, all kinds) that name neither colour,
  accuracy per kind with and without steering.

Every proportion has a Clopper-Pearson 95% interval.

    ATTNFLOW_HOME=/work/home/bench python bench/vlm_steering.py --model demo-vlm --json docs/results/x.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import modeling  # noqa: E402
from components.benchmarks import _scenes  # noqa: E402
from components.benchmarks.vlm_scenes import answer, correct  # noqa: E402
from components.patches.rep_shift import RepShift  # noqa: E402


def ci(k: int, n: int) -> list[float]:
    """Clopper-Pearson 95% interval of k / n."""
    lo = 0.0 if k == 0 else float(stats.beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(0.975, k + 1, n - k))
    return [lo, hi]


def prop(flags: list[bool]) -> dict:
    k, n = int(sum(flags)), len(flags)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci95": ci(k, n) if n else None}


def colour_word(text: str) -> str:
    for w in text.lower().replace(",", " ").replace(".", " ").split():
        if w in _scenes.COLOURS:
            return w
    return ""


def probe_rows(source: str, target: str, n: int, seed: int) -> list[dict]:
    """Held-out single-object scenes in the source colour and their three probe questions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape, cell = rng.choice(_scenes.SHAPES), rng.randrange(9)
        scene = {"objects": [{"shape": shape, "colour": source, "cell": cell}], "text": None}
        rows += [{"scene_id": i, "scene": scene, "kind": "caption", "question": "Describe the image.", "answer": ""},
                 {"scene_id": i, "scene": scene, "kind": "yes_target", "answer": "no",
                  "question": f"Is there a {target} {shape} in the image?"},
                 {"scene_id": i, "scene": scene, "kind": "no_source", "answer": "yes",
                  "question": f"Is there a {source} {shape} in the image?"}]
    return rows


def run_probes(model, proc, rows, patches, size, source, target) -> dict:
    caps = [r for r in rows if r["kind"] == "caption"]
    qs = [r for r in rows if r["kind"] != "caption"]
    cap_out = answer(model, proc, caps, image_size=size, template="{image}\n{question}", max_new_tokens=4,
                     patches=patches)
    q_out = answer(model, proc, qs, image_size=size, max_new_tokens=2, patches=patches)
    colours = [colour_word(t) for t in cap_out]
    yn = {k: [_scenes.yes_no(t) for r, t in zip(qs, q_out) if r["kind"] == k] for k in ("yes_target", "no_source")}
    return {"caption_flip": prop([c == target for c in colours]), "caption_kept": prop([c == source for c in colours]),
            "yes_target_flip": prop([a == "yes" for a in yn["yes_target"]]),
            "no_source_flip": prop([a == "no" for a in yn["no_source"]]),
            "examples": cap_out[:3]}


def side_rows(source: str, target: str, n_scenes: int, seed: int) -> list[dict]:
    rows = _scenes.dataset(seed, n_scenes, "random")
    return [r for r in rows if source not in r["question"] and target not in r["question"]]


def run_side(model, proc, rows, patches, size) -> dict:
    out = answer(model, proc, rows, image_size=size, max_new_tokens=4, patches=patches)
    kinds = sorted({r["kind"] for r in rows})
    return {k: prop([correct(r["kind"], r["answer"], t) for r, t in zip(rows, out) if r["kind"] == k]) for k in kinds}


def smoke_dir(wings: bool = False) -> str:
    """A tiny random LLaVA saved to a temporary folder (tests/helpers/tiny_vlm.py), for ``--smoke``."""
    import tempfile

    from tests.helpers.tiny_vlm import save_tiny_llava

    return str(save_tiny_llava(Path(tempfile.mkdtemp(prefix="smoke-vlm-")) / "m", wings=wings))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo-vlm")
    ap.add_argument("--pairs", default="red:blue,yellow:green")
    ap.add_argument("--layers", default="18,29")
    ap.add_argument("--alphas", default="1,2")
    ap.add_argument("--tokens", default="last")
    ap.add_argument("--scope", default="all")
    ap.add_argument("--n-pairs", type=int, default=32, help="paired scenes per shift vector")
    ap.add_argument("--n-eval", type=int, default=40, help="held-out single-object scenes per colour pair")
    ap.add_argument("--n-side", type=int, default=30, help="held-out scenes for the side-effect questions")
    ap.add_argument("--json", default="")
    ap.add_argument("--smoke", action="store_true", help="a tiny random LLaVA, one pair, tiny sizes")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.pairs, args.layers, args.alphas = smoke_dir(), "red:blue", "1", "1"
        args.n_pairs, args.n_eval, args.n_side = 2, 2, 2
    torch.set_num_threads(1)
    from transformers import AutoProcessor

    ref = modeling.resolve(args.model)
    model = modeling.load_vision_model(ref)
    proc = AutoProcessor.from_pretrained(ref.location)
    size = model.config.vision_config.image_size
    start = time.time()
    results = []

    def save() -> None:  # after every configuration, so a stopped run keeps what it measured
        if args.json:
            out = {"model": args.model, "model_fingerprint": fingerprint, "args": vars(args),
                   "seconds": time.time() - start, "machine": platform.platform(), "threads": 1, "results": results}
            Path(args.json).write_text(json.dumps(out, indent=1))

    fingerprint = modeling.model_fingerprint(ref)
    for pair in args.pairs.split(","):
        source, target = pair.split(":")
        probes = probe_rows(source, target, args.n_eval, seed=1000)
        side = side_rows(source, target, args.n_side, seed=2000)
        base = {"probes": run_probes(model, proc, probes, [], size, source, target),
                "side": run_side(model, proc, side, [], size)}
        print(f"{pair} baseline: {json.dumps(base['probes'])}", flush=True)
        results.append({"pair": pair, "layer": None, "alpha": 0.0, **base})
        save()
        for layer in map(int, args.layers.split(",")):
            fitted = RepShift(source=source, target=target, layer=layer, tokens=args.tokens, scope=args.scope,
                              n_pairs=args.n_pairs).fit(model, proc)
            for alpha in map(float, args.alphas.split(",")):
                comp = RepShift(source=source, target=target, layer=layer, alpha=alpha, tokens=args.tokens,
                                scope=args.scope, n_pairs=args.n_pairs).with_vector(fitted._vector)
                res = {"pair": pair, "layer": layer, "alpha": alpha, "vector_norm": float(fitted._vector.norm()),
                       "probes": run_probes(model, proc, probes, [comp], size, source, target),
                       "side": run_side(model, proc, side, [comp], size)}
                results.append(res)
                save()
                print(f"{pair} layer {layer} alpha {alpha}: {json.dumps(res['probes'])} side "
                      f"{ {k: round(v['rate'], 3) for k, v in res['side'].items()} }", flush=True)


if __name__ == "__main__":
    main()
