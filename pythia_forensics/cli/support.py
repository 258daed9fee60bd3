"""`pythia-forensics support CORPUS --rules FILE`: support-frequency table and summary."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pythia_forensics.constants import PYTHIA_SEQ_ITEM_TOKENS, PYTHIA_STORED_TOKENS_PER_STEP, PYTHIA_TOKENS_PER_STEP
from pythia_forensics.corpus.windows import DEFAULT_SUPPORT_WINDOW


def register(app: typer.Typer) -> None:
    @app.command()
    def support(
        corpus: Path = typer.Argument(..., help="Text/JSONL/Parquet file, datasets folder, .bin/.idx prefix or mini corpus folder."),
        rules: list[str] = typer.Option(["all"], "--rules", help="Rule YAML file, shipped rule name, or 'all' (repeatable)."),
        window: int = typer.Option(DEFAULT_SUPPORT_WINDOW, "--window", help="W: tokens after (before) a cue."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="tokenizer.json, model folder or model name."),
        tokens_per_step: Optional[int] = typer.Option(
            None, "--tokens-per-step",
            help=f"Tokens of the corpus stream per training step (for per-step windows). Pythia's pre-shuffled "
                 f"document.bin: {PYTHIA_STORED_TOKENS_PER_STEP:,} = 1024 x {PYTHIA_SEQ_ITEM_TOKENS}, since each "
                 f"stored sequence holds {PYTHIA_SEQ_ITEM_TOKENS} tokens ({PYTHIA_SEQ_ITEM_TOKENS - 1} inputs + the "
                 f"last one's label); the model itself trains on {PYTHIA_TOKENS_PER_STEP:,} = 1024 x "
                 f"{PYTHIA_SEQ_ITEM_TOKENS - 1} tokens per step (what `suite show` and the tokens axis use). A "
                 "stream read without overlap (the mini suite): batch x seq_len."),
        window_steps: Optional[int] = typer.Option(None, "--window-steps", help="Training steps per window."),
        eod_id: Optional[int] = typer.Option(
            None, "--eod-id",
            help="Token id that ends a document inside a .bin/.idx item (Pythia's pre-shuffled files: 0)."),
        mode: str = typer.Option("windowed", "--mode",
                                 help="windowed | bigram | battery (the paper's battery bigram counter; needs --probes) "
                                      "| ngram (stupid-backoff surface model scored on --probes per budget)"),
        probes: Optional[str] = typer.Option(None, "--probes",
                                             help="Probe set name, file or 'all' (battery mode: its items give the patterns)."),
        text_field: str = typer.Option("text", "--text-field", help="Text field/column of JSONL, Parquet, datasets."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write the table (.csv or .parquet)."),
        strict: bool = typer.Option(False, "--strict", help="Fail on any rule word the tokenizer cannot match."),
        orders: str = typer.Option("2,5", "--orders", help="ngram mode: n-gram orders, comma-separated."),
        token_limit: Optional[int] = typer.Option(None, "--token-limit", help="ngram mode: count only the first N tokens."),
        per_item: Optional[Path] = typer.Option(None, "--per-item", help="ngram mode: write per-item rows (.csv)."),
    ) -> None:
        """Count rule-winning and prior-winning events per rule, overall and per window."""
        import warnings

        from pythia_forensics.atomic import atomic_write

        from pythia_forensics.cli.common import check_output_file, console, err_console
        from pythia_forensics.errors import UsageError
        from pythia_forensics.corpus.support import BATTERY_MODE, SupportCueWarning, count_battery, count_support

        from pythia_forensics.corpus.ngram import NGRAM_MODE

        if mode in (BATTERY_MODE, NGRAM_MODE) and probes is None:
            raise UsageError(f"--mode {mode} needs --probes (a probe set name, a file, or 'all')")
        if mode not in (BATTERY_MODE, NGRAM_MODE) and probes is not None:
            raise UsageError(f"--probes is only used by --mode battery and ngram (got --mode {mode})")
        if mode == NGRAM_MODE:
            return _ngram(corpus, probes, orders=orders, tokenizer=tokenizer, tokens_per_step=tokens_per_step,
                          window_steps=window_steps, text_field=text_field, eod_id=eod_id,
                          token_limit=token_limit, out=out, per_item=per_item)
        if out is not None and out.suffix.lower() not in (".csv", ".parquet"):
            raise UsageError(f"--out {out} has suffix {out.suffix!r}; use .csv or .parquet")
        check_output_file(out, "--out")

        with warnings.catch_warnings():
            # printed below from frame.attrs, once per word, instead of as a Python warning
            warnings.simplefilter("ignore", SupportCueWarning)
            # with --out, progress is saved next to it: rerunning after an interrupt resumes
            state = out.with_name(out.name + ".partial.json") if out is not None else None
            if mode == BATTERY_MODE:
                frame = count_battery(corpus, probes, tokenizer=tokenizer, tokens_per_step=tokens_per_step,
                                      window_steps=window_steps, text_field=text_field, state_file=state,
                                      eod_id=eod_id)
            else:
                frame = count_support(corpus, rules, window=window, tokenizer=tokenizer,
                                      tokens_per_step=tokens_per_step, window_steps=window_steps, mode=mode,
                                      text_field=text_field, strict=strict, state_file=state, eod_id=eod_id)
        for line in frame.attrs["unmatched"]:
            err_console.print(f"[yellow]unmatched:[/] {line}", highlight=False)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.suffix.lower() == ".parquet":
                atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
            else:
                atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))
        overall = frame[frame.scope == "overall"]
        cols = (["rule", "condition", "target_count", "foil_count", "ratio", "note"] if mode == BATTERY_MODE
                else ["rule", "frame", "direction", "cues", "rule_wins", "prior_wins", "ratio", "note"])
        console.print(overall[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-"),
                      highlight=False)
        if out is not None:
            console.print(f"wrote {len(frame)} rows to {out}", highlight=False)


def _ngram(corpus: Path, probes: str, *, orders: str, tokenizer: str | None, tokens_per_step: int | None,
           window_steps: int | None, text_field: str, eod_id: int | None, token_limit: int | None,
           out: Path | None, per_item: Path | None) -> None:
    """`support --mode ngram`: the surface model's table per budget, optionally per item."""
    from pythia_forensics.atomic import atomic_write
    from pythia_forensics.cli.common import check_output_file, console
    from pythia_forensics.corpus.ngram import count_ngram, parse_orders
    from pythia_forensics.errors import UsageError

    for path, flag in ((out, "--out"), (per_item, "--per-item")):
        if path is not None and path.suffix.lower() != ".csv":
            raise UsageError(f"{flag} {path} has suffix {path.suffix!r}; ngram mode writes .csv")
        check_output_file(path, flag)
    parse_orders(orders)  # refused before the stream is opened
    state = out.with_name(out.name + ".partial.json") if out is not None else None
    frame, items = count_ngram(corpus, probes, orders=orders, tokenizer=tokenizer, tokens_per_step=tokens_per_step,
                               window_steps=window_steps, text_field=text_field, eod_id=eod_id,
                               token_limit=token_limit, state_file=state, per_item=True)
    for path, table in ((out, frame), (per_item, items)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp, t=table: t.to_csv(tmp, index=False))
    last = frame[frame.tokens == frame.tokens.max()]
    console.print(last.drop(columns=["mode"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"),
                  highlight=False)
    if out is not None:
        console.print(f"wrote {len(frame)} rows to {out}", highlight=False)
