"""What a model and a suite are, and the pure parsing of their checkpoint grids.

`ModelSpec` and `Suite` are the frozen records every stage hands on; the functions here read
revision names (`step<N>`, a suite's branch grammar), parse `--steps` specifications against
a grid and describe grids. Nothing here reads files, the environment or the network: the
lookups (shipped suites, local folders, what a user typed) are `registry.py`, which imports
this module, as do `suite_yaml.py` and `local_layout.py`.
"""
from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pythia_forensics.constants import STEP_DIR_PREFIX
from pythia_forensics.errors import StepSpecError, UnknownModelError

__all__ = [
    "BranchGrid",
    "ModelSpec",
    "Suite",
    "branch_grid",
    "count_label_tokens",
    "decoder_params",
    "describe_grid",
    "parse_branch",
    "parse_steps",
    "revision_name",
    "step_of_revision",
    "tokens_of_revision",
]


STEP_RE = re.compile(rf"^{STEP_DIR_PREFIX}(\d+)$")


# --- records -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """One model of a suite: where its checkpoints live and what shape it has.

    Hub models have `repo` set and `path` None; local models have `path` (the
    `DIR/<model>` folder) and `repo` None. Architecture fields are None when unknown (a
    hub id that is not in any registry).

    `steps` is the expected checkpoint grid (named steps, as in `step<N>` branch names);
    `folders` maps a local model's checkpoint folder names (`checkpoint-500`) to their steps.
    `optimizer_steps_per_named_step` converts a named step into optimizer steps (0.5 for
    Pythia v0, whose branches were renamed); `tokens_per_step` counts tokens per optimizer
    step, so `tokens_seen(step)` is right for both.
    """

    name: str
    suite: str
    source: str                       # "hub" | "local"
    repo: str | None = None
    path: Path | None = None
    size: str | None = None
    layers: int | None = None
    d_model: int | None = None
    heads: int | None = None
    vocab_size: int | None = None     # padded embedding rows
    params_total: int | None = None
    params_nonembedding: int | None = None
    tokens_per_step: int | None = None
    steps: tuple[int, ...] = ()
    aliases: Mapping[str, int] = field(default_factory=dict, hash=False)  # e.g. {"main": 143000}
    deduped: bool = False
    data_seed: int | None = None
    weight_seed: int | None = None
    release: str = "v1"
    precision: str | None = None
    optimizer_steps_per_named_step: float = 1.0
    folders: Mapping[str, int] = field(default_factory=dict, hash=False)
    # Branch-name grammars (regexes, whole-name match; group `step` or 1 = the step, optional
    # groups `tokens` + `unit` = tokens seen, e.g. OLMo's `step20000-tokens84B`). Empty means
    # the Pythia grammar `step<N>`.
    branch_patterns: tuple[str, ...] = ()
    branch_format: str | None = None  # how a grid step is named, e.g. "ckpt_{step:03d}" (default step<N>)
    model_type: str | None = None     # the config's model_type, where the suite file states it
    arch: Mapping[str, Any] = field(default_factory=dict, hash=False)  # further config facts
    notes: tuple[str, ...] = ()       # known upstream faults and caveats (cited in the suite file)

    @property
    def revisions(self) -> tuple[str, ...]:
        """Branch / folder names of the expected grid, in step order."""
        if self.folders:
            return tuple(sorted(self.folders, key=lambda name: (self.folders[name], name)))
        if self.branch_format:
            return tuple(self.branch_format.format(step=s) for s in self.steps)
        return tuple(revision_name(s) for s in self.steps)

    @property
    def final_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @property
    def seed(self) -> int | None:
        """The run's seed when data order and init share one (None if they differ)."""
        return self.data_seed if self.data_seed == self.weight_seed else None

    def step_of(self, revision: str) -> int | None:
        """Named step of a revision (`step1000` -> 1000, an alias such as `main` -> its step,
        `step20000-tokens84B` -> 20000 under an OLMo grammar)."""
        if revision in self.aliases:
            return self.aliases[revision]
        if revision in self.folders:
            return self.folders[revision]
        if self.branch_patterns:
            return parse_branch(revision, self.branch_patterns)[0]
        return step_of_revision(revision)

    def tokens_of(self, revision: str) -> int | None:
        """Tokens seen that the revision's own name states (None when the grammar has none)."""
        return parse_branch(revision, self.branch_patterns)[1] if self.branch_patterns else None

    def optimizer_step(self, step: int) -> float:
        """Optimizer steps taken at a named step (differs from `step` only for v0)."""
        return step * self.optimizer_steps_per_named_step

    def tokens_seen(self, step: int | None, revision: str | None = None) -> int | None:
        """Training tokens seen at a named step, or None when the suite does not define them.

        Tokens that the revision's name encodes (OLMo: `step20000-tokens84B` -> 84e9, as
        rounded in the name) win over `step x tokens_per_step`.
        """
        if revision is not None:
            named = self.tokens_of(revision)
            if named is not None:
                return named
        if self.tokens_per_step is None or step is None:
            return None
        return int(round(self.optimizer_step(step) * self.tokens_per_step))


