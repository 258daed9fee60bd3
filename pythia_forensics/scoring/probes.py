"""Probe files (YAML, JSONL, the Natural-Ungrokking paper's JSONL) -> a validated `ProbeSet`.

A probe item asks one question of a model: after `prefix`, is the rule-following `target`
more likely than the competing `foil`? Items are data, read from three formats:

* YAML: a mapping ``{name, description?, items: [...]}`` or a bare list of items;
* JSONL: one item (a JSON object) per line;
* the paper's JSONL battery (fields ``family, probe, condition, split, prefix, correct,
  distractor, item_id, template_id, category, chance``), read unchanged: ``family`` -> rule,
  ``correct`` -> target, ``distractor`` -> foil, ``template_id`` -> template, the rest -> meta.

Validation collects every problem (file, line, field) and raises one `ProbeFormatError`, so a
user fixes a file in one pass instead of one error per run.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pythia_forensics.constants import (
    CONDITIONS,
    PROBE_NON_BATTERY_FILES,
    PROBE_SET_ALL,
    PROBE_SUFFIXES,
    SPLIT_ALIASES,
    SPLITS,
    probes_dir,
)
from pythia_forensics.errors import ProbeFormatError, UnknownProbeSetError

# A probe file is data a person wrote or a tool generated; these bounds are far above any real
# battery (the shipped ones: < 1 MiB, depth 3, no aliases) and far below what exhausts memory.
PROBE_MAX_BYTES = 64 * 2**20        # file size
PROBE_MAX_DEPTH = 32                # nesting of lists/mappings inside one file
PROBE_MAX_INT_DIGITS = 64           # an integer literal longer than this is refused, not parsed
PROBE_MAX_YAML_ALIASES = 1000       # alias uses per YAML file
PROBE_MAX_YAML_NODES = 2_000_000    # nodes after alias expansion (an alias bomb exceeds it fast)

__all__ = ["ProbeItem", "ProbeSet", "load_probes", "parse_probes", "probe_set_sha256", "shipped_probe_sets"]

REQUIRED_FIELDS = ("item_id", "rule", "condition", "split", "prefix", "target", "foil")
# `allow_invisible: true` keeps control / zero-width characters of that item on purpose; it is
# how the item is read, not what is scored, so it is not part of the item or its hash.
ALLOW_INVISIBLE_FIELD = "allow_invisible"
OPTIONAL_FIELDS = ("template", "meta", ALLOW_INVISIBLE_FIELD)
# The text a model is scored on: it must be text a reader of the file can see.
SCORED_TEXT_FIELDS = ("prefix", "target", "foil")
# Fields a control character makes unreadable in every table and log line.
CONTROL_CHECKED_FIELDS = ("item_id", "rule", *SCORED_TEXT_FIELDS, "template")
# Where the probe format is documented for someone who installed the wheel (the README is the
# package's long description; `probe --help` prints the same summary).
PROBE_FORMAT_DOCS = "the README's 'Probe format' section, or `pythia-forensics probe --help`"
# The paper's battery format: its field -> our field (fields not listed go to meta).
PAPER_FIELDS = {"family": "rule", "correct": "target", "distractor": "foil", "template_id": "template"}
PAPER_MARKERS = frozenset({"family", "correct", "distractor"})
# How many individual problems a ProbeFormatError message lists before "... and N more".
PROBE_ERRORS_SHOWN = 8


@dataclass(frozen=True)
class ProbeItem:
    """One probe question: after `prefix`, `target` (rule) versus `foil` (competitor).

    Attributes:
        item_id: unique within a probe set.
        rule: rule name (e.g. ``pronoun_gender``).
        condition: ``conflict`` (rule and surface prior disagree) or ``agree`` (the control).
        split: ``train`` or ``heldout``.
        prefix: the context; trailing whitespace moves into the candidates when scoring.
        target: the rule-following continuation (usually with its leading space).
        foil: the competing continuation.
        template: the sentence frame the item was made from, if known.
        meta: cue metadata and extra fields (strings), e.g. the paper's ``category``, ``chance``.
    """

    item_id: str
    rule: str
    condition: str
    split: str
    prefix: str
    target: str
    foil: str
    template: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)

    def canonical(self) -> dict[str, Any]:
        """The item as a plain dict with sorted meta (the content that is hashed)."""
        return {
            "item_id": self.item_id, "rule": self.rule, "condition": self.condition,
            "split": self.split, "prefix": self.prefix, "target": self.target, "foil": self.foil,
            "template": self.template, "meta": dict(sorted(self.meta.items())),
        }


@dataclass(frozen=True)
class ProbeSet:
    """A validated, named collection of probe items.

    Attributes:
        name: the set's name (the file's ``name:`` field or its stem).
        items: the items in file order.
        sha256: hash of the canonical item content, independent of item order.
        source: the file(s) it came from.
    """

    name: str
    items: tuple[ProbeItem, ...]
    sha256: str
    source: str

    def __len__(self) -> int:
        return len(self.items)

    @property
    def rules(self) -> tuple[str, ...]:
        """Rule names in first-seen order."""
        return tuple(dict.fromkeys(item.rule for item in self.items))


def probe_set_sha256(items: Sequence[ProbeItem]) -> str:
    """sha256 over the items' canonical JSON, sorted so that item order does not matter."""
    lines = sorted(json.dumps(item.canonical(), sort_keys=True, ensure_ascii=False) for item in items)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# --- parsing -------------------------------------------------------------------------------
