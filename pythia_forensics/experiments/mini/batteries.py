"""Generate the four shipped probe batteries (`probes/<rule>.yaml`) from the lexicon.

Items put each rule's conflict frame (with its openers) in front of the choice:
conflict = a cue-class word (girl's name, vowel noun, plural subject), where the frame's prior
favours the competitor; agree = the contrast class, where rule and prior coincide. The
"heldout" split uses the held-out words, which the mini corpus never shows in the conflict
frame. The committed files must equal `render_battery(rule)` (a test checks).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from pythia_forensics.constants import probes_dir
from pythia_forensics.experiments.mini.config import RULES
from pythia_forensics.corpus.lexicon import RULE_SLOTS, Lexicon, load_lexicon, with_opener

DESCRIPTIONS = {
    "pronoun_gender": "Pronoun gender after a name: 'Mia cried because' -> ' she' vs ' he'.",
    "reflexive_gender": "Reflexive gender after a name: 'Mia blamed' -> ' herself' vs ' himself'.",
    "indefinite_article": "a/an before a vowel- or consonant-sound noun: ' an apple' vs ' a apple'.",
    "subject_verb_agreement": "Verb number after a subject with a singular attractor: "
                              "'The dogs by the river' -> ' were' vs ' was'.",
}


def battery_items(rule: str, *, lexicon: Lexicon | None = None) -> list[dict]:
    """The items of one rule's battery as plain dicts (ARCHITECTURE.md item fields)."""
    lex = lexicon or load_lexicon()
    spec = RULE_SLOTS[rule]
    frame = lex.templates[rule]["conflict"]
    head, rest = frame.split("{" + spec.form_slot + "}")
    head = head.rstrip(" ")
    attractors = lex.classes["attractor_nouns"]
    items = []
    for condition, cls, good_key, bad_key in (
        ("conflict", spec.cue_class, spec.cue_form_key, spec.other_form_key),
        ("agree", spec.other_class, spec.other_form_key, spec.cue_form_key),
    ):
        for split in ("train", "heldout"):
            n = 0
            for word in lex.words(cls, heldout=(split == "heldout")):
                for opener in lex.templates["openers"]:
                    attr = attractors[n % len(attractors)]
                    fill = {spec.word_slot: word, "attr": attr}
                    prefix = with_opener(opener, head).format(**fill)
                    tail = rest.format(**fill)  # a/an: the noun follows the choice
                    n += 1
                    items.append({
                        "item_id": f"{rule}.{condition}.{split}.{n:03d}",
                        "rule": rule,
                        "condition": condition,
                        "split": split,
                        "prefix": prefix,
                        "target": " " + lex.forms[rule][good_key] + tail,
                        "foil": " " + lex.forms[rule][bad_key] + tail,
                        "template": frame,
                        "meta": {"cue": word, "opener": opener.strip(), "cue_class": cls},
                    })
    return items


def render_battery(rule: str, *, lexicon: Lexicon | None = None) -> str:
    """The YAML text of `probes/<rule>.yaml`."""
    doc = {
        "name": rule,
        "description": DESCRIPTIONS[rule],
        "generated_by": "pythia_forensics.experiments.mini.batteries (from probes/lexicon.yaml); do not edit by hand",
        "items": battery_items(rule, lexicon=lexicon),
    }
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=200)


def write_batteries(directory: Path | None = None) -> list[Path]:
    """Regenerate every shipped battery file."""
    directory = Path(directory or probes_dir())
    paths = []
    for rule in RULES:
        path = directory / f"{rule}.yaml"
        path.write_text(render_battery(rule))
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m pythia_forensics.experiments.mini.batteries
    for p in write_batteries():
        print(p)
