"""Probe files: the three formats, validation that reports every problem, names, hashes."""
from __future__ import annotations

import collections
import json
import unicodedata

import pytest

from pythia_forensics.constants import CONDITIONS, SPLITS, probes_dir
from pythia_forensics.errors import ProbeFormatError, UnknownProbeSetError
from pythia_forensics.scoring.probes import ProbeItem, load_probes, parse_probes, probe_set_sha256
from paths import DATA as TEST_DATA

DATA = TEST_DATA / "probes"


def test_yaml_items_keep_every_field():
    probes = load_probes(DATA / "small.yaml")
    assert probes.name == "small" and len(probes) == 3
    first = probes.items[0]
    assert first == ProbeItem("pron.c.1", "pronoun_gender", "conflict", "train", "Mia cried because", " she", " he",
                              template="{name} cried because {pron}", meta={"cue": "Mia"})
    # a trailing space in a prefix is kept as written (the scorer moves it, not the loader)
    assert probes.items[1].prefix == "Tom laughed because " and probes.items[1].target == "he"
    assert probes.rules == ("pronoun_gender", "indefinite_article")


def test_jsonl_skips_blank_lines_and_names_set_after_file():
    probes = load_probes(DATA / "small.jsonl")
    assert [i.item_id for i in probes.items] == ["refl.c.1", "refl.a.1"]
    assert probes.items[1].meta == {"cue": "John"} and probes.name == "small"


def test_paper_battery_format_is_read_unchanged():
    probes = load_probes(DATA / "paper_battery.jsonl")
    raw = [json.loads(line) for line in (DATA / "paper_battery.jsonl").read_text().splitlines()]
    for item, rec in zip(probes.items, raw):
        assert (item.rule, item.target, item.foil, item.template) == (rec["family"], rec["correct"], rec["distractor"],
                                                                      str(rec["template_id"]))
        assert (item.condition, item.split, item.prefix, item.item_id) == (rec["condition"], rec["split"],
                                                                           rec["prefix"], rec["item_id"])
        assert item.meta == {"probe": rec["probe"], "category": rec["category"], "chance": json.dumps(rec["chance"])}


def test_malformed_yaml_reports_every_problem_with_file_line_and_field():
    with pytest.raises(ProbeFormatError) as info:
        load_probes(DATA / "malformed.yaml")
    problems = info.value.problems
    where = str(DATA / "malformed.yaml")
    assert len(problems) == 5
    assert problems[0].startswith(f"{where}:10: field 'item_id': duplicate id 'ok.1' (first at line 3)")
    assert problems[1].startswith(f"{where}:17: field 'prefix': missing")
    assert problems[2].startswith(f"{where}:28: field 'target': empty string")
    assert problems[3].startswith(f"{where}:36: field 'foil': equals the target")
    assert problems[4].startswith(f"{where}:39: field 'condition': unknown condition 'conflcit'")
    assert "\n" not in str(info.value) and "5 problem(s)" in str(info.value)


def test_malformed_jsonl_reports_bad_json_and_unknown_split_by_line():
    with pytest.raises(ProbeFormatError) as info:
        load_probes(DATA / "malformed.jsonl")
    problems = info.value.problems
    assert ":2: field 'split': unknown split 'test'" in problems[0]
    assert ":3: not valid JSON" in problems[1]


@pytest.mark.parametrize("text, fragment", [
    ("[]", "no probe items"),
    ("items: 3", "must be a list"),
    ("name: x\n", "field 'items': missing"),
    ("- [1, 2]", "an item must be a mapping"),
    ("items:\n- {item_id: 1, rule: r, condition: agree, split: train, prefix: p, target: a, foil: b}",
     "field 'item_id': must be a string"),
    ("items:\n- {item_id: a, rule: r, condition: agree, split: train, prefix: p, target: a, foil: b, colour: red}",
     "field 'colour': unknown field"),
    ("items: [unclosed", "not valid YAML"),
])
def test_other_format_problems(text, fragment):
    with pytest.raises(ProbeFormatError, match=fragment):
        parse_probes(text, fmt="yaml", source="t.yaml")


def test_error_message_is_capped_but_all_problems_are_kept():
    rows = [{"item_id": "same", "rule": "r", "condition": "agree", "split": "train", "prefix": "p",
             "target": " a", "foil": " b"}] * 30
    with pytest.raises(ProbeFormatError) as info:
        parse_probes("\n".join(json.dumps(r) for r in rows), fmt="jsonl", source="t.jsonl")
    assert len(info.value.problems) == 29 and "... and 21 more" in str(info.value)


def test_sha256_ignores_order_and_sees_every_field():
    items = list(load_probes(DATA / "small.yaml").items)
    base = probe_set_sha256(items)
    assert probe_set_sha256(items[::-1]) == base
    changed = [ProbeItem(**{**items[0].canonical(), "foil": " it"})] + items[1:]
    assert probe_set_sha256(changed) != base
    meta_changed = [ProbeItem(**{**items[0].canonical(), "meta": {"cue": "Sue"}})] + items[1:]
    assert probe_set_sha256(meta_changed) != base