class _Problems:
    """Collects (file, line, field, message) and raises them together as one error."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._keys: list[tuple[str, int]] = []

    def add(self, where: str, line: int | None, fieldname: str | None, message: str) -> None:
        loc = f"{where}:{line}" if line is not None else where
        self.items.append(f"{loc}: {'field ' + repr(fieldname) + ': ' if fieldname else ''}{message}")
        self._keys.append((where, line or 0))

    def raise_if_any(self, source: str) -> None:
        if not self.items:
            return
        # report in file order, whichever check found the problem first
        order = sorted(range(len(self.items)), key=lambda k: self._keys[k])
        self.items = [self.items[k] for k in order]
        shown = "; ".join(self.items[:PROBE_ERRORS_SHOWN])
        more = len(self.items) - PROBE_ERRORS_SHOWN
        tail = f"; ... and {more} more" if more > 0 else ""
        error = ProbeFormatError(
            f"{len(self.items)} problem(s) in probe file {source}: {shown}{tail}. "
            f"Fix these items and rerun (format: {PROBE_FORMAT_DOCS})."
        )
        error.problems = list(self.items)  # type: ignore[attr-defined]
        raise error


# libyaml's parser and composer (C) when PyYAML was built with it: ~8x faster on the shipped
# batteries than the pure-Python loader (issue #17); the pure one otherwise, same results.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _BoundedLoader(_BaseLoader):
    """Safe loader whose integer literals are bounded (`PROBE_MAX_INT_DIGITS`).

    Construction runs in Python even under libyaml, so the bound holds with either parser.
    Nesting and alias expansion are bounded before composition, by `_check_events`.
    """

    def construct_yaml_int(self, node: Any) -> Any:
        if len(str(node.value)) > PROBE_MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer with {len(node.value):,} digits (more than {PROBE_MAX_INT_DIGITS}); "
                "quote it if it is an id", node.start_mark)
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_NODE_START = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)
_COLLECTION_END = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _refuse(message: str, mark: Any) -> None:
    raise yaml.composer.ComposerError(None, None, message, mark)


class _EventBudget:
    """Charges parser events against the bounds (`_check_events`)."""

    def __init__(self) -> None:
        self.aliases = 0
        self.expanded = 0
        self.sizes: dict[str, int] = {}  # anchor -> expanded size of its node
        self.open: list[tuple[str | None, int]] = []  # open collections: (anchor, count at start)

    def charge(self, event: Any) -> None:
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            self.expanded += self.sizes.get(event.anchor, 1)
            if self.aliases > PROBE_MAX_YAML_ALIASES:
                _refuse(f"more than {PROBE_MAX_YAML_ALIASES} alias uses; write the values out", event.start_mark)
            if self.expanded > PROBE_MAX_YAML_NODES:
                _refuse(f"aliases expand to more than {PROBE_MAX_YAML_NODES:,} nodes (an alias bomb?); "
                        "write the values out", event.start_mark)
        elif isinstance(event, _NODE_START):
            self.expanded += 1
            if self.expanded > PROBE_MAX_YAML_NODES:
                _refuse(f"more than {PROBE_MAX_YAML_NODES:,} nodes; split the file", event.start_mark)
            if isinstance(event, yaml.ScalarEvent):
                if event.anchor is not None:
                    self.sizes[event.anchor] = 1
                return
            self.open.append((event.anchor, self.expanded))
            if len(self.open) > PROBE_MAX_DEPTH:
                _refuse(f"nested more than {PROBE_MAX_DEPTH} levels deep; flatten it", event.start_mark)
        elif isinstance(event, _COLLECTION_END):
            anchor, start = self.open.pop()
            if anchor is not None:
                self.sizes[anchor] = self.expanded - start + 1


def _check_events(text: str) -> None:
    """Refuse, from the parser's event stream and before anything is composed, what would
    exhaust the stack or memory later.

    Runs ahead of composition because libyaml's composer recurses in C (a deep file would
    crash it, not raise) and cannot be hooked. Aliases share one node, so a 651-byte "billion
    laughs" file composes instantly; it is the expanded tree (hashing, JSON, validation) that
    explodes. So every alias use is charged the expanded size of the node it points to, and
    the pass stops once the total passes `PROBE_MAX_YAML_NODES`; nesting is bounded by
    `PROBE_MAX_DEPTH`.

    Raises:
        yaml.YAMLError: a bound is passed, or the text is not valid YAML.
    """
    budget = _EventBudget()
    try:
        for event in yaml.parse(text, Loader=_BaseLoader):
            budget.charge(event)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", ""))
        for libyaml_words, ours in _LIBYAML_PROBLEMS.items():
            if libyaml_words in problem:
                _refuse(ours, getattr(exc, "problem_mark", None))
        raise


# libyaml refuses some inputs earlier than the pure parser, in its own words; the refusals
# the pure loader's path gives, in ours. It reads flow collections ahead and stops at its own
# limit (1,000 levels) before the event that passes `PROBE_MAX_DEPTH` comes out; and it
# refuses a surrogate escape ("\ud800") in the scanner, where the pure one builds a string
# that validation then refuses.
_LIBYAML_PROBLEMS = {
    "maximum nesting depth": f"nested more than {PROBE_MAX_DEPTH} levels deep; flatten it",
    "invalid Unicode character escape code": "a \\u escape names a lone surrogate or no character; "
                                             "write the character itself",
}


def _yaml_records(text: str, where: str, problems: _Problems) -> tuple[str | None, list[tuple[int, dict, dict]]]:
    """(set name, [(line, record, {field: line})]) from YAML text, with line numbers kept."""
    loader = None
    try:
        _check_events(text)
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.add(where, mark.line + 1 if mark else None, None, f"not valid YAML ({getattr(exc, 'problem', exc)})")
        return None, []
    finally:
        if loader is not None:
            loader.dispose()
    name = None
    items_node = node
    if isinstance(data, dict):
        name = data.get("name")
        if "items" not in data:
            problems.add(where, 1, "items", "missing: a probe YAML file is {name, items: [...]} or a list of items")
            return name, []
        items = data["items"]
        items_node = next(v for k, v in node.value if k.value == "items")
    else:
        items = data
    if not isinstance(items, list):
        problems.add(where, (items_node.start_mark.line + 1) if items_node is not None else 1, "items",
                     "must be a list of items")
        return name, []
    out = []
    for record, item_node in zip(items, items_node.value):
        line = item_node.start_mark.line + 1
        if not isinstance(record, dict):
            problems.add(where, line, None, f"an item must be a mapping, got {type(record).__name__}")
            continue
        if _depth(record) > PROBE_MAX_DEPTH:
            problems.add(where, line, None, f"nested more than {PROBE_MAX_DEPTH} levels deep (or refers to itself "
                         "through an alias); flatten it")
            continue
        lines = {k.value: k.start_mark.line + 1 for k, _ in item_node.value if isinstance(k, yaml.ScalarNode)}
        out.append((line, record, lines))
    return (str(name) if name is not None else None), out


class _TooLarge(ValueError):
    """An integer literal past `PROBE_MAX_INT_DIGITS` (raised from inside json.loads)."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > PROBE_MAX_INT_DIGITS:
        raise _TooLarge(f"integer with {len(text):,} digits (more than {PROBE_MAX_INT_DIGITS}); quote it if it is an id")
    return int(text)