@dataclass(frozen=True)
class Suite:
    """A named family of models sharing a checkpoint grid (or a local suite folder)."""

    name: str
    description: str
    models: tuple[ModelSpec, ...]
    path: Path | None = None          # the YAML file or the local suite folder
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)  # cite key -> URL
    branch_grammar: str | None = None  # the suite's branch-name regex (None: step<N>)
    notes: tuple[str, ...] = ()       # suite-wide faults and caveats, each with its source

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def model(self, name: str) -> ModelSpec:
        """The model called `name` (also accepts its hub id, e.g. `EleutherAI/pythia-70m`).

        Raises:
            UnknownModelError: no such model; the message suggests close names.
        """
        for m in self.models:
            if name == m.name or (m.repo is not None and name == m.repo):
                return m
        raise UnknownModelError(unknown_name_message(name, self.names, where=f"suite {self.name!r}"))


# --- step names --------------------------------------------------------------------------
def revision_name(step: int) -> str:
    """`1000` -> `"step1000"` (the branch / folder name of a named step)."""
    return f"{STEP_DIR_PREFIX}{int(step)}"


def step_of_revision(revision: str) -> int | None:
    """`"step1000"` -> 1000; None for a name that is not `step<N>` (e.g. `main`, a sha)."""
    match = STEP_RE.match(revision)
    return int(match.group(1)) if match else None


# Multipliers of the unit letter in a branch name's token count (`tokens84B`).
_TOKEN_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_branch(name: str, patterns: Sequence[str]) -> tuple[int | None, int | None]:
    """(step, tokens) of a branch name under the first grammar that matches it wholly."""
    for pattern in patterns:
        regex = _compiled(pattern)
        match = regex.fullmatch(name)
        if match is None:
            continue
        group = match.group("step") if "step" in regex.groupindex else match.group(1)
        if group is None or not (group.isascii() and group.isdigit()):
            continue
        tokens = None
        if "tokens" in regex.groupindex and match.group("tokens") is not None:
            text = match.group("tokens")
            unit = (match.group("unit") or "") if "unit" in regex.groupindex else ""
            if text.isascii() and text.isdigit() and unit.upper() in _TOKEN_UNITS:
                tokens = int(text) * _TOKEN_UNITS[unit.upper()]
        return int(group), tokens
    return None, None


def tokens_of_revision(name: str, pattern: str) -> int | None:
    """Tokens seen that a branch name states under `pattern`.

    Example:
        >>> tokens_of_revision("step20000-tokens84B", r"step(?P<step>\\d+)-tokens(?P<tokens>\\d+)(?P<unit>[BMT])")
        84000000000
    """
    return parse_branch(name, (pattern,))[1]


