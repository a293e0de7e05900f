"""SinkLoRA on a real model: passkey accuracy of the base model, the base with position interpolation (no training),
and the SF-Attn + LoRA fine-tuned model, each without and with H2O at inference (docs/sinklora.md).

Usage (one process, CPU; the fine-tuned model comes from `attnflow train-lm --preset sinklora ...`):
    python bench/sinklora.py --base $ATTNFLOW_HOME/models/smollm2-135m \
        --tuned $ATTNFLOW_HOME/models/smollm2-135m-sinklora --rope-scaling 2 \
        --lengths 1000 2500 --depths 0.25 0.75 --n-per-cell 4 --out /tmp/sinklora.json
    python bench/sinklora.py --smoke    # the demo model as both, 20-word prompts: checks the script runs

Accuracy per (model, press, length) with a 95% Clopper-Pearson interval; prompt lengths are reported in tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.lm.model import load_pretrained  # noqa: E402
from components.modeling import load_model  # noqa: E402
from registry.specs import parse  # noqa: E402
from tasks.pawn_metrics import binomial_ci  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def variants(base: str, tuned: str, scaling: float):
    """(key, name, loader) for each model compared; loaders return (model, tokenizer)."""
    def interpolated():
        _, tok = load_model(base)
        return load_pretrained(Path(base), rope_scaling=scaling).eval(), tok

    out = [("base", "base", lambda: load_model(base))]
    if scaling != 1.0:
        out.append(("pi", f"base + PI x{scaling:g} (no training)", interpolated))
    out.append(("tuned", "SF-Attn + LoRA", lambda: load_model(tuned)))
    return out


@torch.no_grad()
def score(model, tok, bench, rows, press_spec: str | None, batch_size: int) -> dict:
    """Passkey metrics under a press (None = full cache), per length: correct, n, interval, prompt tokens."""
    t0 = time.perf_counter()
    if press_spec:
        with parse(press_spec).create("press").applied(model):
            res = bench.evaluate(model, tok, rows, batch_size=batch_size)
    else:
        res = bench.evaluate(model, tok, rows, batch_size=batch_size)
    per = {}
    for length in sorted({r["length"] for r in rows}):
        ex = [e for e in res.examples if e["length"] == length]
        k, n = sum(int(e["correct"]) for e in ex), len(ex)
        toks = [len(tok(r["prompt"]).input_ids) for r in rows if r["length"] == length]
        per[length] = {"correct": k, "n": n, "accuracy": k / n, "ci95": binomial_ci(k, n),
                       "prompt_tokens": [min(toks), max(toks)]}
    return {"per_length": per, "seconds": time.perf_counter() - t0,
            "outputs": [e["output"] for e in res.examples]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="")
    ap.add_argument("--tuned", default="")
    ap.add_argument("--rope-scaling", type=float, default=2.0)
    ap.add_argument("--lengths", nargs="+", type=int, default=[1000, 2500])
    ap.add_argument("--depths", nargs="+", type=float, default=[0.25, 0.75])
    ap.add_argument("--n-per-cell", type=int, default=4)
    ap.add_argument("--press", default="h2o(ratio=0.5)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="base,pi,tuned", help="which of base, pi, tuned to evaluate")
    ap.add_argument("--out", default="")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        demo = str(REPO / "assets" / "demo-lm")
        a.base, a.tuned, a.lengths, a.depths, a.n_per_cell = demo, demo, [20], [0.5], 1
    keys = a.models.split(",")
    if not a.base or ("tuned" in keys and not a.tuned) or set(keys) - {"base", "pi", "tuned"}:
        ap.error("--base (and --tuned unless --models leaves it out) are required (or --smoke); --models: "
                 "base, pi, tuned")
    torch.set_num_threads(a.threads)
    bench = parse(f"passkey(lengths={';'.join(map(str, a.lengths))}, depths={';'.join(f'{d:g}' for d in a.depths)},"
                  f" n_per_cell={a.n_per_cell})").create("benchmark")
    rows = bench.build("eval")
    results = []
    for key, name, loader in variants(a.base, a.tuned, a.rope_scaling):
        if key not in keys:
            continue
        model, tok = loader()
        for press in (None, a.press):
            r = score(model, tok, bench, rows, press, a.batch_size)
            results.append({"model": name, "press": press or "none", **r})
            for length, p in r["per_length"].items():
                print(f"{name:34s} {press or 'none':16s} {length:5d} words ({p['prompt_tokens'][0]}-"
                      f"{p['prompt_tokens'][1]} tokens): {p['correct']}/{p['n']} = {p['accuracy']:.3f} "
                      f"[{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}]  ({r['seconds']:.0f}s)", flush=True)
        del model
    print("\n| model | press | " + " | ".join(f"{n} words" for n in a.lengths) + " |")
    print("|---|---|" + "---|" * len(a.lengths))
    for r in results:
        cells = [f"{p['correct']}/{p['n']} [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}]" for p in r["per_length"].values()]
        print(f"| {r['model']} | {r['press']} | " + " | ".join(cells) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