def _depth(value: Any) -> int:
    """Nesting depth of lists/dicts, iteratively (a deep value must not blow the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d > PROBE_MAX_DEPTH:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _jsonl_records(text: str, where: str, problems: _Problems) -> list[tuple[int, dict, dict]]:
    out = []
    # JSON Lines ends records at "\n" only: str.splitlines() would also split at U+2028,
    # U+0085, ... which JSON allows unescaped inside strings, and shift every later line number.
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            record = json.loads(raw, parse_int=_bounded_int)
        except json.JSONDecodeError as exc:
            problems.add(where, number, None, f"not valid JSON ({exc.msg})")
            continue
        except _TooLarge as exc:
            problems.add(where, number, None, str(exc))
            continue
        except RecursionError:
            problems.add(where, number, None, f"nested more than {PROBE_MAX_DEPTH} levels deep; flatten it")
            continue
        if _depth(record) > PROBE_MAX_DEPTH:
            problems.add(where, number, None, f"nested more than {PROBE_MAX_DEPTH} levels deep; flatten it")
            continue
        if not isinstance(record, dict):
            problems.add(where, number, None, f"a line must be a JSON object, got {type(record).__name__}")
            continue
        out.append((number, record, {}))
    return out


def _from_paper(record: dict) -> dict:
    """Map a paper-format record onto our fields; every other field is kept in meta."""
    out: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for key, value in record.items():
        if key in PAPER_FIELDS:
            out[PAPER_FIELDS[key]] = value
        elif key in REQUIRED_FIELDS:
            out[key] = value
        else:
            meta[key] = value
    out["meta"] = meta
    return out


def _meta_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 control characters except tab and the newlines (LF, CR, NEL), which a reader sees
# as layout and the scorer handles as whitespace.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
_CONTROL_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BACKSPACE", 0x0B: "VERTICAL TAB", 0x0C: "FORM FEED",
                  0x0D: "CARRIAGE RETURN", 0x1B: "ESCAPE", 0x7F: "DELETE", 0x85: "NEXT LINE"}
# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt): characters a
# renderer draws as nothing, beyond the format (Cf) category: the combining grapheme joiner,
# Hangul fillers, Mongolian variation selectors, variation selectors, tag characters, ...
_DEFAULT_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                      (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
                      (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                      (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))


def _ignorable(ch: str) -> bool:
    """Drawn as nothing: a format character (Cf) or a default-ignorable code point."""
    code = ord(ch)
    return unicodedata.category(ch) == "Cf" or any(lo <= code <= hi for lo, hi in _DEFAULT_IGNORABLE)


def _without_ignorable(text: str) -> str:
    return "".join(ch for ch in text if not _ignorable(ch))


def _char_name(ch: str) -> str:
    name = _CONTROL_NAMES.get(ord(ch)) or unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}{' ' + name if name else ''}"


def _text_problem(fieldname: str, text: str) -> str | None:
    """Why `text` is not text a reader can see (a control character; for scored text, nothing
    visible once whitespace and zero-width / format characters are removed), or None."""
    hint = (f"; delete it, or set '{ALLOW_INVISIBLE_FIELD}: true' on the item to score it on purpose"
            if fieldname in SCORED_TEXT_FIELDS else "; delete it")
    control = _CONTROL.search(text)
    if control is not None:
        return (f"contains the control character {_char_name(control.group())} at position {control.start()} "
                f"(invisible in the file){hint}")
    if fieldname in SCORED_TEXT_FIELDS and text.strip() and not _without_ignorable(text).strip():
        shown = ", ".join(dict.fromkeys(_char_name(ch) for ch in text if _ignorable(ch)))
        return f"has no visible character (only whitespace and zero-width / format characters: {shown}){hint}"
    return None

_JSON_SCALARS = (str, int, float, bool, type(None))


def _value_problem(value: Any) -> str | None:
    """Why a field value cannot be stored and hashed as text, or None if it can."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return (f"contains a lone surrogate {_SURROGATE.search(v).group()!r} (not encodable as UTF-8); "
                        "fix the escape or the text")
        elif isinstance(v, dict):
            bad = next((k for k in v if not isinstance(k, str)), None)
            if bad is not None:
                return f"has a non-string key {bad!r}; quote the key"
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif not isinstance(v, _JSON_SCALARS):
            return (f"holds a YAML {type(v).__name__} value ({str(v)[:40]!r}); quote it so it stays text "
                    "(probe fields are strings, numbers, lists or mappings)")
    return None