# --- step specifications -----------------------------------------------------------------
def parse_steps(spec: str | None, grid: Sequence[int]) -> tuple[int, ...]:
    """Select checkpoints from a grid with a `--steps` specification.

    Forms: `all` (the whole grid; also None or ""), `N,N,...` (each must be on the grid;
    `stepN` accepted), `A:B` (every grid step with A <= step <= B; either end may be left
    out), `log` (step 0, the grid step nearest each power of two, and the final step).

    Args:
        spec: the specification string.
        grid: the model's available named steps.

    Returns:
        Sorted, de-duplicated steps, all on the grid.

    Raises:
        StepSpecError: malformed spec, a step not on the grid, or an empty selection.

    Example:
        >>> parse_steps("log", [0, 1, 2, 4, 100, 1000])
        (0, 1, 2, 4, 100, 1000)
    """
    grid_sorted = tuple(sorted(set(int(s) for s in grid)))
    if not grid_sorted:
        raise StepSpecError("the model has no checkpoints to select from; check the suite or hub repo")
    text = "all" if spec is None else str(spec).strip().lower()
    span = f"the grid has {len(grid_sorted)} steps from {grid_sorted[0]} to {grid_sorted[-1]}"
    if text in ("", "all"):
        return grid_sorted
    if text == "log":
        return _log_steps(grid_sorted)
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise StepSpecError(f"malformed step selection {spec!r}: a range is A:B (e.g. 1000:8000)", param="steps")
        lo, hi = (_parse_int(p, spec) if p.strip() else None for p in parts)
        lo = grid_sorted[0] if lo is None else lo
        hi = grid_sorted[-1] if hi is None else hi
        if lo > hi:
            raise StepSpecError(f"malformed step selection {spec!r}: range start {lo} is after its end {hi}", param="steps")
        chosen = tuple(s for s in grid_sorted if lo <= s <= hi)
        if not chosen:
            raise StepSpecError(f"step selection {spec!r} selects no checkpoint: {span}", param="steps")
        return chosen
    wanted = [_parse_int(p, spec) for p in text.split(",") if p.strip()]
    if not wanted:
        raise StepSpecError(f"malformed step selection {spec!r}: use all, log, A:B or N,N,...", param="steps")
    on_grid = set(grid_sorted)
    missing = [s for s in wanted if s not in on_grid]
    if missing:
        hints = ", ".join(f"{s} (nearest {min(grid_sorted, key=lambda g: abs(g - s))})" for s in missing)
        raise StepSpecError(f"step selection {spec!r}: not on the checkpoint grid: {hints}; {span}", param="steps")
    return tuple(sorted(set(wanted)))


def _parse_int(token: str, spec: str | None) -> int:
    token = token.strip()
    if token.startswith(STEP_DIR_PREFIX):
        token = token[len(STEP_DIR_PREFIX):]
    if not (token.isascii() and token.isdigit()):  # isdigit alone accepts "²"
        raise StepSpecError(
            f"malformed step selection {spec!r}: {token!r} is not a step number; use all, log, A:B or N,N,...",
            param="steps",
        )
    return int(token)


def _log_steps(grid: tuple[int, ...]) -> tuple[int, ...]:
    # Log-spaced view of any grid: a collapse late in training and an emergence in the first
    # hundred steps both get checkpoints, at a cost of ~log2(final) revisions.
    chosen = {grid[0], grid[-1]}
    if 0 in grid:
        chosen.add(0)
    positive = [s for s in grid if s > 0]
    if positive:
        top = math.ceil(math.log2(positive[-1]))
        for k in range(top + 1):
            # nearest in log space, ties to the earlier step
            chosen.add(min(positive, key=lambda s, k=k: (abs(math.log2(s) - k), s)))
    return tuple(sorted(chosen))


def describe_grid(steps: Sequence[int]) -> str:
    """A short human description of a step grid.

    Example:
        >>> describe_grid([0, 1, 2, 4, 1000, 2000, 3000, 4000])
        '8 revisions: step0, step1, step2, step4, step1000..step4000 every 1000'
    """
    steps = sorted(set(int(s) for s in steps))
    if not steps:
        return "no revisions"
    parts: list[str] = []
    i = 0
    while i < len(steps):
        j = i
        # a run of >= 4 equally spaced steps reads better as "A..B every D"
        if i + 3 < len(steps):
            gap = steps[i + 1] - steps[i]
            while j + 1 < len(steps) and steps[j + 1] - steps[j] == gap:
                j += 1
        if j - i >= 3:
            parts.append(f"{revision_name(steps[i])}..{revision_name(steps[j])} every {steps[i + 1] - steps[i]}")
            i = j + 1
        else:
            parts.append(revision_name(steps[i]))
            i += 1
    return f"{len(steps)} revisions: " + ", ".join(parts)