def test_names_resolve_in_probes_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PF_PROBES_DIR", str(tmp_path))
    (tmp_path / "alpha.yaml").write_text((DATA / "small.yaml").read_text())
    (tmp_path / "beta.jsonl").write_text((DATA / "small.jsonl").read_text())
    (tmp_path / "lexicon.yaml").write_text("female_names: [Mia]\n")  # data, not a battery
    assert len(load_probes("alpha")) == 3 and len(load_probes("beta")) == 2
    everything = load_probes("all")
    assert everything.name == "all" and len(everything) == 5
    assert everything.sha256 == probe_set_sha256(load_probes("alpha").items + load_probes("beta").items)
    with pytest.raises(UnknownProbeSetError, match="did you mean alpha"):
        load_probes("alpah")
    with pytest.raises(UnknownProbeSetError, match="does not exist"):
        load_probes(tmp_path / "missing.yaml")


def test_merging_sets_refuses_duplicate_ids():
    with pytest.raises(ProbeFormatError, match="duplicate id 'pron.c.1'"):
        load_probes([DATA / "small.yaml", DATA / "small.yaml"])
    merged = load_probes([DATA / "small.yaml", DATA / "small.jsonl"])
    assert len(merged) == 5 and merged.name == "small+small"


def test_shipped_batteries_load_with_enough_items_per_cell():
    shipped = [p for p in probes_dir().glob("*.yaml") if p.name != "lexicon.yaml"]
    if not shipped:
        pytest.skip(f"no shipped batteries in {probes_dir()}")
    probes = load_probes("all")
    cells = collections.Counter((i.rule, i.condition, i.split) for i in probes.items)
    assert {r for r, _, _ in cells} >= {"pronoun_gender", "reflexive_gender", "indefinite_article",
                                         "subject_verb_agreement"}
    for rule in {r for r, _, _ in cells}:
        for condition in CONDITIONS:
            for split in SPLITS:
                assert cells[(rule, condition, split)] >= 48, (rule, condition, split)


def test_shipped_yaml_reads_as_the_pure_python_parser_reads_it():
    """The libyaml path (issue #17) gives the items PyYAML's pure-Python SafeLoader gives."""
    import yaml

    path = probes_dir() / "indefinite_article.yaml"
    pure = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    records = pure["items"] if isinstance(pure, dict) else pure
    loaded = load_probes(path)
    assert len(loaded.items) == len(records) > 0
    for item, rec in zip(loaded.items, records):
        assert (item.item_id, item.rule, item.condition, item.prefix, item.target, item.foil) == \
            (str(rec["item_id"]), rec["rule"], rec["condition"], rec["prefix"], rec["target"], rec["foil"])


@pytest.mark.parametrize("text, needle", [
    ("items:\n- " + "[" * 40 + "]" * 40 + "\n", "nested more than"),               # past our depth bound
    ("a: &a [1, 2]\nitems: [" + ", ".join(["*a"] * 1001) + "]\n", "alias uses"),  # past the alias budget
])
def test_bounds_are_checked_before_composition(text, needle):
    with pytest.raises(ProbeFormatError, match=needle):
        parse_probes(text, fmt="yaml", source="bounds.yaml")


# --- text a reader can see ------------------------------------------------------------------
def _item_line(**fields) -> str:
    base = {"item_id": "x.1", "rule": "pronoun_gender", "condition": "conflict", "split": "heldout",
            "prefix": "Mia cried because", "target": " she", "foil": " he"}
    return json.dumps({**base, **fields})


def _refused(tmp_path, *lines: str) -> list[str]:
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ProbeFormatError) as info:
        load_probes(path)
    assert "\n" not in str(info.value)
    return info.value.problems


# Every control character (category Cc) but tab and the newlines, enumerated from unicodedata
# rather than from the code's own table.
_EXEMPT_CONTROLS = {"\t", "\n", "\r", "\x85"}
_CONTROLS = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cc" and chr(c) not in _EXEMPT_CONTROLS]
# Every format character (Cf) plus some default-ignorable code points of other categories.
_FORMATS = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
_OTHER_INVISIBLE = ["\u034f", "\u115f", "\u3164", "\ufe0f", "\U000e0100", "\u180b"]


@pytest.mark.parametrize("fieldname", ["prefix", "target", "foil", "item_id", "rule"])
def test_every_control_character_is_refused_with_file_line_and_field(tmp_path, fieldname):
    for ch in _CONTROLS:
        text = {"prefix": f"Mia{ch} cried because", "target": f" sh{ch}e", "foil": f" {ch}he",
                "item_id": f"x{ch}1", "rule": f"pron{ch}"}[fieldname]
        problems = _refused(tmp_path, _item_line(item_id="ok.0"), _item_line(**{fieldname: text}))
        assert len(problems) == 1, (hex(ord(ch)), problems)
        assert problems[0].startswith(f"{tmp_path / 'p.jsonl'}:2: field '{fieldname}': contains the control "
                                      f"character U+{ord(ch):04X}"), problems