def _make_item(record: dict, where: str, line: int, lines: dict, problems: _Problems, *,
               allow_invisible: bool = False) -> ProbeItem | None:
    """Validate one record; record every problem it has (not only the first); return the item
    if it has none."""
    before = len(problems.items)
    bad_keys = [k for k in record if not isinstance(k, str)]
    if bad_keys:
        problems.add(where, line, None, f"non-string field name {bad_keys[0]!r}; field names are text "
                     f"({', '.join(REQUIRED_FIELDS)}, template, meta)")
        record = {k: v for k, v in record.items() if isinstance(k, str)}
    if PAPER_MARKERS <= record.keys():
        record = _from_paper(record)
    unusable = set()  # fields with a problem already: their later checks would only repeat it
    for key, value in record.items():
        why = _value_problem(value)
        if why is not None:
            problems.add(where, lines.get(key, line), key, why)
            unusable.add(key)
    allow = record.get(ALLOW_INVISIBLE_FIELD, False)
    if not isinstance(allow, bool):
        problems.add(where, lines.get(ALLOW_INVISIBLE_FIELD, line), ALLOW_INVISIBLE_FIELD,
                     f"must be true or false, got {allow!r}")
        allow = False
    allow = allow or allow_invisible
    for key in REQUIRED_FIELDS:
        at = lines.get(key, line)
        if key in unusable:
            continue
        unusable.add(key)
        if key not in record or record[key] is None:
            problems.add(where, line, key, "missing")
        elif not isinstance(record[key], str):
            problems.add(where, at, key, f"must be a string, got {type(record[key]).__name__} {record[key]!r}")
        elif not record[key].strip():
            problems.add(where, at, key, f"empty string {record[key]!r}")
        elif key in CONTROL_CHECKED_FIELDS and not (allow and key in SCORED_TEXT_FIELDS) and (
                why := _text_problem(key, record[key])) is not None:
            problems.add(where, at, key, why)
        else:
            unusable.discard(key)
    for key in sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)):
        problems.add(where, lines.get(key, line), key, "unknown field (put extra fields under 'meta')")
    usable = {k: record[k] for k in REQUIRED_FIELDS if k not in unusable}
    split = SPLIT_ALIASES.get(usable["split"], usable["split"]) if "split" in usable else None
    if "condition" in usable and usable["condition"] not in CONDITIONS:
        problems.add(where, lines.get("condition", line), "condition",
                     f"unknown condition {record['condition']!r}; use one of {', '.join(CONDITIONS)}")
    if split is not None and split not in SPLITS:
        problems.add(where, lines.get("split", line), "split", f"unknown split {record['split']!r}; use one of {', '.join(SPLITS)}")
    if "target" in usable and "foil" in usable:
        if record["target"] == record["foil"]:
            problems.add(where, lines.get("foil", line), "foil", f"equals the target {record['target']!r}")
        elif not allow and _without_ignorable(record["target"]) == _without_ignorable(record["foil"]):
            problems.add(where, lines.get("foil", line), "foil",
                         f"differs from the target {record['target']!r} only in zero-width / format characters "
                         f"(they look the same); delete them, or set '{ALLOW_INVISIBLE_FIELD}: true' on the item")
    template = record.get("template")
    if "template" not in unusable and template is not None:
        if not isinstance(template, (str, int)) or isinstance(template, bool):
            problems.add(where, lines.get("template", line), "template", f"must be a string, got {template!r}")
        elif isinstance(template, str) and (why := _text_problem("template", template)) is not None:
            problems.add(where, lines.get("template", line), "template", why)
    meta = record.get("meta") or {}
    if "meta" not in unusable and not isinstance(meta, dict):
        problems.add(where, lines.get("meta", line), "meta", f"must be a mapping, got {type(meta).__name__}")
    if len(problems.items) > before:
        return None
    return ProbeItem(
        item_id=record["item_id"], rule=record["rule"], condition=record["condition"], split=split,
        prefix=record["prefix"], target=record["target"], foil=record["foil"],
        template=None if template is None else str(template),
        meta={str(k): _meta_value(v) for k, v in meta.items()},
    )


