"""Support frequency: how often a training stream shows each rule winning against its prior.

A rule (``probes/rules/<rule>.yaml``) names a cue class (girls' names), the rule's target
forms (" she") and the prior's competitor forms (" he"). The windowed counter looks, for every
cue occurrence, at the next W tokens of the same document (``direction: before``: the W tokens
before it): the nearest target is a *rule win*, the nearest competitor a *prior win*, neither
is no event. The support ratio is ``(rule_wins + 1) / (prior_wins + 1)``. The bigram counter is
the same with W = 1. The exact event definition is in docs/ARCHITECTURE.md ("Corpus and support
ground truth"); the mini-suite generator records its ground truth under the same definition.

Words are matched on token ids, in every form a tokenizer gives them: ``" Sue"`` and ``"Sue"``
tokenize differently (and ``"Sue"`` may take two tokens at a sequence start), so each word is
compiled to the token sequences of both forms and matched as a whole word (the neighbouring
tokens must start/end with a non-alphanumeric character). A word whose forms cannot be matched
(it tokenizes to nothing, to an unknown token, or -- with ``multi_token=False`` -- to several
tokens) is REPORTED by name (warning, ``unmatched`` column, ``frame.attrs["unmatched"]``): the
paper's windowed counter silently counted zero because its girl-name cue class tokenized to
nothing.

Context-conditioned (in-frame) support: a rule may name ``frames`` -- whole-word patterns
such as ``[<cue>, cried, because, <candidate>]`` or ``[<cue>, "...", because, <candidate>]`` --
and every windowed event whose cue and chosen form stand in the frame is counted again under
that frame's name (``frame`` column; ``"corpus"`` rows count every event). This isolates the
frame where rule and prior conflict on any corpus; on the mini corpus the ``conflict`` frame
recovers the generator's conflict-frame ground truth exactly.

The paper's battery bigram counter (`count_battery`, ``support --mode battery --probes P``):
for each probe item the patterns ``" <last word of prefix>" + target`` and ``+ foil`` are
counted as exact token sequences, summed per (rule, condition) over the distinct patterns.

A row with no events on either side has ratio NaN and note "no events" (never 1.0).

Counting is vectorised numpy over token arrays: one table look-up marks every token that can
start a cue/target/competitor form, the sparse candidates are verified per form, and
``np.searchsorted`` finds each cue's nearest choice. Inputs stream in blocks (bounded memory):
plain text (one document per line), JSONL (a text field), Parquet (a text column), a
``datasets`` ``save_to_disk`` folder, a Megatron ``.bin``/``.idx`` token stream, or a mini-suite
corpus folder (``tokens.bin/.idx`` + ``tokenizer.json`` + ``corpus.json``).

Example::

    frame = count_support("corpus/", "all")            # mini corpus: tokenizer and steps from corpus.json
    frame[frame.scope == "overall"][["rule", "rule_wins", "prior_wins", "ratio"]]
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from pythia_forensics.constants import (
    DEFAULT_SUPPORT_WINDOW,
    DEFAULT_SUPPORT_WINDOW_STEPS,
    DEFAULT_SUPPORT_WINDOW_TOKENS,
    SUPPORT_BLOCK_TOKENS,
    SUPPORT_DIRECTIONS,
    SUPPORT_MODES,
    SUPPORT_RULES_SUBDIR,
    SUPPORT_STATE_EVERY_S,
    SUPPORT_TEXT_BATCH,
    probes_dir,
)
from pythia_forensics.errors import ConfigError, CorpusError, TokenizationError
from pythia_forensics.corpus.indexed import IndexedDataset, data_path, dataset_prefix, index_path
from pythia_forensics.experiments.mini import corpus as _mini_corpus

__all__ = [
    "WordClass",
    "SupportRule",
    "TokenForm",
    "CompiledRule",
    "UnmatchedCue",
    "SupportCueWarning",
    "load_lexicon",
    "load_rules",
    "load_tokenizer",
    "compile_rules",
    "count_support",
    "count_battery",
    "battery_cells",
    "battery_pattern",
    "support_ratio",
    "count_token_stream",
    "synthetic_stream",
    "benchmark",
]

ROLES = ("cues", "targets", "competitors")
_RULE_KEYS = {"name", "description", "direction", "cues", "targets", "competitors", "lexicon", "frames"}
# Frame pattern placeholders (rule YAML `frames:`): the cue, the chosen form, any tokens.
FRAME_CUE, FRAME_CANDIDATE, FRAME_GAP = "<cue>", "<candidate>", "..."
CORPUS_FRAME = "corpus"  # the `frame` of corpus-wide rows (every event, in any context)
NO_EVENTS = "no events"  # the note of a row with 0 events on both sides (ratio is NaN, not parity)
# Mini-suite corpus folder layout (docs/ARCHITECTURE.md): names owned by the generator.
_CORPUS_TOKENS, _CORPUS_META = _mini_corpus.TOKENS_FILE, _mini_corpus.CORPUS_META_FILE
_CORPUS_TOKENIZER = "tokenizer.json"  # what save_pretrained writes
_UINT16_IDS = 1 << 16


class SupportCueWarning(UserWarning):
    """A cue/target/competitor word cannot be matched by the tokenizer (named in the message)."""


# --- rule definitions (data) ---------------------------------------------------------------
@dataclass(frozen=True)
class WordClass:
    """A named list of bare words (no leading space), e.g. the lexicon's ``female_names``."""

    name: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class Frame:
    """A context the cue and its chosen form must stand in (the frame where rule and prior
    conflict), as a whole-word pattern in stream order.

    ``elements`` holds ``"<cue>"``, ``"<candidate>"`` (the nearest target/competitor the
    windowed counter chose), ``"..."`` (any tokens, only between the two) and `WordClass`
    entries (one word of the class, whole-word, adjacent to its neighbours). Example:
    ``<cue> cried because <candidate>`` is the mini corpus's pronoun conflict frame;
    ``<cue> ... because <candidate>`` is the paper's "a girl's name, then because, then she/he".
    """

    name: str
    elements: tuple[Any, ...]


@dataclass(frozen=True)
class SupportRule:
    """One rule: cue class, the rule's target forms and the prior's competitor forms, and the
    named frames whose in-frame support is counted beside the corpus-wide one."""

    name: str
    cues: tuple[WordClass, ...]
    targets: tuple[WordClass, ...]
    competitors: tuple[WordClass, ...]
    direction: str = "after"
    description: str = ""
    source: str = ""
    frames: tuple[Frame, ...] = ()

    def role(self, role: str) -> tuple[WordClass, ...]:
        return getattr(self, role)