def test_tab_and_newlines_keep_their_handling():
    text = _item_line(prefix="Mia cried\tbecause\nshe said\r\nthat\x85", target="\tshe")
    loaded = parse_probes(text, fmt="jsonl", source="t.jsonl")
    assert loaded.items[0].prefix == "Mia cried\tbecause\nshe said\r\nthat\x85" and loaded.items[0].target == "\tshe"


@pytest.mark.parametrize("fieldname", ["prefix", "target", "foil"])
def test_text_with_nothing_visible_is_refused(tmp_path, fieldname):
    for ch in _FORMATS + _OTHER_INVISIBLE:
        problems = _refused(tmp_path, _item_line(**{fieldname: f" {ch}{ch}"}))
        assert len(problems) == 1 and f"field '{fieldname}': has no visible character" in problems[0], (hex(ord(ch)),
                                                                                                       problems)
        assert f"U+{ord(ch):04X}" in problems[0] and ":1:" in problems[0]


def test_visible_text_with_format_characters_inside_is_kept():
    # a zero-width joiner inside a word, a soft hyphen: visible text stays scoreable as written
    loaded = parse_probes(_item_line(prefix="Ma\u200dry cried be\u00adcause", target=" sh\u200ce"), fmt="jsonl")
    assert loaded.items[0].target == " sh\u200ce"


def test_a_foil_that_differs_only_in_invisible_characters_is_refused(tmp_path):
    problems = _refused(tmp_path, _item_line(target=" she", foil=" she\u200b"))
    assert len(problems) == 1 and "field 'foil': differs from the target ' she' only in zero-width" in problems[0]


def test_invisible_text_is_scored_on_purpose_with_the_field_or_the_option(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_item_line(item_id="a", prefix="Mia\x00 cried", target=" \u200b", allow_invisible=True) + "\n"
                    + _item_line(item_id="b", foil=" he\x1b") + "\n", encoding="utf-8")
    with pytest.raises(ProbeFormatError) as info:
        load_probes(path)
    assert len(info.value.problems) == 1 and ":2: field 'foil'" in info.value.problems[0]   # only item b
    loaded = load_probes(path, allow_invisible=True)
    assert [i.prefix for i in loaded.items] == ["Mia\x00 cried", "Mia cried because"]
    assert loaded.items[0].target == " \u200b" and loaded.items[1].foil == " he\x1b"
    # how the item is read is not what is scored: the flag is not part of the item or the hash
    assert "allow_invisible" not in loaded.items[0].meta
    plain = parse_probes(_item_line(item_id="a", prefix="Mia\x00 cried", target=" \u200b"), fmt="jsonl",
                         allow_invisible=True)
    assert plain.items[0] == loaded.items[0]
    bad = _refused(tmp_path, _item_line(allow_invisible="yes"))
    assert len(bad) == 1 and "field 'allow_invisible': must be true or false" in bad[0]


def test_probe_cli_refuses_invisible_text_in_one_line(tmp_path, run_cli):
    path = tmp_path / "p.jsonl"
    path.write_text(_item_line(prefix="Mia\x00cried") + "\n", encoding="utf-8")
    code, out, err = run_cli(["probe", str(tmp_path / "no-model"), "--probes", str(path)])
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "control character U+0000 NUL" in lines[0] and f"{path}:1" in lines[0], err


# --- every problem of an item (#35) ---------------------------------------------------------
def test_every_problem_of_one_item_is_reported(tmp_path):
    problems = _refused(tmp_path, _item_line(item_id="dup"),
                        _item_line(item_id="dup", condition="conflcit", split="test", foil=" she", colour="red"),
                        _item_line(item_id="z", prefix="", target=3))
    where = tmp_path / "p.jsonl"
    assert sorted(problems) == sorted([
        f"{where}:2: field 'item_id': duplicate id 'dup' (first at line 1)",
        f"{where}:2: field 'colour': unknown field (put extra fields under 'meta')",
        f"{where}:2: field 'condition': unknown condition 'conflcit'; use one of {', '.join(CONDITIONS)}",
        f"{where}:2: field 'split': unknown split 'test'; use one of {', '.join(SPLITS)}",
        f"{where}:2: field 'foil': equals the target ' she'",
        f"{where}:3: field 'prefix': empty string ''",
        f"{where}:3: field 'target': must be a string, got int 3",
    ]), problems


def test_the_format_pointer_is_documentation_an_installed_user_has(tmp_path, run_cli):
    from importlib.metadata import metadata

    problems_message = ""
    try:
        parse_probes(_item_line(split="test"), fmt="jsonl", source="t.jsonl")
    except ProbeFormatError as exc:
        problems_message = str(exc)
    assert "docs/ARCHITECTURE.md" not in problems_message
    assert "README's 'Probe format' section" in problems_message and "pythia-forensics probe --help" in problems_message
    # both places exist where the wheel is installed: the README is the package's description,
    # and `probe --help` describes the format
    assert "## Probe format" in metadata("pythia-forensics")["Description"]
    code, out, _ = run_cli(["probe", "--help"])
    assert code == 0 and "Probe format" in out and "allow_invisible" in out