def _record_id(record: dict) -> str | None:
    """The record's item id when it is usable text (a duplicate is reported even on an item
    with other problems)."""
    if not all(isinstance(k, str) for k in record):
        return None
    value = record.get("item_id")
    return value if isinstance(value, str) and value.strip() and _value_problem(value) is None else None


def parse_probes(text: str, *, fmt: str, source: str = "<string>", name: str | None = None,
                 allow_invisible: bool = False) -> ProbeSet:
    """Parse probe items from text.

    Args:
        text: the file's content.
        fmt: ``"yaml"`` or ``"jsonl"`` (the paper's JSONL is detected per line).
        source: the file name used in error messages.
        name: the set's name when the text does not give one.
        allow_invisible: keep prefixes and candidates with control characters (other than tab
            and newline) or with nothing visible, for every item (one item: its
            ``allow_invisible: true`` field).

    Returns:
        The validated `ProbeSet`.

    Raises:
        ProbeFormatError: listing every problem found (file:line, field, what is wrong).
    """
    problems = _Problems()
    if fmt == "yaml":
        given, records = _yaml_records(text, source, problems)
    elif fmt == "jsonl":
        given, records = None, _jsonl_records(text, source, problems)
    else:
        raise ValueError(f"fmt must be 'yaml' or 'jsonl', got {fmt!r}")
    items: list[ProbeItem] = []
    first_line: dict[str, int] = {}
    for line, record, lines in records:
        item = _make_item(record, source, line, lines, problems, allow_invisible=allow_invisible)
        record_id = _record_id(record)  # the paper format names it item_id too
        if record_id is not None and record_id in first_line:
            problems.add(source, lines.get("item_id", line), "item_id",
                         f"duplicate id {record_id!r} (first at line {first_line[record_id]})")
            continue
        if record_id is not None:
            first_line[record_id] = line
        if item is not None:
            items.append(item)
    if not records and not problems.items:
        problems.add(source, None, None, "no probe items")
    problems.raise_if_any(source)
    return ProbeSet(name=given or name or Path(source).stem, items=tuple(items),
                    sha256=probe_set_sha256(items), source=source)


