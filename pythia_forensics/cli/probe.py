"""`pythia-forensics probe`: score one checkpoint on a probe set and print a summary table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.atomic import atomic_write
from pythia_forensics.cli.common import check_output_file, parse_batch_size
from pythia_forensics.scoring.options import DEFAULT_VOCAB_ROWS, VOCAB_ROWS
from pythia_forensics.errors import UsageError

OUT_SUFFIXES = (".parquet", ".csv", ".jsonl")


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise UsageError(f"--out {out} has suffix {out.suffix.lower()!r}; use one of {', '.join(OUT_SUFFIXES)}")
    check_output_file(out, "--out")


def _write(frame, out: Path) -> None:
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
    elif suffix == ".csv":
        atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        atomic_write(out, lambda tmp: frame.to_json(tmp, orient="records", lines=True, force_ascii=False))


def register(app: typer.Typer) -> None:
    @app.command("probe")
    def probe_cmd(
        model: str = typer.Argument(..., help="Checkpoint folder (save_pretrained), folder of revisions, or hub repo id."),
        probes: list[str] = typer.Option(..., "--probes", "-p",
                                         help="Probe file (.yaml/.jsonl, paper JSONL too) or shipped set name, or 'all'; repeatable."),
        revision: Optional[str] = typer.Option(None, help="Hub branch/tag/commit (e.g. step3000), or a checkpoint "
                                               "sub-folder of a local model folder (step3000, checkpoint-500)."),
        out: Optional[Path] = typer.Option(None, help="Write per-item scores to FILE.parquet, .csv or .jsonl."),
        batch_size: str = typer.Option("auto", help="Sequences per forward pass, or auto (halves on out-of-memory)."),
        dtype: str = typer.Option("auto", help="auto (fp32 on CPU and up to ~3B params) | float32 | float16 | bfloat16."),
        device: str = typer.Option("auto", help="auto (cuda if available) | cpu | cuda | cuda:N."),
        bos: bool = typer.Option(False, "--bos/--no-bos", help="Prepend a BOS token to every prefix (Pythia adds none)."),
        vocab_rows: str = typer.Option(DEFAULT_VOCAB_ROWS, help=f"{' | '.join(VOCAB_ROWS)}: log-sum-exp over every "
                                       "output row (the model's distribution, as minicons/lm-eval) or over the "
                                       "tokenizer's rows only (Pythia: 50277 of 50304)."),
        threads: str = typer.Option("auto", help="CPU threads for scoring, or auto ($PF_THREADS, else "
                                    "$OMP_NUM_THREADS, else the CPUs this process may use); recorded with results."),
        allow_invisible: bool = typer.Option(False, "--allow-invisible", help="Score prefixes and candidates with "
                                             "control characters (other than tab and newline) or nothing visible "
                                             "(only zero-width / format characters) on purpose."),
    ) -> None:
        """Score a checkpoint: log p(target) vs log p(foil) per item; summary per rule, condition, split.

        Probe format: a YAML file {name, description?, items: [...]} (or a bare list of items), a
        JSONL file (one item per line), or the Natural-Ungrokking paper's JSONL battery (family,
        correct, distractor, template_id, ... read unchanged). Each item has the text fields
        item_id (unique), rule, condition (conflict | agree), split (train | heldout), prefix,
        target, foil (target != foil), optional template and meta (a mapping), and optional
        allow_invisible (true: keep control or zero-width characters in its text on purpose).
        Every problem is reported at once as file:line: field 'x': what is wrong.
        """
        from rich.table import Table

        from pythia_forensics.cli.common import console
        from pythia_forensics.scoring.score import ScoreOptions, score, summarize

        if out is not None:
            _check_out(out)  # before the (long) scoring, not after
        options = ScoreOptions(dtype=dtype, device=device, bos=bos, vocab_rows=vocab_rows,
                               batch_size=parse_batch_size(batch_size),
                               threads=int(threads) if threads.isascii() and threads.isdigit() else threads)
        from pythia_forensics.scoring.probes import load_probes

        probe_set = load_probes(probes, allow_invisible=allow_invisible)
        frame = score(model, probe_set, revision=revision, options=options, progress=True)
        table = Table(title=f"{model}" + (f" @ {revision}" if revision else "") +
                      f"  ({frame.attrs['dtype']}, {frame.attrs['device']}, bos={frame.attrs['bos']})")
        for col, justify in (("rule", "left"), ("condition", "left"), ("split", "left"), ("n", "right"),
                             ("accuracy", "right"), ("mean margin (nats)", "right")):
            table.add_column(col, justify=justify)
        for row in summarize(frame).itertuples():
            table.add_row(row.rule, row.condition, row.split, str(row.n), f"{row.accuracy:.3f}", f"{row.mean_margin:+.3f}")
        console.print(table)
        if out is not None:
            _write(frame, out)
            console.print(f"wrote {len(frame)} items to {out}")