def load_lexicon(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read ``probes/lexicon.yaml`` (or ``path``) as a plain mapping.

    Raises:
        ConfigError: the file is missing or is not a YAML mapping.
    """
    p = Path(path) if path is not None else probes_dir() / "lexicon.yaml"
    if not p.is_file():
        raise ConfigError(f"lexicon not found: {p}; set PF_PROBES_DIR or give the rule a `lexicon:` path")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the lexicon must be a YAML mapping of word classes")
    return data


def _lexicon_lookup(lexicon: Mapping[str, Any], ref: str) -> Any:
    node: Any = lexicon
    for part in ref.split("."):
        if not isinstance(node, Mapping) or part not in node:
            known = [k for k, v in lexicon.items() if isinstance(v, (list, dict))]
            close = difflib.get_close_matches(ref, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise KeyError(f"lexicon has no {ref!r}{hint}; known classes: {', '.join(known)}")
        node = node[part]
    return node


def _word_classes(spec: Any, *, rule: str, role: str, lexicon_fn, problems: list[str]) -> tuple[WordClass, ...]:
    """Parse one role: a word list, ``{lexicon: ref}``, ``{words: [...]}`` or a list of those."""
    entries = spec if isinstance(spec, list) and any(isinstance(e, dict) for e in spec) else [spec]
    out: list[WordClass] = []
    for entry in entries:
        if isinstance(entry, str):
            entry = [entry]
        if isinstance(entry, list) and all(isinstance(w, str) for w in entry):
            out.append(WordClass(f"{rule}.{role}", tuple(entry)))
        elif isinstance(entry, dict) and set(entry) == {"lexicon"}:
            ref = str(entry["lexicon"])
            try:
                value = _lexicon_lookup(lexicon_fn(), ref)
            except (KeyError, ConfigError) as exc:
                problems.append(f"{rule}.{role}: {exc.args[0] if isinstance(exc, KeyError) else exc}")
                continue
            words = [value] if isinstance(value, str) else value
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                problems.append(f"{rule}.{role}: lexicon entry {ref!r} is not a word or a list of words")
                continue
            out.append(WordClass(ref, tuple(words)))
        elif isinstance(entry, dict) and set(entry) <= {"words", "name"} and "words" in entry:
            words = entry["words"]
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                problems.append(f"{rule}.{role}: `words` must be a list of strings")
                continue
            out.append(WordClass(str(entry.get("name", f"{rule}.{role}")), tuple(words)))
        else:
            problems.append(
                f"{rule}.{role}: expected a word list, {{lexicon: CLASS}} or {{words: [...]}}, got {entry!r}"
            )
    for wc in out:
        if not wc.words:
            problems.append(f"{rule}.{role}: word class {wc.name!r} is empty")
        bad = [w for w in wc.words if not w.strip() or w != w.strip()]
        if bad:
            problems.append(f"{rule}.{role}: words must be bare (no surrounding spaces): {bad!r}")
    return tuple(out)


def _rule_from_mapping(data: Any, *, source: str, problems: list[str]) -> SupportRule | None:
    if not isinstance(data, dict):
        problems.append(f"{source}: a rule must be a mapping, got {type(data).__name__}")
        return None
    name = data.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{source}: missing `name`")
        return None
    unknown = set(data) - _RULE_KEYS
    if unknown:
        problems.append(f"{source}: rule {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}")
    direction = data.get("direction", "after")
    if direction not in SUPPORT_DIRECTIONS:
        problems.append(f"{source}: rule {name!r} direction {direction!r} must be one of {SUPPORT_DIRECTIONS}")
    lex_path = data.get("lexicon")
    base = Path(source).parent if source else Path(".")
    cache: dict[str, Any] = {}

    def lexicon_fn() -> Mapping[str, Any]:
        if "lex" not in cache:
            cache["lex"] = load_lexicon(base / lex_path if lex_path else None)
        return cache["lex"]

    roles = {}
    for role in ROLES:
        if role not in data:
            problems.append(f"{source}: rule {name!r} is missing `{role}`")
            roles[role] = ()
        else:
            roles[role] = _word_classes(data[role], rule=name, role=role, lexicon_fn=lexicon_fn, problems=problems)
    frames = _frames(data.get("frames", {}), rule=name, direction=str(direction), source=source,
                     lexicon_fn=lexicon_fn, problems=problems)
    return SupportRule(
        name=name,
        direction=str(direction),
        description=str(data.get("description", "")),
        source=source,
        frames=frames,
        **roles,
    )


def _frames(spec: Any, *, rule: str, direction: str, source: str, lexicon_fn, problems: list[str]) -> tuple[Frame, ...]:
    """Parse ``frames: {NAME: [element, ...]}`` (see `Frame`); every problem is collected."""
    if not isinstance(spec, dict):
        problems.append(f"{source}: rule {rule!r} `frames` must map a frame name to a list of elements")
        return ()
    out = []
    for fname, elems in spec.items():
        where = f"{source}: rule {rule!r} frame {fname!r}"
        if fname == CORPUS_FRAME:
            problems.append(f"{where}: the name {CORPUS_FRAME!r} is reserved for the corpus-wide rows; rename it")
            continue
        if not isinstance(elems, list) or not elems:
            problems.append(f"{where}: expected a non-empty list like [<cue>, because, <candidate>]")
            continue
        parsed: list[Any] = []
        for e in elems:
            if e in (FRAME_CUE, FRAME_CANDIDATE, FRAME_GAP):
                parsed.append(e)
            else:
                classes = _word_classes(e, rule=f"{rule}.{fname}", role="frame", lexicon_fn=lexicon_fn,
                                        problems=problems)
                if classes:  # one pattern position: the union of the classes given for it
                    parsed.append(WordClass("+".join(c.name for c in classes),
                                            tuple(w for c in classes for w in c.words)))
        if parsed.count(FRAME_CUE) != 1 or parsed.count(FRAME_CANDIDATE) != 1:
            problems.append(f"{where}: needs exactly one {FRAME_CUE} and one {FRAME_CANDIDATE}")
            continue
        i_cue, i_cand = parsed.index(FRAME_CUE), parsed.index(FRAME_CANDIDATE)
        if (i_cue < i_cand) != (direction == "after"):
            problems.append(f"{where}: direction {direction!r} puts the "
                            f"{'candidate after the cue' if direction == 'after' else 'candidate before the cue'}")
            continue
        lo, hi = sorted((i_cue, i_cand))
        if any(e == FRAME_GAP for e in parsed[:lo] + parsed[hi + 1:]):
            problems.append(f"{where}: {FRAME_GAP!r} may only stand between {FRAME_CUE} and {FRAME_CANDIDATE}")
            continue
        out.append(Frame(str(fname), tuple(parsed)))
    return tuple(out)


def _rule_files(spec: str | os.PathLike) -> list[Path]:
    rules_dir = probes_dir() / SUPPORT_RULES_SUBDIR
    p = Path(spec)
    if p.is_dir():
        return sorted(p.glob("*.yaml"))
    if p.is_file():
        return [p]
    if str(spec) == "all":
        return sorted(rules_dir.glob("*.yaml"))
    candidate = rules_dir / f"{spec}.yaml"
    if candidate.is_file():
        return [candidate]
    known = sorted(q.stem for q in rules_dir.glob("*.yaml"))
    close = difflib.get_close_matches(str(spec), known, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"no rule file or shipped rule named {str(spec)!r}; {hint}known rules: {', '.join(known) or '(none)'}"
        " (or pass a YAML path)"
    )


def load_rules(spec: str | os.PathLike | SupportRule | Sequence[Any]) -> tuple[SupportRule, ...]:
    """Rule definitions from YAML: a file (one rule, or ``rules: [...]``), a folder, a shipped
    rule name (``probes/rules/<name>.yaml``), ``"all"``, or a list of those.

    Args:
        spec: see above; `SupportRule` objects pass through.

    Returns:
        The rules, in the order given (duplicates by name refused).

    Raises:
        ConfigError: every problem found (unknown lexicon class, missing role, bad direction),
            collected and raised together.
    """
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    problems: list[str] = []
    rules: list[SupportRule] = []
    for item in items:
        if isinstance(item, SupportRule):
            rules.append(item)
            continue
        for path in _rule_files(item):
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                problems.append(f"{path}: not valid YAML ({exc})")
                continue
            entries = data["rules"] if isinstance(data, dict) and "rules" in data else [data]
            for entry in entries:
                rule = _rule_from_mapping(entry, source=str(path), problems=problems)
                if rule is not None:
                    rules.append(rule)
    for r in rules:
        both = {w for c in r.targets for w in c.words} & {w for c in r.competitors for w in c.words}
        if both:
            problems.append(f"rule {r.name!r}: {sorted(both)} listed as both target and competitor")
    seen: dict[str, str] = {}
    for r in rules:
        if r.name in seen:
            problems.append(f"rule {r.name!r} defined twice ({seen[r.name]} and {r.source})")
        seen[r.name] = r.source
    if problems:
        raise ConfigError("; ".join(problems))
    if not rules:
        raise ConfigError(f"no rules found in {spec!r}; pass a rule YAML file or a shipped rule name")
    return tuple(rules)


# --- tokenizers -----------------------------------------------------------------------------
def load_tokenizer(spec: Any):
    """A `tokenizers.Tokenizer` from a tokenizer.json path, a folder holding one, an HF
    tokenizer object, or a model name/folder (through ``transformers.AutoTokenizer``).

    Raises:
        TokenizationError: the tokenizer cannot be loaded (says what to pass instead).
    """
    from tokenizers import Tokenizer

    if isinstance(spec, Tokenizer):
        return _untruncated(spec)
    backend = getattr(spec, "backend_tokenizer", None)
    if backend is not None:
        return _untruncated(backend)
    p = Path(str(spec))
    try:
        if p.is_file():
            return _untruncated(Tokenizer.from_file(str(p)))
        if p.is_dir() and (p / "tokenizer.json").is_file():
            return _untruncated(Tokenizer.from_file(str(p / "tokenizer.json")))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(spec))
    except Exception as exc:  # the library raises many types; the user needs one message
        raise TokenizationError(
            f"cannot load tokenizer {str(spec)!r} ({type(exc).__name__}: {exc}); "
            "pass a tokenizer.json file, a model folder, or a cached model name"
        ) from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise TokenizationError(f"tokenizer {str(spec)!r} is not a fast tokenizer; pass its tokenizer.json")
    return _untruncated(tok.backend_tokenizer)


def _untruncated(tok):
    """The tokenizer without truncation or padding (a saved max_length would silently cut
    long documents); a copy when it had either, so the caller's object is left alone."""
    if tok.truncation is None and tok.padding is None:
        return tok
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tok.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _boundary_tables(tok) -> tuple[np.ndarray, np.ndarray]:
    """Per token id: does its text start / end with a non-alphanumeric character?

    Empty strings (special tokens such as <|endoftext|>) count as boundaries on both sides.
    """
    n = tok.get_vocab_size(with_added_tokens=True)
    texts = tok.decode_batch([[i] for i in range(n)], skip_special_tokens=True)
    starts = np.array([not (t[:1].isalnum()) for t in texts], dtype=bool)
    ends = np.array([not (t[-1:].isalnum()) for t in texts], dtype=bool)
    return starts, ends


# --- compiled rules -------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenForm:
    """One way a word appears in a token stream."""

    word: str
    text: str  # " Sue" or "Sue"
    ids: tuple[int, ...]

    @property
    def leading_space(self) -> bool:
        return self.text[:1].isspace()


@dataclass(frozen=True)
class UnmatchedCue:
    """A word (or whole class) the counter cannot match, with the reason."""

    rule: str
    role: str
    word_class: str
    word: str | None  # None: the whole class matches nothing
    reason: str

    def __str__(self) -> str:
        what = f"word {self.word!r} of" if self.word else "every word of"
        return f"{self.rule}: {what} {self.role[:-1]} class {self.word_class!r} {self.reason}"


@dataclass(frozen=True)
class CompiledRule:
    """A rule's forms as token-id sequences for one tokenizer (or built from ids directly)."""

    name: str
    direction: str
    cues: tuple[TokenForm, ...]
    targets: tuple[TokenForm, ...]
    competitors: tuple[TokenForm, ...]
    unmatched: tuple[UnmatchedCue, ...] = ()
    frames: tuple["CompiledFrame", ...] = ()

    def role(self, role: str) -> tuple[TokenForm, ...]:
        return getattr(self, role)

    @property
    def max_len(self) -> int:
        return max((len(f.ids) for r in ROLES for f in self.role(r)), default=1)


@dataclass(frozen=True)
class CompiledFrame:
    """A `Frame` with each word class compiled to its token forms (placeholders stay strings)."""

    name: str
    elements: tuple[Any, ...]  # "<cue>" | "<candidate>" | "..." | tuple[TokenForm, ...]

    @property
    def outside_tokens(self) -> int:
        """Most tokens the pattern reaches beyond its two anchors (sizes the block halo)."""
        lo, hi = sorted((self.elements.index(FRAME_CUE), self.elements.index(FRAME_CANDIDATE)))
        outside = self.elements[:lo] + self.elements[hi + 1:]
        return sum(max((len(f.ids) for f in e), default=0) for e in outside)


@dataclass(frozen=True)
class Vocab:
    """What the counter needs from a tokenizer: size and word-boundary tables."""

    size: int
    starts_nonword: np.ndarray = field(repr=False)
    ends_nonword: np.ndarray = field(repr=False)


def _encode_form(tok, text: str) -> tuple[int, ...]:
    return tuple(tok.encode(text, add_special_tokens=False).ids)


def compile_rules(
    rules: Sequence[SupportRule], tokenizer: Any, *, multi_token: bool = True
) -> tuple[tuple[CompiledRule, ...], Vocab]:
    """Tokenize every word of every rule in both forms (``" w"`` and ``"w"``).

    A form is dropped (and the word reported if no form survives) when it tokenizes to
    nothing, contains the unknown token, does not decode back to its text, or -- with
    ``multi_token=False`` -- needs more than one token.

    Returns:
        ``(compiled_rules, vocab)``.
    """
    tok = load_tokenizer(tokenizer)
    starts, ends = _boundary_tables(tok)
    vocab = Vocab(len(starts), starts, ends)
    unk_token = getattr(tok.model, "unk_token", None)
    unk_id = tok.token_to_id(unk_token) if unk_token else None

    def class_forms(rule_name: str, role: str, wc: WordClass, unmatched: list[UnmatchedCue]) -> list[TokenForm]:
        found: list[TokenForm] = []
        for word in wc.words:
            reasons = []
            word_forms = []
            for text in (" " + word, word):
                ids = _encode_form(tok, text)
                if not ids:
                    reasons.append(f"{text!r} tokenizes to nothing")
                elif unk_id is not None and unk_id in ids:
                    reasons.append(f"{text!r} contains the unknown token")
                elif tok.decode(list(ids), skip_special_tokens=False) != text:
                    reasons.append(f"{text!r} does not round-trip through the tokenizer")
                elif not multi_token and len(ids) > 1:
                    reasons.append(f"{text!r} needs {len(ids)} tokens (multi_token=False)")
                else:
                    word_forms.append(TokenForm(word, text, ids))
            if word_forms:
                found.extend(word_forms)
            else:
                unmatched.append(UnmatchedCue(rule_name, role, wc.name, word, "; ".join(reasons)))
        if not found:
            unmatched.append(UnmatchedCue(rule_name, role, wc.name, None, "tokenizes to nothing the counter can match"))
        return found

    compiled = []
    for rule in rules:
        forms: dict[str, list[TokenForm]] = {}
        unmatched: list[UnmatchedCue] = []
        for role in ROLES:
            forms[role] = []
            for wc in rule.role(role):
                forms[role].extend(class_forms(rule.name, role, wc, unmatched))
        frames = tuple(
            CompiledFrame(fr.name, tuple(
                e if isinstance(e, str) else tuple(dict.fromkeys(class_forms(rule.name, "frames", e, unmatched)))
                for e in fr.elements))
            for fr in rule.frames)
        compiled.append(
            CompiledRule(rule.name, rule.direction, *(tuple(dict.fromkeys(forms[r])) for r in ROLES), tuple(unmatched),
                         frames=frames)
        )
    return tuple(compiled), vocab


# --- the vectorised counter -------------------------------------------------------------------
class _Matcher:
    """Finds every whole-word occurrence of each (rule, role)'s forms, and of every frame word
    class, in a token block. Categories ``3 r + k`` are rule ``r``'s roles; frame classes follow
    (``self.frame_cats[r][f][e]``: category of element ``e`` of frame ``f`` of rule ``r``)."""

    def __init__(self, rules: Sequence[CompiledRule], vocab: Vocab) -> None:
        self.rules = tuple(rules)
        self.vocab = vocab
        categories: list[tuple[TokenForm, ...]] = [rule.role(role) for rule in self.rules for role in ROLES]
        extra: dict[tuple[TokenForm, ...], int] = {}
        self.frame_cats: list[list[list[int | None]]] = []
        for rule in self.rules:
            per_rule = []
            for fr in rule.frames:
                cats: list[int | None] = []
                for e in fr.elements:
                    if isinstance(e, str):
                        cats.append(None)
                        continue
                    if e not in extra:
                        extra[e] = len(categories)
                        categories.append(e)
                    cats.append(extra[e])
                per_rule.append(cats)
            self.frame_cats.append(per_rule)
        n_cat = len(categories)
        if n_cat > 64:
            raise ConfigError(f"at most 64 word classes per pass (3 per rule plus frame words), got {n_cat}; "
                              "split the rule list")
        lut_dtype = np.uint64 if n_cat > 32 else np.uint32
        # Tables cover every uint16 id even past the tokenizer's vocabulary (padding rows, a
        # stream from a bigger tokenizer): such ids are no form and count as word boundaries.
        table = max(vocab.size, _UINT16_IDS)
        self.lut = np.zeros(table, dtype=lut_dtype)
        self.starts_nonword = np.ones(table, bool)
        self.starts_nonword[: vocab.size] = vocab.starts_nonword
        self.ends_nonword = np.ones(table, bool)
        self.ends_nonword[: vocab.size] = vocab.ends_nonword
        # per category: {first id: [(ids array, leading_space)]}
        self.forms: list[dict[int, list[tuple[np.ndarray, bool]]]] = []
        names = [f"{rule.name}.{role}" for rule in self.rules for role in ROLES] + ["frame"] * len(extra)
        for cat, cat_forms in enumerate(categories):
            groups: dict[int, list[tuple[np.ndarray, bool]]] = {}
            for f in cat_forms:
                if max(f.ids) >= vocab.size:
                    raise TokenizationError(
                        f"{names[cat]}: form {f.text!r} has token id {max(f.ids)} beyond the vocabulary "
                        f"({vocab.size}); the tokenizer does not match the token stream"
                    )
                groups.setdefault(f.ids[0], []).append((np.array(f.ids, dtype=np.int64), f.leading_space))
                self.lut[f.ids[0]] |= lut_dtype(1) << lut_dtype(cat)
            self.forms.append(groups)
        self.any_form = self.lut != 0
        self.max_len = max((len(f.ids) for c in categories for f in c), default=1)
        self.frame_extent = max((fr.outside_tokens for rule in self.rules for fr in rule.frames), default=0)

    def match(self, ids: np.ndarray, seg_starts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per category: (start, end) int64 arrays of whole-word matches in ``ids``.

        ``seg_starts``: sorted local positions where a document starts (0 included).
        """
        n = ids.shape[0]
        if n and ids.dtype.itemsize > 2 and int(ids.max()) >= self.lut.shape[0]:
            raise TokenizationError(
                f"token id {int(ids.max())} is beyond the tokenizer's vocabulary ({self.vocab.size}); "
                "pass the tokenizer the stream was written with"
            )
        # one bool look-up over the block, then the category bits only at the sparse candidates
        cand = np.flatnonzero(self.any_form[ids])
        cand_ids = ids[cand]
        cand_bits = self.lut[cand_ids]
        out = []
        for cat, groups in enumerate(self.forms):
            if not groups:
                out.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
                continue
            sel = ((cand_bits >> cand_bits.dtype.type(cat)) & 1) != 0
            pos_all, first_all = cand[sel], cand_ids[sel]
            # group candidates by first token once (sort), instead of one scan per form
            order = np.argsort(first_all, kind="stable")
            pos_all, first_all = pos_all[order], first_all[order]
            starts_l, ends_l = [], []
            for first, variants in groups.items():
                lo_i, hi_i = np.searchsorted(first_all, [first, first + 1])
                pos = pos_all[lo_i:hi_i]
                for seq, leading_space in variants:
                    L = seq.shape[0]
                    p = pos[pos + L <= n]
                    for j in range(1, L):
                        p = p[ids[p + j] == seq[j]]
                    e = p + (L - 1)
                    # the match stays inside one document
                    seg_p = np.searchsorted(seg_starts, p, side="right")
                    ok = seg_p == np.searchsorted(seg_starts, e, side="right")
                    # right edge: document/stream end or the next token starts a non-word char
                    nxt = e + 1
                    at_end = (nxt >= n) | (np.searchsorted(seg_starts, np.minimum(nxt, n - 1), side="right") != seg_p)
                    ok &= at_end | self.starts_nonword[ids[np.minimum(nxt, n - 1)]]
                    if not leading_space:
                        prv = p - 1
                        at_start = (prv < 0) | (np.searchsorted(seg_starts, np.maximum(prv, 0), side="right") != seg_p)
                        ok &= at_start | self.ends_nonword[ids[np.maximum(prv, 0)]]
                    starts_l.append(p[ok])
                    ends_l.append(e[ok])
            out.append(_drop_contained(np.concatenate(starts_l), np.concatenate(ends_l)))
        return out


def _drop_contained(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep each word occurrence once: drop a match that lies inside a longer one of the same
    class (``"egg"`` after a bare-space token inside ``" egg"``), sorted by start."""
    if starts.size < 2:
        return starts, ends
    order = np.lexsort((-(ends - starts), starts))
    starts, ends = starts[order], ends[order]
    prev_max_end = np.concatenate(([-1], np.maximum.accumulate(ends)[:-1]))
    keep = ends > prev_max_end
    return starts[keep], ends[keep]


def _events(cues: tuple[np.ndarray, np.ndarray], targets, competitors, *, direction: str, window: int,
            seg_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each cue (start, end): label 1 rule win, 0 prior win, -1 no event.

    Returns:
        ``(cue_starts, labels, choice_starts, choice_ends)``; the choice arrays hold the chosen
        target/competitor's token span where ``labels >= 0`` (undefined elsewhere).
    """
    c_start, c_end = cues
    empty = np.zeros(c_start.size, np.int64)
    if c_start.size == 0:
        return c_start, np.zeros(0, np.int8), empty, empty
    t_s, t_e = targets
    p_s, p_e = competitors
    starts = np.concatenate((t_s, p_s))
    ends = np.concatenate((t_e, p_e))
    labels = np.concatenate((np.ones(t_s.size, np.int8), np.zeros(p_s.size, np.int8)))
    lengths = ends - starts
    out = np.full(c_start.size, -1, np.int8)
    if starts.size == 0:
        return c_start, out, empty, empty
    key = starts if direction == "after" else ends
    # nearest first; at a tie the longer form wins (it contains the shorter one)
    order = np.lexsort((-lengths, key))
    key, lab, s_sorted, e_sorted = key[order], labels[order], starts[order], ends[order]
    first = np.concatenate(([True], key[1:] != key[:-1]))
    key, lab, s_sorted, e_sorted = key[first], lab[first], s_sorted[first], e_sorted[first]
    if direction == "after":
        j = np.searchsorted(key, c_end + 1, side="left")
        valid = j < key.size
        jj = np.minimum(j, key.size - 1)
        valid &= key[jj] <= c_end + window
    else:
        j = np.searchsorted(key, c_start, side="left") - 1
        valid = j >= 0
        jj = np.maximum(j, 0)
        valid &= key[jj] >= c_start - window
    same_doc = np.searchsorted(seg_starts, key[jj], side="right") == np.searchsorted(seg_starts, c_start, side="right")
    valid &= same_doc
    out[valid] = lab[jj[valid]]
    return c_start, out, s_sorted[jj], e_sorted[jj]


def _chain(matches: Sequence[tuple[np.ndarray, np.ndarray]], cats: Sequence[int], pos: np.ndarray, ok: np.ndarray,
           *, forward: bool) -> np.ndarray:
    """Advance ``pos`` over an adjacent chain of word classes (forward: each class's match starts
    at ``pos``; backward, classes in reverse: it ends at ``pos``); clears ``ok`` where it fails.

    Whole-word matches of one class never nest (`_drop_contained`), so starts and ends are each
    sorted and unique and one `searchsorted` finds the match."""
    for cat in (cats if forward else reversed(cats)):
        m_s, m_e = matches[cat]
        if m_s.size == 0:
            ok[:] = False
            return pos
        key, other = (m_s, m_e) if forward else (m_e, m_s)
        j = np.minimum(np.searchsorted(key, pos), key.size - 1)
        ok &= key[j] == pos
        pos = np.where(ok, other[j] + 1 if forward else other[j] - 1, pos)
    return pos


def _in_frame(frame_cats: Sequence[int | None], elements: Sequence[Any], matches, *, cue: tuple[np.ndarray, np.ndarray],
              choice: tuple[np.ndarray, np.ndarray], seg_starts: np.ndarray) -> np.ndarray:
    """Which events (cue span, chosen form span) stand in the frame: the frame's words fill the
    positions around and between the two anchors, whole-word and adjacent, ``...`` matching
    any tokens (the earliest placement of each chunk, which is exact for gapped subsequences)."""
    i_cue, i_cand = elements.index(FRAME_CUE), elements.index(FRAME_CANDIDATE)
    (l_s, l_e), (r_s, r_e) = (cue, choice) if i_cue < i_cand else (choice, cue)
    lo, hi = sorted((i_cue, i_cand))
    ok = np.ones(l_s.size, bool)
    seg = np.searchsorted(seg_starts, l_s, side="right")
    before = [c for c in frame_cats[:lo]]
    after = [c for c in frame_cats[hi + 1:]]
    if before:
        p = _chain(matches, before, l_s - 1, ok, forward=False)
        ok &= (p + 1 >= 0) & (np.searchsorted(seg_starts, np.maximum(p + 1, 0), side="right") == seg)
    if after:
        p = _chain(matches, after, r_e + 1, ok, forward=True)
        ok &= np.searchsorted(seg_starts, p - 1, side="right") == seg
    middle = list(zip(elements[lo + 1:hi], frame_cats[lo + 1:hi]))
    # chunks of adjacent classes, split at "..."
    chunks: list[list[int]] = [[]]
    for e, c in middle:
        if e == FRAME_GAP:
            chunks.append([])
        else:
            chunks[-1].append(c)
    if len(chunks) == 1:  # no gap: the tokens between are exactly the chain
        p = _chain(matches, chunks[0], l_e + 1, ok, forward=True)
        return ok & (p == r_s)
    head, *inner, tail = chunks
    inner = [c for c in inner if c]  # "... ..." is one gap
    p = _chain(matches, head, l_e + 1, ok, forward=True)
    q = _chain(matches, tail, r_s - 1, ok, forward=False)  # q: last free position before the tail
    if not inner:
        return ok & (p <= q + 1)
    for idx in np.flatnonzero(ok):
        at, limit = int(p[idx]), int(q[idx])
        for chunk in inner:
            at = _earliest(matches, chunk, at, limit)
            if at < 0:
                ok[idx] = False
                break
        else:
            ok[idx] = at <= limit + 1
    return ok


def _earliest(matches, chunk: Sequence[int], at: int, limit: int) -> int:
    """Position just after the earliest placement of an adjacent chunk inside [at, limit], or -1."""
    m_s, _ = matches[chunk[0]]
    j = int(np.searchsorted(m_s, at))
    while j < m_s.size and m_s[j] <= limit:
        pos = np.array([m_s[j]])
        ok = np.ones(1, bool)
        end = _chain(matches, chunk, pos, ok, forward=True)
        if ok[0] and end[0] - 1 <= limit:
            return int(end[0])
        j += 1
    return -1


class _Tally:
    """Per-rule counts per stream window, grown as blocks arrive (memory: 3 int64 per window)."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 0), np.int64)  # rows: cues, rule wins, prior wins

    def add(self, row: int, window_index: np.ndarray) -> None:
        if window_index.size == 0:
            return
        k0 = int(window_index.min())
        binned = np.bincount(window_index - k0)
        need = k0 + binned.size
        if need > self.counts.shape[1]:
            grown = np.zeros((3, max(need, 2 * self.counts.shape[1])), np.int64)
            grown[:, : self.counts.shape[1]] = self.counts
            self.counts = grown
        self.counts[row, k0:need] += binned

    def totals(self, n_windows: int) -> np.ndarray:
        out = np.zeros((3, n_windows), np.int64)
        m = min(n_windows, self.counts.shape[1])
        out[:, :m] = self.counts[:, :m]
        return out


def _count_block(matcher: _Matcher, ids: np.ndarray, seg_starts: np.ndarray, *, offset: int, core: tuple[int, int],
                 window: int, tallies: list[_Tally], window_tokens: int, limit: int | None = None) -> None:
    """Count one block into ``tallies`` (per rule: the corpus-wide tally, then one per frame)."""
    matches = matcher.match(ids, seg_starts)
    lo, hi = core
    if limit is not None:  # cues at or past the limit are never trained on
        hi = min(hi, max(limit - offset, lo))
    t = 0
    for r, rule in enumerate(matcher.rules):
        cue, tgt, comp = matches[3 * r : 3 * r + 3]
        keep = (cue[0] >= lo) & (cue[0] < hi)
        cue = (cue[0][keep], cue[1][keep])
        c_start, lab, ch_s, ch_e = _events(cue, tgt, comp, direction=rule.direction, window=window,
                                           seg_starts=seg_starts)
        k = (c_start + offset) // window_tokens
        tallies[t].add(0, k)
        tallies[t].add(1, k[lab == 1])
        tallies[t].add(2, k[lab == 0])
        t += 1
        ev = lab >= 0
        for f, fr in enumerate(rule.frames):
            inside = np.zeros(lab.size, bool)
            if ev.any():
                inside[ev] = _in_frame(matcher.frame_cats[r][f], fr.elements, matches,
                                       cue=(cue[0][ev], cue[1][ev]), choice=(ch_s[ev], ch_e[ev]),
                                       seg_starts=seg_starts)
            tallies[t].add(0, k[inside])
            tallies[t].add(1, k[inside & (lab == 1)])
            tallies[t].add(2, k[inside & (lab == 0)])
            t += 1


# --- token-stream sources ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Block:
    ids: np.ndarray
    seg_starts: np.ndarray  # local document starts (sorted, 0 included when a doc starts there)
    offset: int  # global offset of ids[0]
    core: tuple[int, int]  # local range whose cues this block owns
    resume: int = 0  # where a resumed run continues: token offset (streams) or documents read (text)


def _indexed_blocks(tokens: np.ndarray, doc_offsets: np.ndarray, *, halo: int, block_tokens: int,
                    end: int | None = None, begin: int = 0, offset_unit: int = 1,
                    eod_id: int | None = None) -> Iterator[_Block]:
    """Blocks of a flat token stream with ``halo`` tokens of context on both sides; cores tile
    ``[begin, end)``. ``doc_offsets`` may be a memmap in units of ``offset_unit`` (an index's
    byte pointers): only the slice near each block is read. With ``eod_id``, a document also
    starts after every such token (Pythia's 2049-token items pack several documents)."""
    n = int(tokens.shape[0])
    end = n if end is None else min(end, n)
    for a in range(begin, end, block_tokens):
        b = min(a + block_tokens, end)
        lo, hi = max(a - halo, 0), min(b + halo, n)
        i0 = np.searchsorted(doc_offsets, lo * offset_unit, side="right") - 1
        i1 = np.searchsorted(doc_offsets, hi * offset_unit, side="left")
        starts = np.asarray(doc_offsets[max(i0, 0) : i1], dtype=np.int64) // offset_unit - lo
        starts = np.maximum(starts, 0)
        # the block's first token lies inside some document: mark position 0 as its start so
        # searchsorted never returns segment 0 for in-document tokens
        ids = np.asarray(tokens[lo:hi])
        extra = np.flatnonzero(ids[:-1] == eod_id) + 1 if eod_id is not None and ids.size else np.zeros(0, np.int64)
        starts = np.sort(np.concatenate(([0], starts, extra)))  # np.unique's hashing is ~10x slower here
        starts = starts[np.concatenate(([True], starts[1:] != starts[:-1]))]
        yield _Block(ids, starts, lo, (a - lo, b - lo), resume=b)


def _text_documents(path: Path, *, text_field: str) -> tuple[Iterator[str], int | None]:
    """Documents of a text-like input, and a size hint for the progress bar."""
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise CorpusError(
                f"{path} is neither a mini corpus (tokens.bin/.idx) nor a `datasets` save_to_disk folder "
                f"({type(exc).__name__}: {exc})"
            ) from None
        splits = [ds[k] for k in ds] if isinstance(ds, datasets.DatasetDict) else [ds]
        for split in splits:
            if text_field not in split.column_names:
                raise CorpusError(f"{path}: no column {text_field!r} (columns: {split.column_names}); pass --text-field")

        def gen_ds() -> Iterator[str]:
            for split in splits:
                for batch in split.iter(batch_size=SUPPORT_TEXT_BATCH):
                    yield from batch[text_field]

        return gen_ds(), sum(len(s) for s in splits)
    if suffixes.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise CorpusError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names}); pass --text-field")

        def gen_pq() -> Iterator[str]:
            for batch in pf.iter_batches(columns=[text_field], batch_size=SUPPORT_TEXT_BATCH):
                yield from batch.column(0).to_pylist()

        return gen_pq(), pf.metadata.num_rows
    if suffixes.endswith((".jsonl", ".json", ".ndjson")):

        def gen_jsonl() -> Iterator[str]:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise CorpusError(f"{path}:{lineno}: not valid JSON ({exc.msg}); one JSON object per line") from None
                    if not isinstance(rec, dict) or text_field not in rec:
                        raise CorpusError(f"{path}:{lineno}: no field {text_field!r}; pass --text-field")
                    yield rec[text_field]

        return gen_jsonl(), None

    def gen_txt() -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    yield line

    return gen_txt(), None


def _text_blocks(docs: Iterable[str], tok, *, block_tokens: int, progress, offset: int = 0,
                 docs_done: int = 0) -> Iterator[_Block]:
    """Tokenize documents in batches and pack whole documents into blocks (no halo needed:
    events never cross a document, and blocks end at document ends). ``offset``/``docs_done``:
    where a resumed run stands (the first ``docs_done`` documents are skipped untokenized)."""
    pending: list[np.ndarray] = []
    pending_n = 0
    n_docs = docs_done
    docs = itertools.islice(docs, docs_done, None)

    def flush() -> _Block:
        nonlocal offset, pending, pending_n
        lengths = np.array([a.size for a in pending], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if lengths.size else np.zeros(1, np.int64)
        ids = np.concatenate(pending) if pending else np.zeros(0, np.int64)
        block = _Block(ids, starts, offset, (0, ids.size), resume=n_docs)
        offset += ids.size
        pending, pending_n = [], 0
        return block

    batch: list[str] = []

    def encode(batch: list[str]) -> None:
        nonlocal pending_n, n_docs
        n_docs += len(batch)
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            arr = np.asarray(enc.ids, dtype=np.int64)
            pending.append(arr)
            pending_n += arr.size
        progress.update(len(batch))

    for doc in docs:
        if not isinstance(doc, str):
            raise CorpusError(f"document is not text: {doc!r:.80}; point --text-field at a string column")
        batch.append(doc)
        if len(batch) >= SUPPORT_TEXT_BATCH:
            encode(batch)
            batch = []
            if pending_n >= block_tokens:
                yield flush()
    if batch:
        encode(batch)
    if pending:
        yield flush()


# --- public entry points ---------------------------------------------------------------------------
def count_token_stream(
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    rules: Sequence[CompiledRule],
    vocab: Vocab,
    *,
    window: int = DEFAULT_SUPPORT_WINDOW,
    window_tokens: int = DEFAULT_SUPPORT_WINDOW_TOKENS,
    block_tokens: int = SUPPORT_BLOCK_TOKENS,
    token_limit: int | None = None,
    state_file: str | os.PathLike | None = None,
    state_key: str = "",
    offset_unit: int = 1,
    progress: bool = False,
    eod_id: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Count support events in a flat token array (memmap welcome) with document offsets.

    Args:
        tokens: flat token ids.
        doc_offsets: sorted document start offsets (0 first; a trailing end offset is fine).
        rules, vocab: from `compile_rules` (or built directly from ids).
        window: W (1 = bigram).
        window_tokens: stream-window width for the per-window counts.
        block_tokens: tokens per block (memory bound).
        token_limit: count only cues before this flat offset (the tokens a run trained on).
        state_file: where to save progress (JSON, atomically, every few seconds); a rerun with
            the same inputs resumes from it, and it is removed when the count completes.
        state_key: identity of the stream (e.g. its path and size) folded into the state key.
        offset_unit: a document starts at token ``doc_offsets[i] // offset_unit`` (pass an
            index's byte ``pointers`` and its token size to avoid materialising token offsets).
        progress: show a tqdm bar.
        eod_id: a token that ends a document inside an item (events never cross it).

    Returns:
        ``{rule: {"cues", "rule_wins", "prior_wins", "n_tokens", "frames"}}``: int64 arrays per
        stream window; ``"frames"`` maps each frame name to the same three arrays counted over
        the events inside that frame.
    """
    matcher = _Matcher(rules, vocab)
    halo = window + 2 * matcher.max_len + matcher.frame_extent + 2
    n = int(tokens.shape[0])
    n_count = n if token_limit is None else min(n, token_limit)
    key = _state_key(rules, state_key, n, window, window_tokens, n_count, block_tokens, eod_id)

    def block_fn(block: _Block, tallies: list[_Tally], limit: int | None) -> None:
        _count_block(matcher, block.ids, block.seg_starts, offset=block.offset, core=block.core,
                     window=window, tallies=tallies, window_tokens=window_tokens, limit=limit)

    tallies, n_count = _run_stream(tokens, doc_offsets, block_fn, _n_tallies(rules), halo=halo, key=key,
                                   block_tokens=block_tokens, token_limit=token_limit, state_file=state_file,
                                   offset_unit=offset_unit, progress=progress, eod_id=eod_id)
    return _finish(rules, tallies, n_count, window_tokens)


def _state_key(rules: Sequence[CompiledRule], *parts: Any) -> str:
    """Hash of everything a count depends on: the rules' token forms and the options."""
    spec = [[r.name, r.direction, [[list(f.ids), f.leading_space] for role in ROLES for f in r.role(role)],
             [[fr.name, [e if isinstance(e, str) else [[list(f.ids), f.leading_space] for f in e]
                         for e in fr.elements]] for fr in r.frames]]
            for r in rules]
    return hashlib.sha256(json.dumps([spec, [str(p) for p in parts]]).encode()).hexdigest()


class _State:
    """Resumable progress: tallies plus how far the stream was read, saved atomically."""

    def __init__(self, path: str | os.PathLike | None, key: str) -> None:
        self.path = Path(path) if path is not None else None
        self.key = key
        self._last = time.monotonic()

    def load(self, n_rules: int) -> tuple[list[_Tally], int, int]:
        """(tallies, position, offset) from a matching saved state, else a fresh start."""
        tallies = [_Tally() for _ in range(n_rules)]
        if self.path is None or not self.path.is_file():
            return tallies, 0, 0
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return tallies, 0, 0  # a torn or foreign file: start over (it is overwritten)
        if data.get("key") != self.key:
            return tallies, 0, 0
        for t, counts in zip(tallies, data["counts"]):
            t.counts = np.asarray(counts, dtype=np.int64).reshape(3, -1)
        return tallies, int(data["position"]), int(data["offset"])

    def save(self, tallies: list[_Tally], *, position: int, offset: int, force: bool = False) -> None:
        if self.path is None or (not force and time.monotonic() - self._last < SUPPORT_STATE_EVERY_S):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": self.key, "position": position, "offset": offset,
                                   "counts": [t.counts.tolist() for t in tallies]}))
        os.replace(tmp, self.path)
        self._last = time.monotonic()

    def done(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _n_tallies(rules: Sequence[CompiledRule]) -> int:
    return sum(1 + len(r.frames) for r in rules)


def _finish(rules, tallies, n_tokens: int, window_tokens: int) -> dict[str, dict[str, Any]]:
    """Per rule: corpus-wide counts per stream window, and under ``"frames"`` the same per frame."""
    n_win = max(math.ceil(n_tokens / window_tokens), 1)
    out = {}
    it = iter(tallies)
    for rule in rules:
        cues, wins, losses = next(it).totals(n_win)
        out[rule.name] = {"cues": cues, "rule_wins": wins, "prior_wins": losses, "n_tokens": np.int64(n_tokens),
                          "frames": {}}
        for fr in rule.frames:
            f_cues, f_wins, f_losses = next(it).totals(n_win)
            out[rule.name]["frames"][fr.name] = {"cues": f_cues, "rule_wins": f_wins, "prior_wins": f_losses}
    return out


def _source_identity(path: Path) -> str:
    """Path, size and modification time: a changed input never resumes an old count."""
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return json.dumps([str(p.resolve())] + [[q.name, q.stat().st_size, q.stat().st_mtime_ns] for q in files])


def _read_corpus_meta(path: Path) -> dict[str, Any]:
    meta = path / _CORPUS_META
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{meta}: not valid JSON ({exc.msg})") from None


def count_support(
    corpus: str | os.PathLike,
    rules: str | os.PathLike | Sequence[Any] = "all",
    *,
    window: int = DEFAULT_SUPPORT_WINDOW,
    tokenizer: Any = None,
    tokens_per_step: int | None = None,
    window_steps: int | None = None,
    window_tokens: int | None = None,
    mode: str = "windowed",
    text_field: str = "text",
    multi_token: bool = True,
    strict: bool = False,
    token_limit: int | None = None,
    state_file: str | os.PathLike | None = None,
    block_tokens: int = SUPPORT_BLOCK_TOKENS,
    progress: bool = True,
    eod_id: int | None = None,
) -> pd.DataFrame:
    """Count rule-winning and prior-winning events in a corpus, overall and per window,
    corpus-wide and inside each frame the rules define (context-conditioned support).

    Args:
        corpus: a mini-suite corpus folder, a ``.bin``/``.idx`` prefix, a text/JSONL/Parquet
            file, or a ``datasets`` ``save_to_disk`` folder.
        rules: rule YAML file(s), shipped names, ``"all"``, or `SupportRule` objects.
        window: W, tokens looked at after (or before) each cue (bigram mode forces 1).
        tokenizer: tokenizer.json / model folder / name / HF tokenizer. Needed for everything
            except a mini corpus folder (which carries its tokenizer.json).
        tokens_per_step: stored tokens per training step; adds step windows. A mini corpus
            supplies it from corpus.json; Pythia's pre-shuffled files: 1024 x 2049.
        window_steps: training steps per window (default: corpus.json's, else
            ``constants.DEFAULT_SUPPORT_WINDOW_STEPS``).
        window_tokens: stream-window width when no ``tokens_per_step`` is known.
        mode: ``"windowed"`` or ``"bigram"``.
        text_field: the text field/column of JSONL, Parquet and `datasets` inputs.
        multi_token: match words that take several tokens (False reproduces a single-token
            counter, and reports every word it cannot see).
        strict: raise `TokenizationError` instead of warning about unmatched words.
        token_limit: count only cues before this flat token offset (a mini corpus sets it to
            the tokens its training read, ``corpus.json`` ``train_tokens``).
        state_file: progress file: an interrupted count resumes from it when rerun with the
            same inputs and options (the CLI puts it next to ``--out``); removed on completion.
        block_tokens: tokens per processing block (bounds memory).
        progress: tqdm progress bar.
        eod_id: in a ``.bin``/``.idx`` stream, a token id that ends a document inside an item
            (Pythia's pre-shuffled items are 2049-token windows over EOD-joined documents: 0).

    Returns:
        One row per (rule, frame, scope): frame ``"corpus"`` counts every event, each frame
        of the rule (rule YAML ``frames:``) counts the events standing in it; scope
        ``"overall"`` and one ``"window"`` row per stream window. Columns ``rule, frame, scope,
        window, token_start, token_end, window_start_step, window_end_step, cues, rule_wins,
        prior_wins, no_event, ratio, note, direction, mode, W, unmatched``. In frame rows
        ``cues`` counts the in-frame events. ``ratio`` is NaN and ``note`` "no events" when a
        row has no events on either side. ``frame.attrs["unmatched"]`` lists every unmatched
        word (strings).

    Raises:
        CorpusError: unreadable input or a missing text field.
        ConfigError: bad rules, mode, window or step options.
        TokenizationError: no tokenizer for a text input, or ``strict`` and an unmatched word.

    Example::

        count_support("web.jsonl", "pronoun_gender", tokenizer="tokenizer.json", mode="bigram")
    """
    if mode not in SUPPORT_MODES:
        raise ConfigError(f"mode must be one of {SUPPORT_MODES}, got {mode!r}")
    if window < 1:
        raise ConfigError(f"window must be >= 1 token, got {window}")
    w = 1 if mode == "bigram" else int(window)
    rule_defs = load_rules(rules)

    inp = _resolve_input(corpus, tokenizer=tokenizer, tokens_per_step=tokens_per_step, window_steps=window_steps,
                         window_tokens=window_tokens, token_limit=token_limit)
    compiled, vocab = compile_rules(rule_defs, inp.tokenizer, multi_token=multi_token)
    unmatched = [u for r in compiled for u in r.unmatched]
    if unmatched:
        msg = "; ".join(str(u) for u in unmatched)
        if strict:
            raise TokenizationError(f"unmatched rule words: {msg}; fix the rule file or the tokenizer")
        warnings.warn(f"unmatched rule words (they count zero): {msg}", SupportCueWarning, stacklevel=2)

    if inp.indexed_prefix is not None:
        ds = _open_stream(inp.indexed_prefix)
        # documents = idx items; their byte pointers are read lazily near each block
        counts = count_token_stream(ds.tokens, ds.pointers, compiled, vocab, offset_unit=ds.dtype.itemsize,
                                    window=w, window_tokens=inp.window_tokens,
                                    block_tokens=block_tokens, token_limit=inp.token_limit, progress=progress,
                                    state_file=state_file, state_key=_source_identity(data_path(inp.indexed_prefix)),
                                    eod_id=eod_id)
    else:
        matcher = _Matcher(compiled, vocab)
        key = _state_key(compiled, _source_identity(inp.path), text_field, w, inp.window_tokens, inp.token_limit,
                         block_tokens)

        def block_fn(block: _Block, tallies: list[_Tally], limit: int | None) -> None:
            _count_block(matcher, block.ids, block.seg_starts, offset=block.offset, core=block.core,
                         window=w, tallies=tallies, window_tokens=inp.window_tokens, limit=limit)

        tallies, n = _run_text(inp, block_fn, _n_tallies(compiled), key=key, text_field=text_field,
                               block_tokens=block_tokens, state_file=state_file, progress=progress)
        counts = _finish(compiled, tallies, n, inp.window_tokens)
    return _frame(compiled, counts, window_tokens=inp.window_tokens, tokens_per_step=inp.tokens_per_step,
                  window_steps=inp.window_steps, mode=mode, window=w, unmatched=unmatched)


@dataclass(frozen=True)
class _Input:
    """A resolved corpus: where its tokens come from and how the stream maps to steps."""

    path: Path
    indexed_prefix: Path | None  # a .bin/.idx stream (else text-like, tokenized here)
    tokenizer: Any
    tokens_per_step: int | None
    window_steps: int | None
    window_tokens: int
    token_limit: int | None


def _resolve_input(corpus, *, tokenizer, tokens_per_step, window_steps, window_tokens, token_limit) -> _Input:
    """Which kind of input, which tokenizer, and the window arithmetic (a mini corpus supplies
    tokenizer, tokens per step, window steps and the trained-token limit from corpus.json)."""
    path = Path(corpus)
    indexed_prefix = None
    meta: dict[str, Any] = {}
    if path.is_dir() and path.joinpath(_CORPUS_TOKENS + ".idx").is_file():
        indexed_prefix = path / _CORPUS_TOKENS
        meta = _read_corpus_meta(path)
        if tokenizer is None and (path / _CORPUS_TOKENIZER).is_file():
            tokenizer = path / _CORPUS_TOKENIZER
    elif path.suffix in (".bin", ".idx") or (not path.exists() and index_path(path).is_file()):
        indexed_prefix = dataset_prefix(path)
    elif not path.exists():
        raise CorpusError(f"corpus not found: {path}; pass a text/JSONL/Parquet file, a .bin/.idx prefix or a folder")
    if tokenizer is None:
        raise TokenizationError(
            f"a tokenizer is needed to find the rule words in {path}; pass --tokenizer "
            "(a tokenizer.json, a model folder, or a model name)"
        )
    if tokens_per_step is None and meta.get("tokens_per_step"):
        tokens_per_step = int(meta["tokens_per_step"])
    if window_steps is None and meta.get("window_steps"):
        window_steps = int(meta["window_steps"])
    if token_limit is None and meta.get("train_tokens"):
        token_limit = int(meta["train_tokens"])
    if token_limit is not None and token_limit < 0:
        raise ConfigError(f"token_limit must be >= 0, got {token_limit}")
    if tokens_per_step is not None:
        if tokens_per_step <= 0:
            raise ConfigError(f"tokens_per_step must be positive, got {tokens_per_step}")
        window_steps = window_steps or DEFAULT_SUPPORT_WINDOW_STEPS
        if window_steps <= 0:
            raise ConfigError(f"window_steps must be positive, got {window_steps}")
        wt = tokens_per_step * window_steps
    else:
        if window_steps is not None:
            raise ConfigError("window_steps needs tokens_per_step; pass --tokens-per-step (batch x seq_len)")
        wt = window_tokens or DEFAULT_SUPPORT_WINDOW_TOKENS
    if wt <= 0:
        raise ConfigError(f"window_tokens must be positive, got {wt}")
    return _Input(path, indexed_prefix, tokenizer, tokens_per_step, window_steps, int(wt), token_limit)


def _open_stream(prefix: Path) -> IndexedDataset:
    ds = IndexedDataset(prefix)
    if not ds.is_contiguous:
        raise CorpusError(f"{prefix}.idx: items are not stored back to back in .bin; rewrite the "
                          "dataset with IndexedDatasetWriter to get a flat stream")
    return ds


def _run_text(inp: _Input, block_fn, n_tallies: int, *, key: str, text_field: str, block_tokens: int,
              state_file, progress: bool) -> tuple[list[_Tally], int]:
    """Tokenize a text-like input in document blocks and count each; resumable. Returns the
    tallies and the number of stream tokens counted (capped at the token limit)."""
    from tqdm.auto import tqdm

    tok = load_tokenizer(inp.tokenizer)
    docs, total = _text_documents(inp.path, text_field=text_field)
    state = _State(state_file, key)
    tallies, docs_done, n = state.load(n_tallies)
    limit = inp.token_limit
    with tqdm(total=total, initial=docs_done, unit="doc", disable=not progress, desc="support") as bar:
        for block in _text_blocks(docs, tok, block_tokens=block_tokens, progress=bar, offset=n, docs_done=docs_done):
            block_fn(block, tallies, limit)
            n = block.offset + block.ids.size
            state.save(tallies, position=block.resume, offset=n)
            if limit is not None and n >= limit:
                break
    state.done()
    return tallies, (n if limit is None else min(n, limit))


def _run_stream(tokens: np.ndarray, doc_offsets: np.ndarray, block_fn, n_tallies: int, *, halo: int, key: str,
                block_tokens: int, token_limit: int | None, state_file, offset_unit: int,
                progress: bool, eod_id: int | None = None) -> tuple[list[_Tally], int]:
    """Count a flat token stream block by block (memmap: bounded memory); resumable."""
    from tqdm.auto import tqdm

    n = int(tokens.shape[0])
    n_count = n if token_limit is None else min(n, token_limit)
    state = _State(state_file, key)
    tallies, begin, _ = state.load(n_tallies)
    with tqdm(total=n_count, initial=begin, unit="tok", unit_scale=True, disable=not progress, desc="support") as bar:
        for block in _indexed_blocks(tokens, doc_offsets, halo=halo, block_tokens=block_tokens, end=n_count,
                                     begin=begin, offset_unit=offset_unit, eod_id=eod_id):
            block_fn(block, tallies, n_count)
            bar.update(block.core[1] - block.core[0])
            state.save(tallies, position=block.resume, offset=block.resume)
    state.done()
    return tallies, n_count


def support_ratio(wins: int, losses: int) -> tuple[float, str]:
    """``((wins + 1) / (losses + 1), "")``, or ``(nan, "no events")`` when both are 0: an empty
    row is no evidence of parity."""
    if wins == 0 and losses == 0:
        return float("nan"), NO_EVENTS
    return (wins + 1) / (losses + 1), ""


WINDOWED_COLUMNS = ["rule", "frame", "scope", "window", "token_start", "token_end", "window_start_step",
                    "window_end_step", "cues", "rule_wins", "prior_wins", "no_event", "ratio", "note", "direction",
                    "mode", "W", "unmatched"]


def _step_bounds(k: int | None, n_tok: int, *, window_tokens, tokens_per_step, window_steps) -> dict[str, Any]:
    last_step = int(math.ceil(n_tok / tokens_per_step)) if tokens_per_step else None
    if k is None:
        return dict(scope="overall", window=None, token_start=0, token_end=n_tok,
                    window_start_step=0 if tokens_per_step else None, window_end_step=last_step)
    return dict(scope="window", window=int(k), token_start=int(k * window_tokens),
                token_end=int(min((k + 1) * window_tokens, n_tok)),
                window_start_step=int(k * window_steps) if tokens_per_step else None,
                window_end_step=min(int((k + 1) * window_steps), last_step) if tokens_per_step else None)


def _frame(compiled, counts, *, window_tokens, tokens_per_step, window_steps, mode, window, unmatched) -> pd.DataFrame:
    rows = []
    bounds = dict(window_tokens=window_tokens, tokens_per_step=tokens_per_step, window_steps=window_steps)
    for rule in compiled:
        c_rule = counts[rule.name]
        n_tok = int(c_rule["n_tokens"])
        miss = "; ".join(str(u) for u in rule.unmatched)
        for fname, c in ((CORPUS_FRAME, c_rule), *c_rule["frames"].items()):
            base = dict(rule=rule.name, frame=fname, direction=rule.direction, mode=mode, W=window, unmatched=miss)
            for k in (None, *range(c["cues"].size)):
                sl = slice(None) if k is None else k
                row = dict(base, **_step_bounds(k, n_tok, **bounds),
                           cues=int(np.sum(c["cues"][sl])), rule_wins=int(np.sum(c["rule_wins"][sl])),
                           prior_wins=int(np.sum(c["prior_wins"][sl])))
                row["no_event"] = row["cues"] - row["rule_wins"] - row["prior_wins"]
                row["ratio"], row["note"] = support_ratio(row["rule_wins"], row["prior_wins"])
                rows.append(row)
    frame = pd.DataFrame(rows, columns=WINDOWED_COLUMNS)
    for col in ("window", "window_start_step", "window_end_step"):
        frame[col] = frame[col].astype("Int64")
    frame.attrs["unmatched"] = [str(u) for u in unmatched]
    frame.attrs["tokens_per_step"] = tokens_per_step
    frame.attrs["window_steps"] = window_steps
    frame.attrs["window_tokens"] = window_tokens
    return frame


# --- the paper's battery bigram counter ---------------------------------------------------------
BATTERY_MODE = "battery"
BATTERY_COLUMNS = ["rule", "condition", "target_count", "foil_count", "ratio", "note", "scope", "window",
                   "token_start", "token_end", "window_start_step", "window_end_step", "n_items",
                   "target_patterns", "foil_patterns", "mode"]


@dataclass(frozen=True)
class BatteryCell:
    """One (rule, condition) of a probe battery: its distinct target and foil patterns."""

    rule: str
    condition: str
    n_items: int
    targets: tuple[tuple[str, tuple[int, ...]], ...]  # (pattern text, token ids), distinct ids
    foils: tuple[tuple[str, tuple[int, ...]], ...]


def battery_pattern(prefix: str, candidate: str) -> str:
    """The paper's pattern: a space, the prefix's last word, then the candidate as scored
    (the prefix's trailing whitespace moves into the candidate): ``" because she"``."""
    stripped = prefix.rstrip()
    words = stripped.split()
    if not words:
        raise ConfigError(f"probe prefix {prefix!r} has no word to build a battery pattern from")
    return " " + words[-1] + prefix[len(stripped):] + candidate


def battery_cells(probes: Any, tokenizer: Any) -> tuple[BatteryCell, ...]:
    """The battery's (rule, condition) cells with their distinct patterns, tokenized.

    Args:
        probes: a probe set name, file, ``"all"`` or `ProbeSet` (see `probes.load_probes`).
        tokenizer: as `load_tokenizer`.

    Returns:
        Cells in first-seen order; within a cell a pattern is kept once per distinct token
        sequence, so 50 items sharing ``" because she"`` count it once.
    """
    from pythia_forensics.scoring.probes import load_probes

    tok = load_tokenizer(tokenizer)
    pset = load_probes(probes)
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for item in pset.items:
        cell = cells.setdefault((item.rule, item.condition), {"n": 0, "targets": {}, "foils": {}})
        cell["n"] += 1
        for side, cand in (("targets", item.target), ("foils", item.foil)):
            text = battery_pattern(item.prefix, cand)
            ids = _encode_form(tok, text)
            if not ids:
                raise TokenizationError(f"battery pattern {text!r} tokenizes to nothing; check the tokenizer")
            cell[side].setdefault(ids, text)
    return tuple(BatteryCell(r, c, v["n"], tuple((t, i) for i, t in v["targets"].items()),
                             tuple((t, i) for i, t in v["foils"].items()))
                 for (r, c), v in cells.items())


class _SequenceCounter:
    """Exact occurrences of token sequences inside documents (no word-boundary test: the
    paper counts token sequences), by one look-up table of first ids."""

    def __init__(self, sequences: Sequence[tuple[int, ...]]) -> None:
        self.sequences = [np.array(s, dtype=np.int64) for s in sequences]
        top = max((int(x.max()) for x in self.sequences), default=0) + 1
        self.lut = np.zeros(max(top, _UINT16_IDS), bool)
        self.by_first: dict[int, list[int]] = {}
        for i, seq in enumerate(self.sequences):
            self.lut[seq[0]] = True
            self.by_first.setdefault(int(seq[0]), []).append(i)
        self.max_len = max((x.size for x in self.sequences), default=1)

    def count(self, block: _Block, tallies: list[_Tally], limit: int | None, window_tokens: int) -> None:
        ids = block.ids
        n = ids.shape[0]
        lo, hi = block.core
        if limit is not None:
            hi = min(hi, max(limit - block.offset, lo))
        if n == 0 or hi <= lo:
            return
        core = ids[lo:hi]
        if core.dtype.itemsize > 2:
            core = np.where(core < self.lut.size, core, 0)
        cand = np.flatnonzero(self.lut[core]) + lo
        first = ids[cand]
        order = np.argsort(first, kind="stable")
        cand, first = cand[order], first[order]
        for f, members in self.by_first.items():
            a, b = np.searchsorted(first, [f, f + 1])
            pos0 = cand[a:b]
            for i in members:
                seq = self.sequences[i]
                L = seq.size
                p = pos0[pos0 + L <= n]
                for j in range(1, L):
                    p = p[ids[p + j] == seq[j]]
                # inside one document
                p = p[np.searchsorted(block.seg_starts, p, side="right")
                      == np.searchsorted(block.seg_starts, p + L - 1, side="right")]
                tallies[i].add(0, (p + block.offset) // window_tokens)


def count_battery(
    corpus: str | os.PathLike,
    probes: Any = "all",
    *,
    tokenizer: Any = None,
    tokens_per_step: int | None = None,
    window_steps: int | None = None,
    window_tokens: int | None = None,
    text_field: str = "text",
    token_limit: int | None = None,
    state_file: str | os.PathLike | None = None,
    block_tokens: int = SUPPORT_BLOCK_TOKENS,
    progress: bool = True,
    eod_id: int | None = None,
) -> pd.DataFrame:
    """The paper's battery-derived bigram support: for every probe item the patterns
    ``" <last word of prefix>" + target`` and ``+ foil``, counted as exact token sequences
    (inside documents) over the stream, summed per (rule, condition) over its distinct patterns.

    Args:
        corpus, tokenizer, tokens_per_step, window_steps, window_tokens, text_field, token_limit,
            state_file, block_tokens, progress, eod_id: as `count_support` (a pattern belongs to the
            window, and the trained range, of its first token).
        probes: probe set name / file / ``"all"`` / `ProbeSet`.

    Returns:
        Columns ``rule, condition, target_count, foil_count, ratio, note, scope, window,
        token_start, token_end, window_start_step, window_end_step, n_items, target_patterns,
        foil_patterns, mode``: one ``"overall"`` row per cell and one ``"window"`` row per stream
        window; ``ratio = (target_count + 1) / (foil_count + 1)``, NaN with note "no events"
        when both counts are 0. ``*_patterns`` list the distinct patterns, ``|``-separated.

    Raises:
        CorpusError, ConfigError, TokenizationError: as `count_support`; a prefix with no word.
    """
    inp = _resolve_input(corpus, tokenizer=tokenizer, tokens_per_step=tokens_per_step, window_steps=window_steps,
                         window_tokens=window_tokens, token_limit=token_limit)
    cells = battery_cells(probes, inp.tokenizer)
    seqs = list(dict.fromkeys(ids for c in cells for _, ids in c.targets + c.foils))
    counter = _SequenceCounter(seqs)
    wt = inp.window_tokens

    def block_fn(block: _Block, tallies: list[_Tally], limit: int | None) -> None:
        counter.count(block, tallies, limit, wt)

    key = hashlib.sha256(json.dumps([BATTERY_MODE, [list(s) for s in seqs]]).encode()).hexdigest()
    if inp.indexed_prefix is not None:
        ds = _open_stream(inp.indexed_prefix)
        n = ds.n_tokens
        key = _state_key((), key, _source_identity(data_path(inp.indexed_prefix)), n, wt, inp.token_limit,
                         block_tokens, eod_id)
        tallies, n_tok = _run_stream(ds.tokens, ds.pointers, block_fn, len(seqs), halo=counter.max_len + 1, key=key,
                                     block_tokens=block_tokens, token_limit=inp.token_limit, state_file=state_file,
                                     offset_unit=ds.dtype.itemsize, progress=progress, eod_id=eod_id)
    else:
        key = _state_key((), key, _source_identity(inp.path), text_field, wt, inp.token_limit, block_tokens)
        tallies, n_tok = _run_text(inp, block_fn, len(seqs), key=key, text_field=text_field,
                                   block_tokens=block_tokens, state_file=state_file, progress=progress)
    n_win = max(math.ceil(n_tok / wt), 1)
    per_seq = {s: t.totals(n_win)[0] for s, t in zip(seqs, tallies)}
    bounds = dict(window_tokens=wt, tokens_per_step=inp.tokens_per_step, window_steps=inp.window_steps)
    rows = []
    for cell in cells:
        t_counts = sum((per_seq[ids] for _, ids in cell.targets), np.zeros(n_win, np.int64))
        f_counts = sum((per_seq[ids] for _, ids in cell.foils), np.zeros(n_win, np.int64))
        base = dict(rule=cell.rule, condition=cell.condition, n_items=cell.n_items, mode=BATTERY_MODE,
                    target_patterns="|".join(t for t, _ in cell.targets),
                    foil_patterns="|".join(t for t, _ in cell.foils))
        for k in (None, *range(n_win)):
            sl = slice(None) if k is None else k
            row = dict(base, **_step_bounds(k, n_tok, **bounds), target_count=int(np.sum(t_counts[sl])),
                       foil_count=int(np.sum(f_counts[sl])))
            row["ratio"], row["note"] = support_ratio(row["target_count"], row["foil_count"])
            rows.append(row)
    frame = pd.DataFrame(rows, columns=BATTERY_COLUMNS)
    for col in ("window", "window_start_step", "window_end_step"):
        frame[col] = frame[col].astype("Int64")
    frame.attrs.update(tokens_per_step=inp.tokens_per_step, window_steps=inp.window_steps, window_tokens=wt,
                       unmatched=[])
    return frame


def synthetic_stream(n_tokens: int, *, seed: int = 0, vocab_size: int = 50277,
                     block_tokens: int = SUPPORT_BLOCK_TOKENS) -> tuple[np.ndarray, np.ndarray, tuple[CompiledRule, ...], Vocab, list[tuple[int, ...]]]:
    """A Pythia-shaped synthetic stream and rules for throughput measurements.

    Zipf-like (exponent 1.1) uint16 ids over a 50,277-token vocabulary (frequent ids stand in
    for " he", " a", " was"), in 2049-token items (Pythia's stored sequences); four rules of 36
    cue words each (a third of them two-token forms), each with a gapped frame
    ``<cue> ... X <candidate>`` (X a frequent id, as "because"); 60 two- and three-token battery
    patterns over frequent ids.

    Returns:
        ``(tokens, item_offsets, rules, vocab, battery_sequences)``.
    """
    rng = np.random.default_rng(seed)
    # Zipf-like unigram law by inverse CDF (id = frequency rank), as natural text
    cdf = np.cumsum(1.0 / np.arange(1, vocab_size + 1) ** 1.1)
    tokens = np.empty(n_tokens, np.uint16)
    for a in range(0, n_tokens, block_tokens):
        u = rng.random(min(block_tokens, n_tokens - a)) * cdf[-1]
        tokens[a : a + u.size] = np.searchsorted(cdf, u)
    doc_offsets = np.arange(0, n_tokens + 1, 2049, dtype=np.int64)
    starts = rng.random(vocab_size) < 0.4
    ends = rng.random(vocab_size) < 0.4
    vocab = Vocab(vocab_size, starts, ends)
    compiled = []
    # cue words drawn from frequency ranks 50-3000: denser than names in web text, so the
    # candidate checks weigh at least as much as on real data
    pool = rng.permutation(np.arange(50, 3000))
    for r in range(4):
        cue_ids = pool[r * 60 : r * 60 + 60]
        cues = tuple(TokenForm("c", " c", (int(i),)) for i in cue_ids[:24]) + tuple(
            TokenForm("c", "c", (int(i), int(j))) for i, j in zip(cue_ids[24:36], cue_ids[36:48])
        )
        direction = "before" if r == 2 else "after"
        trigger = (TokenForm("x", " x", (20 + r,)),)
        elements = ((FRAME_CUE, FRAME_GAP, trigger, FRAME_CANDIDATE) if direction == "after"
                    else (FRAME_CANDIDATE, FRAME_GAP, trigger, FRAME_CUE))
        compiled.append(CompiledRule(f"rule{r}", direction, cues, (TokenForm("t", " t", (5 + 2 * r,)),),
                                     (TokenForm("p", " p", (6 + 2 * r,)),),
                                     frames=(CompiledFrame("frame", elements),)))
    battery = [tuple(int(x) for x in rng.integers(1, 200, size=2 + (i % 2))) for i in range(60)]
    return tokens, doc_offsets, tuple(compiled), vocab, battery


def benchmark(n_tokens: int = 50_000_000, *, window: int = DEFAULT_SUPPORT_WINDOW, seed: int = 0,
              vocab_size: int = 50277, block_tokens: int = SUPPORT_BLOCK_TOKENS, repeats: int = 1,
              modes: Sequence[str] = ("windowed", "bigram", "in-frame", BATTERY_MODE)) -> dict[str, Any]:
    """Tokens per second of each counter on `synthetic_stream` (one thread: numpy's kernels).

    Modes: ``windowed`` (W = `window`, no frames), ``bigram`` (W = 1), ``in-frame`` (windowed
    plus each rule's gapped frame), ``battery`` (exact token-sequence counts of 60 patterns).

    Returns:
        ``{"n_tokens", "seconds", "tokens_per_second", "events", "window", "cpu_count",
        "modes": {mode: {"seconds", "tokens_per_second", "events"}}}``; the top-level numbers are
        the windowed mode's (best of ``repeats`` runs each).
    """
    tokens, doc_offsets, framed, vocab, battery = synthetic_stream(n_tokens, seed=seed, vocab_size=vocab_size,
                                                                   block_tokens=block_tokens)
    plain = tuple(CompiledRule(r.name, r.direction, r.cues, r.targets, r.competitors) for r in framed)

    def run(mode: str) -> int:
        if mode == BATTERY_MODE:
            counter = _SequenceCounter(battery)
            tallies, _ = _run_stream(tokens, doc_offsets,
                                     lambda b, t, lim: counter.count(b, t, lim, DEFAULT_SUPPORT_WINDOW_TOKENS),
                                     len(battery), halo=counter.max_len + 1, key="", block_tokens=block_tokens,
                                     token_limit=None, state_file=None, offset_unit=1, progress=False)
            return int(sum(t.counts.sum() for t in tallies))
        rules = framed if mode == "in-frame" else plain
        counts = count_token_stream(tokens, doc_offsets, rules, vocab, window=1 if mode == "bigram" else window,
                                    window_tokens=DEFAULT_SUPPORT_WINDOW_TOKENS, block_tokens=block_tokens)
        if mode == "in-frame":
            return int(sum(f["rule_wins"].sum() + f["prior_wins"].sum()
                           for c in counts.values() for f in c["frames"].values()))
        return int(sum(c["rule_wins"].sum() + c["prior_wins"].sum() for c in counts.values()))

    results = {}
    for mode in modes:
        best, events = None, 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            events = run(mode)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        results[mode] = {"seconds": best, "tokens_per_second": n_tokens / best, "events": events}
    top = results.get("windowed") or next(iter(results.values()))
    # numpy runs these kernels on one thread; cpu_count says what the machine had
    return {"n_tokens": n_tokens, "seconds": top["seconds"], "tokens_per_second": top["tokens_per_second"],
            "events": top["events"], "window": window, "cpu_count": os.cpu_count(), "modes": results}