def _read_file(path: Path, *, allow_invisible: bool = False) -> ProbeSet:
    suffix = path.suffix.lower()
    if suffix not in PROBE_SUFFIXES:
        raise ProbeFormatError(f"probe file {path} has suffix {suffix!r}; use one of {', '.join(PROBE_SUFFIXES)}")
    try:
        size = path.stat().st_size
        if size > PROBE_MAX_BYTES:
            raise ProbeFormatError(f"probe file {path} is {size:,} bytes, more than {PROBE_MAX_BYTES:,}; "
                                   "split it into several files (a list of probe specs loads as one set)")
        data = path.read_bytes()
    except OSError as exc:
        raise ProbeFormatError(f"cannot read probe file {path}: {exc.strerror or exc}; check the path and "
                               "its permissions") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ProbeFormatError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                               "save the file as UTF-8") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    return parse_probes(text, fmt="jsonl" if suffix == ".jsonl" else "yaml", source=str(path), name=path.stem,
                        allow_invisible=allow_invisible)


def shipped_probe_sets(directory: Path | None = None) -> dict[str, Path]:
    """Shipped probe-set names -> files in the probes folder (`constants.probes_dir()`)."""
    folder = Path(directory) if directory is not None else probes_dir()
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in PROBE_SUFFIXES and path.name not in PROBE_NON_BATTERY_FILES:
            found.setdefault(path.stem, path)
    return found