@dataclass(frozen=True)
class BranchGrid:
    """What a repo's branch list says about its checkpoint grid (no file was read).

    Attributes:
        steps: parsed step -> branch name (one branch per step, in step order).
        tokens: branch name -> tokens seen its name states (grammars with a tokens group).
        unparsed: branch names no grammar reads (`main`, stage-2 branches, ...).
        duplicates: (step, branch) of branches whose step another branch already holds.
        spacing: the most common difference between consecutive steps (None: < 2 steps).
        gaps: (previous step, next step, missing count) where consecutive steps are further
            apart than `spacing` and a whole number of spacings.
    """

    steps: Mapping[int, str]
    tokens: Mapping[str, int]
    unparsed: tuple[str, ...]
    duplicates: tuple[tuple[int, str], ...]
    spacing: int | None
    gaps: tuple[tuple[int, int, int], ...]

    @property
    def missing(self) -> int:
        return sum(g[2] for g in self.gaps)


def branch_grid(branches: Sequence[str], spec: ModelSpec) -> BranchGrid:
    """Parse branch names with `spec`'s grammar and find the grid's gaps (pure; no hub call).

    Args:
        branches: branch names (as `list_repo_refs` lists them).
        spec: the model; its `branch_patterns` (or `step<N>`) and aliases read the names.

    Returns:
        A `BranchGrid`.
    """
    steps: dict[int, str] = {}
    tokens: dict[str, int] = {}
    unparsed: list[str] = []
    duplicates: list[tuple[int, str]] = []
    for name in sorted(branches):
        step = None if name in spec.aliases else spec.step_of(name)
        if step is None:
            unparsed.append(name)
            continue
        named = spec.tokens_of(name)
        if named is not None:
            tokens[name] = named
        if step in steps:
            duplicates.append((step, name))
            continue
        steps[step] = name
    ordered = sorted(steps)
    diffs = [b - a for a, b in zip(ordered, ordered[1:])]
    spacing = None
    if diffs:
        counts: dict[int, int] = {}
        for d in diffs:
            counts[d] = counts.get(d, 0) + 1
        spacing = max(counts, key=lambda d: (counts[d], -d))
    gaps = tuple((a, b, (b - a) // spacing - 1) for a, b in zip(ordered, ordered[1:])
                 if spacing and b - a > spacing and (b - a) % spacing == 0)
    return BranchGrid(steps={s: steps[s] for s in ordered}, tokens=tokens, unparsed=tuple(unparsed),
                      duplicates=tuple(duplicates), spacing=spacing, gaps=gaps)


def count_label_tokens(tokens: int | None) -> str:
    """`84000000000` -> `84B` (the unit a branch name would use); `?` for None."""
    if tokens is None:
        return "?"
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if tokens >= size and tokens % size == 0:
            return f"{tokens // size}{unit}"
    return f"{tokens:,}"


def decoder_params(model_type: str, *, vocab_size: int, d_model: int, layers: int, intermediate: int,
                   tie_word_embeddings: bool) -> tuple[int, int]:
    """(total, non-embedding) parameters of an OLMo / OLMo 2 / Llama decoder from its config.

    Per layer: q, k, v, o projections 4*d^2 (no biases, as many key/value heads as heads) and
    a SwiGLU MLP 3*d*ff. Norms: OLMo 1 layer norm has no parameters; Llama has 2 RMSNorm
    weights per layer (2d) and OLMo 2 four (q-norm, k-norm, post-attention, post-MLP: 4d),
    both plus a final norm (d). Embeddings: V*d, twice when input and output are untied;
    non-embedding excludes them (Pythia's convention).

    Raises:
        ValueError: a model type this formula does not describe.
    """
    norms = {"olmo": (0, 0), "llama": (2, 1), "olmo2": (4, 1)}
    if model_type not in norms:
        raise ValueError(f"no parameter formula for model_type {model_type!r}")
    per_layer_norms, final_norm = norms[model_type]
    d = d_model
    nonemb = layers * (4 * d * d + 3 * d * intermediate + per_layer_norms * d) + final_norm * d
    emb = vocab_size * d * (1 if tie_word_embeddings else 2)
    return nonemb + emb, nonemb


def unknown_name_message(name: str, known: Sequence[str], *, where: str, what: str = "model",
                     hint: str | None = None) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    parts = [f"unknown {what} {name!r} in {where}"]
    if close:
        parts.append("did you mean " + " or ".join(repr(c) for c in close) + "?")
    if hint:
        parts.append(hint)
    shown = ", ".join(known[:40]) + (f", ... ({len(known)} in all)" if len(known) > 40 else "")
    parts.append(f"known: {shown}")
    return "; ".join(parts)
