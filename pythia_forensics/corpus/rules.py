"""Rule definitions: the rule YAMLs (``probes/rules/<rule>.yaml``), their word classes and frames.

A rule names a cue class (girls' names), the rule's target forms (" she") and the prior's
competitor forms (" he"), each a word list, ``{lexicon: CLASS}`` (a class or form of the shared
lexicon, read by `corpus.lexicon.load_lexicon`) or ``{words: [...]}``. ``frames`` name contexts
the cue and its chosen form must stand in (see `Frame`). `load_rules` collects every problem
of every file and raises them together.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from pythia_forensics.constants import SUPPORT_RULES_SUBDIR, probes_dir
from pythia_forensics.corpus.lexicon import Lexicon, load_lexicon
from pythia_forensics.errors import ConfigError, CorpusError

__all__ = ["ROLES", "FRAME_CUE", "FRAME_CANDIDATE", "FRAME_GAP", "CORPUS_FRAME", "SUPPORT_DIRECTIONS",
           "WordClass", "Frame", "SupportRule", "load_rules"]

SUPPORT_DIRECTIONS = ("after", "before")  # where a rule's candidate stands relative to its cue
ROLES = ("cues", "targets", "competitors")
_RULE_KEYS = {"name", "description", "direction", "cues", "targets", "competitors", "lexicon", "frames"}
# Frame pattern placeholders (rule YAML `frames:`): the cue, the chosen form, any tokens.
FRAME_CUE, FRAME_CANDIDATE, FRAME_GAP = "<cue>", "<candidate>", "..."
CORPUS_FRAME = "corpus"  # the `frame` of corpus-wide rows (every event, in any context)


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


def _word_classes(spec: Any, *, rule: str, role: str, lexicon_fn: Callable[[], Lexicon], problems: list[str]) -> tuple[WordClass, ...]:
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
                value = lexicon_fn().lookup(ref)
            except (KeyError, CorpusError) as exc:
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

    def lexicon_fn() -> Lexicon:  # read only when a role references it (load_lexicon caches)
        return load_lexicon(base / lex_path if lex_path else None)

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


def _frames(spec: Any, *, rule: str, direction: str, source: str, lexicon_fn: Callable[[], Lexicon], problems: list[str]) -> tuple[Frame, ...]:
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
        " (or a rule YAML path)", param="rules"
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
        raise ConfigError("; ".join(problems), param="rules")
    if not rules:
        raise ConfigError(f"no rules found in {spec!r}; give a rule YAML file or a shipped rule name", param="rules")
    return tuple(rules)

