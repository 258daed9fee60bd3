"""Reading a suite's YAML file (`data/suites/<name>.yaml`) into a `specs.Suite`.

Two shapes: a model family on one grid (Pythia: sizes x seeds, one step grid) and a list of
models each with its own grid and branch grammar (OLMo, Amber). Every model row must cite a
source (`sources:` in the file), so a shipped fact is never unsourced, and every source must
be the publisher's own (`publisher:` in the file, `check_publisher_sources`): its model cards,
config files and repo pages on the hub or GitHub under the publisher's organisations, or its
paper on arXiv; never a third party's copy, conversion or quantisation of its models (a GGUF
or ONNX repo re-states the publisher's facts, and may have changed them).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pythia_forensics.checkpoints.specs import ModelSpec, Suite, parse_branch
from pythia_forensics.constants import PYTHIA_TOKENS_PER_STEP

__all__ = ["suite_from_yaml", "check_publisher_sources", "PUBLISHER_CODE_HOSTS", "PAPER_HOSTS"]

# Hosts whose first path segment is an organisation: a source there is the publisher's when that
# segment is one of its `publisher.orgs`.
PUBLISHER_CODE_HOSTS = ("huggingface.co", "github.com")
# Paper servers: a paper is the publisher's own publication wherever it is hosted.
PAPER_HOSTS = ("arxiv.org",)


def _grid_from_yaml(grid: Mapping[str, Any]) -> tuple[int, ...]:
    steps = set(int(s) for s in grid.get("explicit", ()))
    every = grid.get("every")
    if every:
        steps.update(range(int(every["start"]), int(every["stop"]) + 1, int(every["step"])))
    return tuple(sorted(steps))


def suite_from_yaml(data: Mapping[str, Any], path: Path) -> Suite:
    if isinstance(data.get("models"), list):
        return _listed_suite_from_yaml(data, path)
    suite = data["suite"]
    org = data["hub_org"]
    grid = _grid_from_yaml(data["grid"])
    final = int(data["final_step"])
    if grid[-1] != final:
        raise ValueError(f"{path}: final_step {final} is not the last grid step {grid[-1]}")
    aliases = {str(k): int(v) for k, v in (data.get("aliases") or {}).items()}
    tokens = int(data.get("tokens_per_step", PYTHIA_TOKENS_PER_STEP))
    default_seed = int(data["default_seed"])
    shapes = data["models"]
    variants = data.get("variants") or {}

    def spec(size: str, suffix: str, **over: Any) -> ModelSpec:
        row = shapes[size]
        name = f"{suite}-{size}{suffix}"
        base: dict[str, Any] = dict(
            name=name, suite=suite, source="hub", repo=f"{org}/{name}", size=size,
            layers=int(row["layers"]), d_model=int(row["d_model"]), heads=int(row["heads"]),
            vocab_size=int(row["vocab_size"]), params_total=int(row["params_total"]),
            params_nonembedding=int(row["params_nonembedding"]), tokens_per_step=tokens,
            steps=grid, aliases=dict(aliases), data_seed=default_seed, weight_seed=default_seed,
            precision=row.get("precision"),
        )
        base.update(over)
        return ModelSpec(**base)

    models: list[ModelSpec] = []
    for size in shapes:
        models.append(spec(size, ""))
        if size in variants.get("deduped", {}).get("sizes", ()):
            models.append(spec(size, "-deduped", deduped=True))
    for key, suffix, fields_ in (
        ("seeds", "-seed{}", ("data_seed", "weight_seed")),
        ("data_seeds", "-data-seed{}", ("data_seed",)),
        ("weight_seeds", "-weight-seed{}", ("weight_seed",)),
    ):
        group = variants.get(key)
        if not group:
            continue
        for size in group["sizes"]:
            for seed in group["seeds"]:
                models.append(spec(size, suffix.format(seed), **{f: int(seed) for f in fields_}))
    v0 = variants.get("v0")
    if v0:
        for size in v0["sizes"]:
            models.append(spec(
                size, "-v0", release="v0", tokens_per_step=int(v0["tokens_per_step"]),
                optimizer_steps_per_named_step=float(v0["optimizer_steps_per_named_step"]),
            ))
    return Suite(name=suite, description=str(data.get("description", "")), models=tuple(models), path=path)


def _cite(entry: Mapping[str, Any], sources: Mapping[str, str], path: Path, what: str) -> None:
    """Every fact group of a listed suite names its source; an unknown key is a broken file."""
    keys = entry.get("cite")
    keys = [keys] if isinstance(keys, str) else list(keys or ())
    if not keys:
        raise ValueError(f"{path}: {what} cites no source")
    unknown = [k for k in keys if k not in sources]
    if unknown:
        raise ValueError(f"{path}: {what} cites unknown source(s) {unknown}; add them under `sources`")


def check_publisher_sources(data: Mapping[str, Any], path: Path) -> None:
    """Refuse a listed suite file that cites anything but the publisher's own sources.

    The file names its publisher: ``publisher: {orgs: [allenai], hosts: [allenai.org]}``. A
    source URL passes when it is https and lies on the hub or GitHub under one of ``orgs``
    (``https://huggingface.co/allenai/OLMo-1B-hf/blob/main/config.json``), on a paper server
    (`PAPER_HOSTS`), or on one of the publisher's own ``hosts``.

    Raises:
        ValueError: no publisher is named, or a source is someone else's (the message names it).
    """
    publisher = data.get("publisher") or {}
    orgs = {str(o).lower() for o in publisher.get("orgs") or ()}
    hosts = {str(h).lower() for h in publisher.get("hosts") or ()}
    if not orgs and not hosts:
        raise ValueError(f"{path}: name the publisher whose sources the file cites, e.g. "
                         "`publisher: {orgs: [allenai]}`")
    for key, url in (data.get("sources") or {}).items():
        parts = urlparse(str(url))
        host = (parts.hostname or "").lower()
        owner = parts.path.strip("/").split("/")[0].lower()
        own = parts.scheme == "https" and (
            (host in PUBLISHER_CODE_HOSTS and owner in orgs) or host in PAPER_HOSTS or host in hosts)
        if not own:
            raise ValueError(f"{path}: source {key!r} ({url}) is not the publisher's own (orgs {sorted(orgs)}, "
                             f"hosts {sorted(hosts)}); cite the publisher's model card, config file or paper, "
                             "not a third party's copy or conversion")


def _listed_suite_from_yaml(data: Mapping[str, Any], path: Path) -> Suite:
    """A suite file listing its models one by one (OLMo, LLM360, ...), every fact cited.

    Shape: `publisher` {orgs, hosts?} (`check_publisher_sources`), `sources` (key -> URL),
    `branch_grammar` {pattern, cite}, optional `notes`
    [{text, cite}], `models` [{name, repo, cite, layers?, d_model?, heads?, vocab_size?,
    params_total?, params_nonembedding?, tokens_per_step?, model_type?, arch?, notes?}].
    Facts a file leaves out stay None: sizes then come from the checkpoint's config and tensors.
    """
    suite = str(data["suite"])
    check_publisher_sources(data, path)
    sources = {str(k): str(v) for k, v in (data.get("sources") or {}).items()}
    grammar = data.get("branch_grammar") or {}
    pattern = grammar.get("pattern")
    if pattern is not None:
        _cite(grammar, sources, path, "branch_grammar")
        regex = re.compile(pattern)
        if "step" not in regex.groupindex:
            raise ValueError(f"{path}: branch_grammar {pattern!r} has no (?P<step>...) group")
    patterns = (str(pattern),) if pattern else ()
    if grammar.get("format") is not None:
        named = str(grammar["format"]).format(step=7)
        if parse_branch(named, patterns)[0] != 7:
            raise ValueError(f"{path}: branch_grammar format {grammar['format']!r} names step 7 {named!r}, "
                             "which its pattern does not read back as step 7")

    def notes_of(entry: Mapping[str, Any], what: str) -> tuple[str, ...]:
        out = []
        for note in entry.get("notes") or ():
            _cite(note, sources, path, f"{what} note {note.get('text', '')[:30]!r}")
            cites = note["cite"] if isinstance(note["cite"], list) else [note["cite"]]
            out.append(f"{note['text']} ({', '.join(sources[c] for c in cites)})")
        return tuple(out)

    suite_notes = notes_of(data, "suite")
    models = []
    for row in data["models"]:
        _cite(row, sources, path, f"model {row.get('name')!r}")

        def opt(key: str, row: Mapping[str, Any] = row) -> int | None:
            return None if row.get(key) is None else int(row[key])

        steps = _grid_from_yaml(row["grid"]) if row.get("grid") else ()
        models.append(ModelSpec(
            name=str(row["name"]), suite=suite, source="hub", repo=str(row["repo"]),
            size=row.get("size"), layers=opt("layers"), d_model=opt("d_model"), heads=opt("heads"),
            vocab_size=opt("vocab_size"), params_total=opt("params_total"),
            params_nonembedding=opt("params_nonembedding"), tokens_per_step=opt("tokens_per_step"),
            steps=steps, aliases={str(k): int(v) for k, v in (row.get("aliases") or {}).items()},
            precision=row.get("precision"), branch_patterns=patterns, model_type=row.get("model_type"),
            branch_format=grammar.get("format"),
            arch=dict(row.get("arch") or {}), notes=notes_of(row, f"model {row['name']!r}"),
        ))
    return Suite(name=suite, description=str(data.get("description", "")), models=tuple(models), path=path,
                 sources=sources, branch_grammar=patterns[0] if patterns else None, notes=suite_notes)
