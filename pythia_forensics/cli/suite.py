"""`pythia-forensics suite list|show|discover`: what the registry knows and what a hub repo's
branch list holds (a shell over `registry` and `sources.discover_branches`)."""
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
    from pythia_forensics.checkpoints.registry import get_suite, known_suites

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
    from pythia_forensics.checkpoints.registry import describe_grid, get_suite

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
                      _count(m.tokens_per_step), str(len(m.steps)) if m.steps else "hub refs")
    console.print(table)
    grids = {describe_grid(m.steps) for m in shown if m.steps}
    for grid in sorted(grids):
        console.print(f"grid: {grid}", highlight=False)
    for m in shown:
        if m.steps and m.branch_format:
            console.print(f"branches of {m.name}: {m.revisions[0]} .. {m.revisions[-1]}", highlight=False)
    aliases = {f"{k} = {m.revisions[m.steps.index(v)] if v in m.steps else f'step{v}'}" for m in shown for k, v in m.aliases.items()}
    if aliases:
        console.print("aliases: " + ", ".join(sorted(aliases)), highlight=False)
    if suite.branch_grammar:
        console.print(f"branch names: {suite.branch_grammar}", highlight=False)
    for m in shown:
        if not m.steps:
            console.print(f"grid of {m.name}: from the hub's branch list (`pythia-forensics suite discover {m.repo}`)",
                          highlight=False)
        if m.model_type:
            console.print(f"{m.name}: model_type {m.model_type}", highlight=False)
        for note in m.notes:
            console.print(f"note ({m.name}): {note}", highlight=False)
    for note in suite.notes:
        console.print(f"note: {note}", highlight=False)
    if any(m.params_total is None for m in shown):
        console.print("sizes left blank are in no cited source: the tool does not guess them (a "
                      "replayed checkpoint's config.json and tensors say them)", highlight=False)
    for key, url in suite.sources.items():
        console.print(f"source {key}: {url}", highlight=False)
    hidden = len(suite.models) - len(shown)
    if hidden:
        console.print(f"{hidden} more variants (seeds, v0): add --all", highlight=False)


def _ranges(steps: list[int], spacing: int | None) -> str:
    """`0, 1000..5000 every 1000` style listing of parsed steps."""
    from pythia_forensics.checkpoints.registry import describe_grid

    return describe_grid(steps).split(": ", 1)[-1] if steps else "none"


@suite_app.command("discover")
def discover_cmd(
    repo: str = typer.Argument(..., help="Hub repo id (org/name) or registry name."),
    step_pattern: Optional[str] = typer.Option(
        None, "--step-pattern", metavar="REGEX",
        help=r"Branch-name grammar: the step in (?P<step>...) or group 1, optional (?P<tokens>\d+)(?P<unit>[KMBT]) "
             "for tokens seen. Default: the suite's grammar, or step<N> and every shipped suite's grammar."),
    show: int = typer.Option(12, help="Branch names to print per list (0: all)."),
) -> None:
    """List a hub repo's step branches from its refs alone (no file is downloaded): parsed
    steps, tokens seen, unparsed names and gaps in the grid."""
    from pythia_forensics.cli.common import console
    from pythia_forensics.checkpoints.registry import count_label_tokens
    from pythia_forensics.checkpoints.sources import discover_branches

    spec, grid = discover_branches(repo, step_pattern=step_pattern)
    steps = list(grid.steps)

    def some(names: list[str]) -> str:
        cut = names if show == 0 or len(names) <= show else names[:show]
        return ", ".join(cut) + ("" if len(cut) == len(names) else f", ... ({len(names)} in all)")

    console.print(f"[bold]{spec.repo}[/]  {len(steps) + len(grid.unparsed) + len(grid.duplicates)} branches  "
                  f"grammar: {' | '.join(spec.branch_patterns) or 'step<N>'}", highlight=False)
    console.print(f"parsed steps ({len(steps)}): {_ranges(steps, grid.spacing)}", highlight=False)
    if steps:
        console.print(f"branches: {some([grid.steps[s] for s in steps])}", highlight=False)
    if grid.tokens:
        first, last = grid.steps[steps[0]], grid.steps[steps[-1]]
        console.print(f"tokens seen (from branch names): {count_label_tokens(grid.tokens.get(first))} at step{steps[0]} .. "
                      f"{count_label_tokens(grid.tokens.get(last))} at step{steps[-1]}", highlight=False)
    elif spec.tokens_per_step:
        console.print(f"tokens seen: step x {spec.tokens_per_step:,} tokens per step", highlight=False)
    else:
        console.print("tokens seen: unknown (neither in the branch names nor in the registry)", highlight=False)
    if grid.spacing:
        console.print(f"spacing: {grid.spacing} steps; gaps: {len(grid.gaps)} ({grid.missing} missing checkpoints)",
                      highlight=False)
        for a, b, n in grid.gaps[: show or None]:
            console.print(f"  gap: step{a} -> step{b} ({n} missing)", highlight=False)
    if grid.duplicates:
        console.print(f"duplicate steps: {some([f'{n} (step{s})' for s, n in grid.duplicates])}", highlight=False)
    console.print(f"unparsed ({len(grid.unparsed)}): {some(list(grid.unparsed)) or 'none'}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(suite_app, name="suite")