def _resolve(spec: str | Path) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    shipped = shipped_probe_sets()
    text = str(spec)
    if text == PROBE_SET_ALL:
        if not shipped:
            raise UnknownProbeSetError(f"no shipped probe sets in {probes_dir()}; set PF_PROBES_DIR or pass a file",
                                       param="probes")
        return list(shipped.values())
    if text in shipped:
        return [shipped[text]]
    if path.suffix.lower() in PROBE_SUFFIXES or path.parent != Path("."):
        raise UnknownProbeSetError(f"probe file {spec} does not exist; check the path", param="probes")
    close = difflib.get_close_matches(text, list(shipped), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    known = ", ".join([PROBE_SET_ALL, *shipped]) or "(none)"
    raise UnknownProbeSetError(f"unknown probe set {text!r}: {hint}known sets in {probes_dir()}: {known}; "
                               "or pass a file path", param="probes")


def load_probes(spec: str | Path | ProbeSet | Sequence[str | Path | ProbeSet], *,
                allow_invisible: bool = False) -> ProbeSet:
    """Load and validate probe items from a file, a shipped set name, or several of those.

    Args:
        spec: a probe file (``.yaml``/``.yml``/``.jsonl``), a shipped set NAME
            (``probes/<NAME>.yaml|.jsonl``), ``"all"`` (every shipped set), a `ProbeSet`, or a
            list of those (merged into one set; item ids must stay unique).
        allow_invisible: score prefixes and candidates holding control characters (other
            than tab and newline) or nothing visible (only zero-width / format characters) on
            purpose; by default such items are refused, each with its file:line.

    Returns:
        One `ProbeSet`. Example::

            probes = load_probes("pronoun_gender")
            len(probes), probes.sha256[:12]

    Raises:
        ProbeFormatError: a file is malformed (every problem listed with file, line, field).
        UnknownProbeSetError: a name matches no shipped set and no file.
    """
    if isinstance(spec, ProbeSet):
        return spec
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    sets: list[ProbeSet] = []
    for one in specs:
        if isinstance(one, ProbeSet):
            sets.append(one)
        else:
            sets.extend(_read_file(p, allow_invisible=allow_invisible) for p in _resolve(one))
    if not sets:
        raise UnknownProbeSetError("no probe sets given; pass a file or a name (or 'all')", param="probes")
    if len(sets) == 1:
        return sets[0]
    seen: dict[str, str] = {}
    problems = _Problems()
    for s in sets:
        for item in s.items:
            if item.item_id in seen:
                problems.add(s.source, None, "item_id", f"duplicate id {item.item_id!r} (also in {seen[item.item_id]})")
            seen.setdefault(item.item_id, s.source)
    problems.raise_if_any(" + ".join(s.source for s in sets))
    items = tuple(item for s in sets for item in s.items)
    name = PROBE_SET_ALL if (len(specs) == 1 and str(specs[0]) == PROBE_SET_ALL) else "+".join(s.name for s in sets)
    return ProbeSet(name=name, items=items, sha256=probe_set_sha256(items), source=",".join(s.source for s in sets))
