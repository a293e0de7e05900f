"""`attnflow export-onnx` (generated from the `export-onnx` flow), `attnflow generate` (ONNX Runtime generation)."""

from __future__ import annotations

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check_export(call: Call) -> None:
    from tasks.export import plan_export

    p = call.params
    plan_export.fn(p["model"], p["component"], p["params"], p["optimize"], p["out"], p["attention_form"],
                   p["parity_lengths"], p["parity_multiple"], p["speed_lengths"] if p["benchmark"] else [],
                   p["trust_remote_code"], p["opset"])


def show_export(result: dict, call: Call) -> None:
    from attnflow.output import print_mlflow
    from tasks.export import parity_summary

    manifest = result["manifest"]
    typer.echo(f"exported to {result['out_dir']}")
    for graph in manifest["graphs"].values():
        typer.echo(f"  {graph['file']:12s} attention {graph['attention']}, fused ops {graph['fused_ops'] or '-'}")
    typer.echo(f"  parity: {parity_summary(manifest['parity'])}")
    for length, r in (manifest["speed"] or {"lengths": {}})["lengths"].items():
        typer.echo(f"  speed T={length}: onnxruntime {r['onnxruntime_ms']:.1f} ms vs torch {r['torch_ms']:.1f} ms "
                   f"(x{r['ratio']:.2f}, 1 thread)")
    if result.get("registered_version"):
        typer.echo(f"  MLflow: {result['registered_name']} version {result['registered_version']}")
    if result.get("run_id"):
        print_mlflow(call.params["experiment"], result["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("export-onnx", "flows.export:export", lambda: {"prepare": check_export, "show": show_export})

    @app.command("generate")
    def generate(
        onnx: str = typer.Option(..., "--onnx", help="Directory written by `attnflow export-onnx`."),
        prompt: list[str] = typer.Option(..., "--prompt", help="Prompt text (repeat for a batch)."),
        max_new_tokens: int = typer.Option(32, min=1, help="Tokens to generate."),
        sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
        temperature: float = typer.Option(1.0, help="Sampling temperature (> 0)."),
        top_k: int = typer.Option(0, min=0, help="Sample among the k most likely tokens (0 = all)."),
        seed: int = typer.Option(0, help="Sampling seed."),
        provider: str = typer.Option("cpu", help="ONNX Runtime execution provider: cpu or cuda."),
        verify: bool = typer.Option(False, "--verify", help="Also decode greedily with the patched PyTorch model "
                                    "recorded in the manifest and report whether the tokens match."),
    ) -> None:
        """Generate text with an exported model on ONNX Runtime (uses the KV-cache graph when exported)."""
        from attnflow.cli import fail, guarded

        def prepare():
            from pathlib import Path

            from transformers import AutoTokenizer

            from components.onnx.generate import PROVIDERS, OnnxCausalLM

            if provider not in PROVIDERS:
                raise ValueError(f"--provider {provider!r} is not one of {', '.join(PROVIDERS)}")
            if sample and temperature <= 0:
                raise ValueError(f"--temperature {temperature} must be > 0 when sampling")
            if not Path(onnx).is_dir():
                raise FileNotFoundError(f"--onnx {onnx!r} is not a directory")
            return OnnxCausalLM(onnx, provider=provider), AutoTokenizer.from_pretrained(onnx)

        lm, tokenizer = guarded(prepare)
        typer.secho(lm.provider.message, fg=typer.colors.YELLOW if lm.provider.fell_back else None, err=True)
        if not lm.has_kv_cache:
            typer.echo("note: no decode.onnx in this export (exported without --kv-cache): every step re-runs the "
                       "prefill graph", err=True)
        tokenizer.padding_side = "left"
        enc = tokenizer(prompt, return_tensors="np", padding=True)
        gen = lm.manifest.get("generation", {})
        ids = lm.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens, do_sample=sample,
                          temperature=temperature, top_k=top_k, seed=seed, eos_token_id=gen.get("eos_token_id"),
                          pad_token_id=gen.get("pad_token_id"))
        for i in range(len(prompt)):  # the prompt and its continuation, left padding dropped
            first = int(enc["attention_mask"][i].argmax())
            typer.echo(f"[{i}] {tokenizer.decode(ids[i, first:], skip_special_tokens=True)}")
        if verify:
            if sample:
                fail("--verify compares greedy decoding; drop --sample")
            same = _torch_tokens(lm.manifest, enc, max_new_tokens, gen) == ids.tolist()
            typer.echo(f"greedy tokens match the patched PyTorch model: {'yes' if same else 'NO'}")
            if not same:
                raise typer.Exit(code=1)


def _torch_tokens(manifest: dict, enc: dict, max_new_tokens: int, gen: dict) -> list[list[int]]:
    """Greedy tokens of the model + component recorded in the manifest, decoded by PyTorch."""
    import torch

    from components import modeling
    from registry.specs import parse

    model, _ = modeling.load_model(manifest["model"]["location"])
    comp = parse(manifest["component"]["spec"]).create("patch")
    with torch.no_grad(), comp.applied(model):
        out = model.generate(input_ids=torch.from_numpy(enc["input_ids"]),
                             attention_mask=torch.from_numpy(enc["attention_mask"]), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=gen.get("eos_token_id"),
                             pad_token_id=gen.get("pad_token_id"))
    return out.tolist()
