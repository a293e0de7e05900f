"""Dispatcher parity on real checkpoints: attnflow's ``baseline`` vs stock transformers (eager, sdpa), and each
patch's fast path vs its materialised form, in float32.

Input: a ragged batch of built-in story text, left padded: row 0 has ``--tokens`` tokens (default 640, longer than
Gemma-3's 512-token sliding window, so the window mask matters), row 1 half as many. Then ``--steps`` decode steps
with the KV cache, fed the same tokens in every variant (the greedy tokens of stock eager), so step logits compare
like for like. Reported per variant: max |diff| of the final hidden states over every real position, of the
logits at each row's last 64 real positions (all of them would cost as much as a forward with Gemma's 262k
vocabulary), of the decode-step logits, and whether the greedy next tokens agree. Not a test: it reads real model
directories (docs/real-models.md).

    python bench/real_model_parity.py --model /path/to/smollm2-135m --model /path/to/gemma3-270m
    python bench/real_model_parity.py --smoke     # the demo model in assets/, 48 tokens, 1 decode step, 2 patches
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.attention.session import applied  # noqa: E402
from components.benchmarks import _text  # noqa: E402
from registry.specs import parse  # noqa: E402

LOGIT_TAIL = 64  # logits compared at each row's last 64 real positions (hidden states at every real position)

# patch spec -> heads written for any model (every layer, head 0/1); PASTA emphasises the last 400 characters
PATCHES = ("zerotuning(gamma=2)", "head_mask(heads=*:0)", "head_mask(heads=*:1, mode=zero)",
           "act(beta=0.4, tau=0.1)", "head_pattern_override(heads=*:0, positions=0)", "pasta(alpha=0.5, spans=-400:)")


def batch(tok, n_tokens: int):
    text = " ".join(_text.stories(0, 200))
    ids = tok(text)["input_ids"][:n_tokens]
    texts = [tok.decode(ids, skip_special_tokens=True), tok.decode(ids[: n_tokens // 2], skip_special_tokens=True)]
    tok.padding_side = "left"
    enc = tok(texts, padding=True, return_tensors="pt")
    return texts, enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def run(model, ids, mask, steps_ids):
    """Final hidden states (B, T, D), decode-step logits (B, n, V) with the KV cache fed ``steps_ids`` (B, n)."""
    out = model.model(input_ids=ids, attention_mask=mask, use_cache=True)
    hidden, cache = out.last_hidden_state, out.past_key_values
    full, logits = mask, []
    for t in range(steps_ids.shape[1]):
        full = torch.cat([full, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], 1)
        o = model(input_ids=steps_ids[:, t : t + 1], attention_mask=full, past_key_values=cache, use_cache=True)
        cache = o.past_key_values
        logits.append(o.logits[:, -1])
    return hidden, torch.stack(logits, 1)


@torch.no_grad()
def max_logit_diff(model, a, b, valid, chunk=128):
    worst = 0.0
    head = model.get_output_embeddings()
    ha, hb = a[valid], b[valid]  # (N, D)
    for i in range(0, ha.shape[0], chunk):
        worst = max(worst, (head(ha[i : i + chunk]) - head(hb[i : i + chunk])).abs().max().item())
    return worst


def compare(model, ref, got, valid) -> dict:
    tail = valid & (valid.long().flip(1).cumsum(1).flip(1) <= LOGIT_TAIL)  # the last LOGIT_TAIL real positions
    return {"hidden": (ref[0] - got[0])[valid].abs().max().item(),
            "logits": max_logit_diff(model, ref[0], got[0], tail),
            "decode": (ref[1] - got[1]).abs().max().item(),
            "same_next": bool(torch.equal(ref[1].argmax(-1), got[1].argmax(-1)))}


def check(path: str, n_tokens: int, steps: int, patches) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    texts, ids, mask = batch(tok, n_tokens)
    valid = mask.bool()
    name = Path(path).name
    print(f"{name}: batch {tuple(ids.shape)}, real tokens {mask.sum(1).tolist()}, "
          f"sliding_window {getattr(model.config, 'sliding_window', None)}", flush=True)
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]  # eager greedy next token
        steps_ids = first.argmax(-1, keepdim=True)
        for _ in range(steps - 1):
            steps_ids = torch.cat([steps_ids, steps_ids[:, -1:]], 1)
    rows = []
    t0 = time.perf_counter()
    eager = run(model, ids, mask, steps_ids)
    model.set_attn_implementation("sdpa")
    sdpa = run(model, ids, mask, steps_ids)
    with applied(model, parse("baseline").create("patch")):
        base = run(model, ids, mask, steps_ids)
    rows.append({"model": name, "check": "eager vs sdpa (stock)", **compare(model, eager, sdpa, valid)})
    rows.append({"model": name, "check": "baseline vs eager", **compare(model, eager, base, valid)})
    rows.append({"model": name, "check": "baseline vs sdpa", **compare(model, sdpa, base, valid)})
    for r in rows:
        show(r)
    for spec in patches:
        patch = parse(spec).create("patch")
        res = {}
        for force in (None, "materialize"):
            with applied(model, patch, force=force) as session:
                session.set_inputs(texts=texts, tokenizer=tok)
                res[force] = run(model, ids, mask, steps_ids)
        row = {"model": name, "check": f"{spec}: fast vs materialised", **compare(model, res["materialize"],
                                                                                  res[None], valid)}
        tail = valid & (valid.long().flip(1).cumsum(1).flip(1) <= LOGIT_TAIL)
        row["effect"] = max_logit_diff(model, sdpa[0], res[None][0], tail)
        rows.append(row)
        show(row)
    print(f"  ({time.perf_counter() - t0:.0f} s)")
    return rows


def show(r: dict) -> None:
    print(f"  {r['check']:<62} hidden {r['hidden']:.2e}  logits {r['logits']:.2e}  decode {r['decode']:.2e}"
          f"  next-token agree {r['same_next']}" + (f"  (effect {r['effect']:.2f})" if "effect" in r else ""),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="a model directory (repeatable; required without --smoke)")
    ap.add_argument("--tokens", type=int, default=640)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--patches", default=";".join(PATCHES), help="';'-separated patch specs")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds, no ../shared and no downloads: checks the script runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        from components.modeling import resolve

        args.model, args.tokens, args.steps = [resolve("demo").location], 48, 1
        args.patches = "zerotuning(gamma=2);pasta(alpha=0.5, spans=-100:)"
    elif not args.model:
        ap.error("--model is required (a model directory; repeatable)")
    torch.manual_seed(0)
    rows = []
    for path in args.model:
        rows += check(path, args.tokens, args.steps, [p for p in args.patches.split(";") if p])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
