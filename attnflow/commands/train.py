"""`attnflow train-lm`: train a small LM from a preset (the demo model's recipe)."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train-lm")
    def train_lm(
        preset: str = typer.Option("demo", help="Preset in registry/presets/lm (demo, tiny) or a YAML path."),
        out: Optional[str] = typer.Option(
            None, help="Output model directory (default ATTNFLOW_HOME/models/<preset>-lm)."),
        steps: Optional[int] = typer.Option(None, help="Override train.steps."),
        seed: Optional[int] = typer.Option(None, help="Override train.seed."),
        corpus: Optional[str] = typer.Option(None, help="Text corpus to mix in: file, hf:<id>, builtin:stories."),
        corpus_weight: float = typer.Option(0.2, help="Mixture weight of the corpus."),
        corpus_field: str = typer.Option("text", help="Text field of record corpora."),
        set_: list[str] = typer.Option([], "--set", help="Preset override, e.g. --set model.layers=6 (repeatable)."),
        register_model: bool = typer.Option(True, "--register/--no-register", help="Register in MLflow."),
        experiment: str = typer.Option("train-lm", help="MLflow experiment."),
    ) -> None:
        """Train a Llama-architecture LM on synthetic in-context tasks; re-running resumes from a checkpoint."""
        from attnflow.cli import guarded, run_flow
        from registry.specs import parse_kv
        from tasks.lm import resolve_preset

        overrides = guarded(lambda: parse_kv(set_, "--set"))
        guarded(lambda: resolve_preset.fn(preset, {**overrides, **({"train.steps": steps} if steps else {})},
                                          corpus, corpus_weight, corpus_field))
        from flows.train_lm import train_lm as flow

        out_ = run_flow(flow, preset=preset, out=out, steps=steps, seed=seed, corpus=corpus,
                        corpus_weight=corpus_weight, corpus_field=corpus_field, overrides=overrides,
                        register_model=register_model, experiment=experiment)
        typer.echo(f"model: {out_['model_dir']}")
        for k, v in sorted(out_["metrics"].items()):
            typer.echo(f"  {k:60s} {v:.4f}")
