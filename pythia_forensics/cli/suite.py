"""`pythia-forensics suite list|show`: what the registry knows (a shell over `registry`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

suite_app = typer.Typer(help="Show the suite registry: models, shapes, parameter counts, step grids.",
                        no_args_is_help=True)


def _count(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


@suite_app.command("list")
def list_cmd(
    suite_dir: Optional[Path] = typer.Option(None, help="Also list a local suite folder (DIR/<model>/manifest.json)."),
) -> None:
    """List the known suites."""
    from pythia_forensics.cli.common import console
    from pythia_forensics.registry import get_suite, known_suites

    suites = [get_suite(name) for name in known_suites()]
    if suite_dir is not None:
        suites.append(get_suite(str(suite_dir)))
    for suite in suites:
        console.print(f"[bold]{suite.name}[/]  {len(suite.models)} models  {suite.description}", highlight=False)


@suite_app.command("show")
def show_cmd(
    name: str = typer.Argument("pythia", help="Suite name (see `suite list`) or a local suite folder."),
    show_all: bool = typer.Option(False, "--all", help="Also list seed and v0 variants."),
) -> None:
    """Print a suite's models: layers, d_model, heads, vocab, parameters, tokens/step, revisions."""
    from rich.table import Table

    from pythia_forensics.cli.common import console
    from pythia_forensics.registry import describe_grid, get_suite

    suite = get_suite(name)
    # by default the main line only: base models and their -deduped twins
    shown = [m for m in suite.models
             if show_all or (m.release == "v1" and m.data_seed == m.weight_seed and m.seed in (None, 1234))]
    table = Table(title=f"{suite.name}: {suite.description}")
    for col in ("model", "repo / folder", "layers", "d_model", "heads", "vocab", "non-emb params",
                "total params", "tokens/step", "revisions"):
        table.add_column(col, justify="right" if col not in ("model", "repo / folder") else "left")
    for m in shown:
        table.add_row(m.name, m.repo or str(m.path), _count(m.layers), _count(m.d_model), _count(m.heads),
                      _count(m.vocab_size), _count(m.params_nonembedding), _count(m.params_total),
                      _count(m.tokens_per_step), str(len(m.steps)))
    console.print(table)
    grids = {describe_grid(m.steps) for m in shown}
    for grid in sorted(grids):
        console.print(f"grid: {grid}", highlight=False)
    aliases = {f"{k} = step{v}" for m in shown for k, v in m.aliases.items()}
    if aliases:
        console.print("aliases: " + ", ".join(sorted(aliases)), highlight=False)
    hidden = len(suite.models) - len(shown)
    if hidden:
        console.print(f"{hidden} more variants (seeds, v0): add --all", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(suite_app, name="suite")
