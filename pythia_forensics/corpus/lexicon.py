"""The shared lexicon (`probes/lexicon.yaml`) and how each rule fills its frames.

`load_lexicon` is the one reader of a lexicon file: the corpus generator, the probe-battery
generator and the support counter's rule files (``{lexicon: female_names}``,
``{lexicon: forms.pronoun_gender.female}``, through `Lexicon.lookup`) all get a `Lexicon`.

One table, `RULE_SLOTS`, says for every rule which lexicon class is the support cue, which
class is its agree-side contrast, which frame slot holds that word and which slot holds the
chosen form. The corpus generator, the probe-battery generator and the ground-truth counts
all read it, so they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import difflib
import os

import yaml

from pythia_forensics.constants import LEXICON_FILE, probes_dir
from pythia_forensics.errors import CorpusError


@dataclass(frozen=True)
class RuleSlots:
    """How a rule's frames are filled.

    Attributes:
        cue_class: lexicon class whose words are support cues (girl names, vowel nouns, ...).
        other_class: the contrast class (boy names, consonant nouns, singular subjects).
        word_slot: frame slot holding the cue/contrast word.
        form_slot: frame slot holding the chosen form.
        cue_form_key / other_form_key: keys into `forms[rule]` for each class's correct form.
        direction: "after" (form follows the cue) or "before" (a/an precede their noun).
    """

    cue_class: str
    other_class: str
    word_slot: str
    form_slot: str
    cue_form_key: str
    other_form_key: str
    direction: str = "after"


RULE_SLOTS: Mapping[str, RuleSlots] = {
    "pronoun_gender": RuleSlots("female_names", "male_names", "name", "pron", "female", "male"),
    "reflexive_gender": RuleSlots("female_names", "male_names", "name", "refl", "female", "male"),
    "indefinite_article": RuleSlots("vowel_nouns", "consonant_nouns", "noun", "art", "vowel",
                                    "consonant", direction="before"),
    "subject_verb_agreement": RuleSlots("plural_nouns", "singular_nouns", "subj", "verb",
                                        "plural", "singular"),
}


@dataclass(frozen=True)
class Lexicon:
    """The parsed lexicon file.

    Attributes:
        classes: every top-level word list (``female_names``, ``vowel_nouns_heldout``, ...).
        forms: ``forms[rule][key]``, each rule's forms (empty when the file has none).
        templates: the generator's sentence templates (empty when the file has none).
        path: the file read.
        entries: the whole file as read (what `lookup` walks).
    """

    classes: Mapping[str, tuple[str, ...]]
    forms: Mapping[str, Mapping[str, str]]
    templates: Mapping[str, Any]
    path: Path
    entries: Mapping[str, Any]

    def lookup(self, ref: str) -> Any:
        """The entry a dotted reference names: ``"female_names"`` (a word list) or
        ``"forms.pronoun_gender.female"`` (one word).

        Raises:
            KeyError: no such entry; the message suggests close class names.
        """
        node: Any = self.entries
        for part in ref.split("."):
            if not isinstance(node, Mapping) or part not in node:
                known = [k for k, v in self.entries.items() if isinstance(v, (list, dict))]
                close = difflib.get_close_matches(ref, known, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise KeyError(f"lexicon has no {ref!r}{hint}; known classes: {', '.join(known)}")
            node = node[part]
        return node

    def words(self, cls: str, *, heldout: bool | None = None) -> tuple[str, ...]:
        """Words of a class; heldout=True only the held-out subset, False only the rest."""
        words = self.classes[cls]
        if heldout is None:
            return words
        held = set(self.classes.get(f"{cls}_heldout", ()))
        return tuple(w for w in words if (w in held) == heldout)

    def target_form(self, rule: str) -> str:
        return self.forms[rule][RULE_SLOTS[rule].cue_form_key]

    def competitor_form(self, rule: str) -> str:
        return self.forms[rule][RULE_SLOTS[rule].other_form_key]

    def trigger_frame(self, rule: str) -> str:
        """The rule-following frame that reuses the conflict frame's trigger word."""
        spec = self.templates[rule]
        for frame in spec["rule"]:
            if f" {spec['trigger']} " in f" {frame} ":
                return frame
        raise CorpusError(f"lexicon {self.path}: no rule frame of {rule!r} contains its trigger "
                          f"{spec['trigger']!r}; add one")

    def all_words(self) -> set[str]:
        """Every word a sentence can contain (lexicon classes, forms, frame words)."""
        words: set[str] = set()
        for ws in self.classes.values():
            words.update(ws)
        for fs in self.forms.values():
            words.update(fs.values())
        return words


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Lexicon:  # the mtime: an edited file is read again
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise CorpusError(f"lexicon {p}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise CorpusError(f"lexicon {p}: must be a YAML mapping of word classes")
    classes = {k: tuple(v) for k, v in raw.items() if isinstance(v, list)}
    problems = [f"{k}_heldout is not a subset of {k}" for k in classes
                if f"{k}_heldout" in classes and not set(classes[f"{k}_heldout"]) <= set(classes[k])]
    paired = ("singular_nouns", "plural_nouns")
    if any(k in classes for k in paired) and len(classes.get(paired[0], ())) != len(classes.get(paired[1], ())):
        problems.append("singular_nouns and plural_nouns must be paired lists of equal length")
    if problems:
        raise CorpusError(f"lexicon {p}: " + "; ".join(problems))
    return Lexicon(classes=classes, forms=raw.get("forms") or {}, templates=raw.get("templates") or {}, path=p,
                   entries=raw)


def load_lexicon(path: str | os.PathLike | None = None) -> Lexicon:
    """Read `probes/lexicon.yaml` (or `path`): the one lexicon reader.

    Args:
        path: a lexicon YAML file; default the shipped one (``PF_PROBES_DIR`` moves it).

    Returns:
        The parsed `Lexicon` (cached per file and modification time).

    Raises:
        CorpusError: the file is missing, not a YAML mapping, or inconsistent.
    """
    p = Path(path) if path else probes_dir() / LEXICON_FILE
    if not p.is_file():
        raise CorpusError(f"lexicon file not found: {p}; set PF_PROBES_DIR to the folder holding "
                          f"{LEXICON_FILE}, or give the rule a `lexicon:` path")
    return _load(str(p), p.stat().st_mtime_ns)


def with_opener(opener: str, frame: str) -> str:
    """Prefix a frame with an opener ("Yesterday "), lower-casing a leading common word
    ("The kids" -> "Yesterday the kids"); a leading name slot stays as it is."""
    if opener and not frame.startswith("{"):
        frame = frame[0].lower() + frame[1:]
    return opener + frame
