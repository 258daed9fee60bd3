"""Support counters: known-answer streams, a brute-force reference, every input format, the
.bin/.idx path against text, unmatched-cue reports, and the mini corpus's ground truth."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from pythia_forensics.constants import probes_dir
from pythia_forensics.errors import ConfigError, CorpusError, TokenizationError
from pythia_forensics.corpus.indexed import IndexedDatasetWriter
from pythia_forensics.corpus.support import (
    CompiledFrame,
    CompiledRule,
    SupportCueWarning,
    TokenForm,
    Vocab,
    compile_rules,
    count_support,
    count_token_stream,
    load_rules,
    load_tokenizer,
)
from pythia_forensics.corpus.throughput import benchmark, synthetic_stream

# --- synthetic vocabulary: ids are "words"; 9 is a word-internal piece -----------------------
V = 20
STARTS = np.ones(V, bool)
ENDS = np.ones(V, bool)
STARTS[9] = False  # token 9 continues the previous word ("s", "ed", ...)
ENDS[10] = False  # token 10 is a word start that runs into the next token
VOCAB = Vocab(V, STARTS, ENDS)
CUE, CUE2A, CUE2B, TGT, COMP, FILL = 3, 4, 5, 7, 8, 1


def rule(direction="after", name="r"):
    return CompiledRule(
        name, direction,
        cues=(TokenForm("c", " c", (CUE,)), TokenForm("cc", " cc", (CUE2A, CUE2B))),
        targets=(TokenForm("t", " t", (TGT,)),),
        competitors=(TokenForm("p", " p", (COMP,)),),
    )


def count(docs, rules, **kw):
    tokens = np.array([t for d in docs for t in d], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum([len(d) for d in docs])))
    kw.setdefault("window_tokens", 10**9)
    return count_token_stream(tokens, offsets, rules, VOCAB, **kw)


def totals(res, name="r"):
    c = res[name]
    return int(c["cues"].sum()), int(c["rule_wins"].sum()), int(c["prior_wins"].sum())


@pytest.mark.parametrize(
    "docs, expected",
    [
        ([[CUE, FILL, FILL, TGT, COMP]], (1, 1, 0)),  # first choice after the cue wins
        ([[CUE, COMP, TGT]], (1, 0, 1)),
        ([[CUE] + [FILL] * 15 + [TGT]], (1, 1, 0)),  # distance 16 = W: inside
        ([[CUE] + [FILL] * 16 + [TGT]], (1, 0, 0)),  # distance 17: no event
        ([[CUE, FILL], [TGT]], (1, 0, 0)),  # never across a document boundary
        ([[CUE2A, CUE2B, FILL, COMP]], (1, 0, 1)),  # two-token cue
        ([[CUE2A, FILL, CUE2B, TGT]], (0, 0, 0)),  # broken two-token cue is no cue
        ([[CUE, CUE, COMP]], (2, 0, 2)),  # each cue occurrence is an event
        ([[CUE, 9, TGT]], (0, 0, 0)),  # cue followed by a word-internal piece: not the word
        ([[CUE, TGT, 9]], (1, 0, 0)),  # target inside a longer word: not the target
        ([[TGT, CUE]], (1, 0, 0)),  # "after" never looks back
        ([], (0, 0, 0)),
    ],
)
def test_known_answers_after(docs, expected):
    assert totals(count(docs, [rule()])) == expected


@pytest.mark.parametrize(
    "docs, expected",
    [
        ([[TGT, CUE]], (1, 1, 0)),
        ([[COMP, FILL, TGT, FILL, CUE]], (1, 1, 0)),  # the nearest before wins
        ([[TGT, FILL, COMP, CUE]], (1, 0, 1)),
        ([[TGT] + [FILL] * 16 + [CUE]], (1, 0, 0)),
        ([[TGT], [CUE]], (1, 0, 0)),
        ([[CUE, TGT]], (1, 0, 0)),
    ],
)
def test_known_answers_before(docs, expected):
    assert totals(count(docs, [rule("before")])) == expected


def test_bigram_is_window_one_and_windows_split_by_offset():
    docs = [[CUE, TGT], [CUE, FILL, TGT], [CUE, COMP]]
    assert totals(count(docs, [rule()], window=1)) == (3, 1, 1)
    # cues at offsets 0, 2, 5; stream windows [0,3) [3,6) [6,7); an event goes to its cue's window
    res = count(docs, [rule()], window_tokens=3)
    assert list(res["r"]["cues"]) == [2, 1, 0]
    assert list(res["r"]["rule_wins"]) == [2, 0, 0]
    assert list(res["r"]["prior_wins"]) == [0, 1, 0]


def test_no_space_form_needs_a_word_boundary_and_counts_once():
    r = CompiledRule("r", "after", (TokenForm("c", " c", (11, 3)), TokenForm("c", "c", (3,))),
                     (TokenForm("t", " t", (TGT,)),), (TokenForm("p", " p", (COMP,)),))
    assert totals(count([[3, TGT]], [r])) == (1, 1, 0)  # document start
    assert totals(count([[10, 3, TGT]], [r])) == (0, 0, 0)  # glued to the previous word
    # " c" as two tokens (a bare space, then "c"): one occurrence, not two
    assert totals(count([[11, 3, TGT]], [r])) == (1, 1, 0)


# --- brute-force reference ----------------------------------------------------------------------
def brute_force(docs, rules, vocab, window):
    """A plain per-position loop over each document, written from the event definition; frames
    by a depth-first search over placements of their words (adjacent unless "..." stands
    between). Returns {rule: (cues, wins, losses)} and, per frame, {(rule, frame): (events, wins, losses)}."""
    out = {}
    for r in rules:
        cues = wins = losses = 0
        framed = {fr.name: [0, 0, 0] for fr in r.frames}
        for doc in docs:
            n = len(doc)
            seen = {}  # forms -> occurrences in this document (frames ask again per event)

            def occurrences(forms):
                if forms not in seen:
                    seen[forms] = occurrences_of(forms)
                return seen[forms]

            def occurrences_of(forms):
                found = set()
                for f in forms:
                    L = len(f.ids)
                    for s in range(n - L + 1):
                        if tuple(doc[s : s + L]) != f.ids:
                            continue
                        e = s + L - 1
                        if e + 1 < n and not vocab.starts_nonword[doc[e + 1]]:
                            continue
                        if not f.leading_space and s > 0 and not vocab.ends_nonword[doc[s - 1]]:
                            continue
                        found.add((s, e))
                return [x for x in found if not any(y != x and y[0] <= x[0] and x[1] <= y[1] for y in found)]

            def in_frame(elements, cue, choice):
                def place(i, prev_end, gap):
                    if i == len(elements):
                        return True
                    e = elements[i]
                    if e == "...":
                        return place(i + 1, prev_end, True)
                    spans = [cue] if e == "<cue>" else [choice] if e == "<candidate>" else occurrences(e)
                    for s, t in spans:
                        if (prev_end is None or s == prev_end + 1 or (gap and s > prev_end)) and place(i + 1, t, False):
                            return True
                    return False

                return place(0, None, False)

            choices = [(s, e, 1) for s, e in occurrences(r.targets)] + [(s, e, 0) for s, e in occurrences(r.competitors)]
            for cs, ce in occurrences(r.cues):
                cues += 1
                if r.direction == "after":
                    near = [(s, -(e - s), lab, (s, e)) for s, e, lab in choices if ce + 1 <= s <= ce + window]
                else:
                    near = [(-e, -(e - s), lab, (s, e)) for s, e, lab in choices if cs - window <= e <= cs - 1]
                pick = min(near) if near else None
                if pick is not None:
                    wins += pick[2] == 1
                    losses += pick[2] == 0
                    for fr in r.frames:
                        if in_frame(fr.elements, (cs, ce), pick[3]):
                            framed[fr.name][0] += 1
                            framed[fr.name][1 + (pick[2] == 0)] += 1
        out[r.name] = (cues, wins, losses)
        out.update({(r.name, k): tuple(v) for k, v in framed.items()})
    return out


# seeds 0-3 in the fast suite, all eight in `make test` (each ~1 s: hundreds of 7-token blocks)
@pytest.mark.parametrize("seed", [*range(4), *(pytest.param(s, marks=pytest.mark.slow) for s in range(4, 8))])
def test_vectorised_counter_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    vocab = Vocab(12, rng.random(12) < 0.7, rng.random(12) < 0.7)

    def forms(k):
        out = []
        for _ in range(k):
            ids = tuple(int(x) for x in rng.integers(2, 12, size=rng.integers(1, 3)))
            out.append(TokenForm("w", " w" if rng.random() < 0.5 else "w", ids))
        return tuple(out)

    def frame(direction, k):
        """A random frame: words before, between (with or without gaps) and after the anchors."""
        between = [forms(1) if rng.random() < 0.7 else "..." for _ in range(rng.integers(0, 4))]
        outside = [forms(1) for _ in range(rng.integers(0, 2))]
        first, second = ("<cue>", "<candidate>") if direction == "after" else ("<candidate>", "<cue>")
        elements = outside + [first] + between + [second] if k % 2 else [first] + between + [second] + outside
        return CompiledFrame(f"f{k}", tuple(elements))

    def rule_forms(i):
        direction = ("after", "before")[i % 2]
        cues, tgts = forms(3), forms(2)
        comps = tuple(f for f in forms(3) if f.ids not in {t.ids for t in tgts})  # a form is one side only
        return CompiledRule(f"r{i}", direction, cues, tgts, comps, frames=tuple(frame(direction, k) for k in range(3)))

    rules = [rule_forms(i) for i in range(3)]
    docs = [list(rng.integers(0, 12, size=rng.integers(0, 40))) for _ in range(150)]
    window = int(rng.integers(1, 8))
    tokens = np.array([t for d in docs for t in d], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum([len(d) for d in docs])))
    # tiny blocks: every block edge and halo is exercised
    got = count_token_stream(tokens, offsets, rules, vocab, window=window, window_tokens=10**9, block_tokens=7)
    want = brute_force(docs, rules, vocab, window)
    n_framed = 0
    for r in rules:
        assert totals(got, r.name) == want[r.name], r
        for fr in r.frames:
            c = got[r.name]["frames"][fr.name]
            counted = (int(c["cues"].sum()), int(c["rule_wins"].sum()), int(c["prior_wins"].sum()))
            assert counted == want[(r.name, fr.name)], (r.name, fr)
            n_framed += counted[0]
    assert n_framed > 0  # some events stood in some frame: the frame comparison meant something


def test_pythia_style_packed_stream_splits_documents_at_eod_and_items(tmp_path):
    """Pythia's stored items are fixed-length windows over EOD-joined documents: with
    `eod_id`, events never cross an EOD nor an item edge (the model never saw across either)."""
    rng = np.random.default_rng(0)
    eod, length = 0, 37
    docs = [list(rng.choice([CUE, TGT, COMP, FILL, CUE2A, CUE2B], size=rng.integers(1, 30))) for _ in range(300)]
    flat = [int(t) for d in docs for t in d + [eod]]
    items = [flat[i:i + length] for i in range(0, len(flat), length)]
    with IndexedDatasetWriter(tmp_path / "document", dtype=np.uint16) as w:
        for item in items:
            w.add_document(item)
    from pythia_forensics.corpus.indexed import IndexedDataset

    ds = IndexedDataset(tmp_path / "document")
    segments = []
    for item in items:  # split each item at its EOD tokens, by hand
        cur = []
        for t in item:
            cur.append(t)
            if t == eod:
                segments.append(cur)
                cur = []
        segments.append(cur)
    want = brute_force(segments, [rule()], VOCAB, 16)["r"]
    got = count_token_stream(ds.tokens, ds.pointers, [rule()], VOCAB, offset_unit=2, eod_id=eod, block_tokens=50,
                             window_tokens=10**9)
    assert totals(got) == want and want[1] > 0 and want[2] > 0
    joined = count_token_stream(ds.tokens, ds.pointers, [rule()], VOCAB, offset_unit=2, block_tokens=50,
                                window_tokens=10**9)
    assert totals(joined) != want  # without eod_id events do cross the EOD: the option matters here


# --- real tokenizers, text formats and the .bin/.idx stream ------------------------------------------
def lexicon():
    return yaml.safe_load((probes_dir() / "lexicon.yaml").read_text())


def test_shipped_rules_reference_the_lexicon():
    lex = lexicon()
    rules = {r.name: r for r in load_rules("all")}
    assert set(rules) == {"pronoun_gender", "reflexive_gender", "indefinite_article", "subject_verb_agreement"}
    pg = rules["pronoun_gender"]
    assert pg.cues[0].words == tuple(lex["female_names"]) and pg.cues[0].name == "female_names"
    assert pg.targets[0].words == (lex["forms"]["pronoun_gender"]["female"],)
    assert pg.competitors[0].words == (lex["forms"]["pronoun_gender"]["male"],)
    assert rules["indefinite_article"].direction == "before"
    assert rules["subject_verb_agreement"].cues[0].words == tuple(lex["plural_nouns"])


def test_inline_words_and_mixed_classes(tmp_path, tiny_tokenizer):
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({
        "name": "mine",
        "cues": [{"lexicon": "female_names"}, {"words": ["girl", "woman"], "name": "feminine_nouns"}],
        "targets": ["she", "She"],
        "competitors": "he",
    }))
    (r,) = load_rules(f)
    assert [c.name for c in r.cues] == ["female_names", "feminine_nouns"]
    assert r.targets[0].words == ("she", "She") and r.competitors[0].words == ("he",)
    p = tmp_path / "c.txt"
    p.write_text("The girl cried. She was sad.\nThe woman said he left.\n")
    assert overall(count_support(p, f, tokenizer=tiny_tokenizer, progress=False))["mine"] == (2, 1, 1)


def test_truncating_tokenizer_is_not_allowed_to_cut_documents(tmp_path, tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    from tokenizers import Tokenizer

    cut = Tokenizer.from_str(tok.to_str())
    cut.enable_truncation(max_length=4)
    p = tmp_path / "c.txt"
    p.write_text("The dogs by the river were happy.\n")
    assert overall(count_support(p, "subject_verb_agreement", tokenizer=cut, progress=False))["subject_verb_agreement"] == (1, 1, 0)
    assert cut.truncation is not None  # the caller's object is untouched


def test_rule_file_errors_are_collected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rules": [
        {"name": "a", "cues": {"lexicon": "female_name"}, "targets": ["she"], "competitors": ["he"]},
        {"name": "b", "direction": "sideways", "cues": ["x"], "targets": ["y"]},
    ]}))
    with pytest.raises(ConfigError) as exc:
        load_rules(bad)
    msg = str(exc.value)
    assert "did you mean female_names" in msg and "sideways" in msg and "missing `competitors`" in msg
    with pytest.raises(ConfigError, match="did you mean pronoun_gender"):
        load_rules("pronoun_gendr")


CORPUS_LINES = [
    "Mia cried because she was sad.",
    "Sue cried because he was sad.",
    "Yesterday Anna said that she was tired and he left.",
    "Tom cried because he was sad.",
    "Ella hurt herself. Lily saw himself in the mirror.",
    "We saw an owl and a egg today. I ate an apple.",
    "The dogs by the river were happy. The cats by the lake was tired.",
    "The dog was happy, and the birds were loud.",
    "Mia.",
    "she said Mia" + " and" * 20 + " he",  # he is 21 tokens away: no event for W = 16
]


def write_text_inputs(tmp_path, lines, tokenizer):
    """The same documents in every supported input format."""
    paths = {}
    paths["txt"] = tmp_path / "c.txt"
    paths["txt"].write_text("\n".join(lines) + "\n")
    paths["jsonl"] = tmp_path / "c.jsonl"
    paths["jsonl"].write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(lines)))
    paths["parquet"] = tmp_path / "c.parquet"
    pd.DataFrame({"body": lines}).to_parquet(paths["parquet"])
    import datasets

    paths["datasets"] = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": lines}).save_to_disk(str(paths["datasets"]))
    tok = load_tokenizer(tokenizer)
    with IndexedDatasetWriter(tmp_path / "tokens", dtype=np.uint16) as w:
        for line in lines:
            w.add_document(tok.encode(line, add_special_tokens=False).ids)
    paths["bin"] = tmp_path / "tokens"
    return paths


def overall(frame, frame_name="corpus"):
    o = frame[(frame.scope == "overall") & (frame.frame == frame_name)].set_index("rule")
    return {r: (int(o.loc[r, "cues"]), int(o.loc[r, "rule_wins"]), int(o.loc[r, "prior_wins"])) for r in o.index}


@pytest.mark.parametrize("tok_kind", ["tiny", "neox"])
def test_every_format_gives_the_same_counts_as_bin_idx(tmp_path, tiny_tokenizer, tok_kind):
    if tok_kind == "neox":
        from tinymodels import neox_tokenizer

        tokenizer = neox_tokenizer()
    else:
        tokenizer = tiny_tokenizer
    paths = write_text_inputs(tmp_path, CORPUS_LINES, tokenizer)
    frames = {}
    for kind, p in paths.items():
        frames[kind] = count_support(p, "all", tokenizer=tokenizer, progress=False,
                                     text_field="body" if kind == "parquet" else "text", window_tokens=40)
    ref = frames["bin"]
    for kind, f in frames.items():
        pd.testing.assert_frame_equal(f.reset_index(drop=True), ref.reset_index(drop=True), obj=kind)
    got = overall(ref)
    # counted by hand, independent of the tokenizer (each event here is well inside W tokens)
    # cues Mia, Sue, Anna, Ella, Lily, "Mia.", Mia (last line); she after Mia and Anna, he after Sue
    assert got["pronoun_gender"] == (7, 2, 1)
    assert got["reflexive_gender"] == (7, 1, 1)  # Ella -> herself, Lily -> himself
    assert got["indefinite_article"] == (3, 2, 1)  # owl<-an, egg<-a, apple<-an
    assert got["subject_verb_agreement"] == (3, 2, 1)  # dogs->were, cats->was, birds->were


@pytest.mark.parametrize("mode", ["windowed", "bigram"])
def test_no_events_is_an_empty_ratio_not_parity(tmp_path, tiny_tokenizer, run_cli, mode):
    p = tmp_path / "c.txt"
    p.write_text("Mia cried.\nThe dogs were happy.\n")  # a pronoun cue, no she/he at all
    f = count_support(p, "all", tokenizer=tiny_tokenizer, mode=mode, progress=False)
    pg = f[(f.rule == "pronoun_gender") & (f.frame == "corpus") & (f.scope == "overall")].iloc[0]
    assert pg.cues == 1 and pg.rule_wins == pg.prior_wins == 0
    assert np.isnan(pg.ratio) and pg.note == "no events"
    sva = f[(f.rule == "subject_verb_agreement") & (f.frame == "corpus") & (f.scope == "overall")].iloc[0]
    assert sva.ratio == 2.0 and sva.note == ""  # (1 + 1) / (0 + 1): events give a number
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    code, out, _ = run_cli(["support", str(p), "--tokenizer", str(tok_dir), "--mode", mode, "--rules", "pronoun_gender"])
    assert code == 0 and "no events" in out and "1.000" not in out


def test_window_reaches_exactly_w_tokens(tmp_path, tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    line = "Mia" + " the" * 20 + " she"
    ids = tok.encode(line, add_special_tokens=False).ids
    mia_end = len(tok.encode("Mia", add_special_tokens=False).ids) - 1
    she_at = len(ids) - len(tok.encode(" she", add_special_tokens=False).ids)
    dist = she_at - mia_end
    p = tmp_path / "w.txt"
    p.write_text(line + "\n")
    for w, want in ((dist, 1), (dist - 1, 0)):
        f = count_support(p, "pronoun_gender", tokenizer=tiny_tokenizer, window=w, progress=False)
        assert overall(f)["pronoun_gender"] == (1, want, 0)


def test_step_windows_and_token_limit(tmp_path, tiny_tokenizer):
    paths = write_text_inputs(tmp_path, CORPUS_LINES * 4, tiny_tokenizer)
    f = count_support(paths["bin"], "pronoun_gender", tokenizer=tiny_tokenizer, tokens_per_step=16,
                      window_steps=5, progress=False)
    f = f[f.frame == "corpus"]
    win = f[f.scope == "window"]
    assert (win.window_start_step == np.arange(len(win)) * 5).all()
    assert win.rule_wins.sum() == f[f.scope == "overall"].rule_wins.iloc[0]
    # recount window by window on slices of the stream
    from pythia_forensics.corpus.indexed import IndexedDataset

    ds = IndexedDataset(paths["bin"])
    assert int(f[f.scope == "overall"].token_end.iloc[0]) == ds.n_tokens
    assert win.window_end_step.iloc[-1] == -(-ds.n_tokens // 16)
    limit = 16 * 10
    g = count_support(paths["bin"], "pronoun_gender", tokenizer=tiny_tokenizer, tokens_per_step=16,
                      window_steps=5, token_limit=limit, progress=False)
    gw = g[(g.scope == "window") & (g.frame == "corpus")]
    assert len(gw) == 2
    assert list(gw.rule_wins) == list(win.rule_wins[:2]) and list(gw.prior_wins) == list(win.prior_wins[:2])
    with pytest.raises(ConfigError, match="needs tokens_per_step"):
        count_support(paths["bin"], "pronoun_gender", tokenizer=tiny_tokenizer, window_steps=5, progress=False)


@pytest.mark.parametrize("kind", ["bin", "jsonl"])
def test_interrupted_count_resumes(tmp_path, tiny_tokenizer, monkeypatch, kind):
    import pythia_forensics.corpus.counting as counting
    import pythia_forensics.corpus.streams as streams

    monkeypatch.setattr(streams, "SUPPORT_TEXT_BATCH", 16)  # many text blocks from few documents
    paths = write_text_inputs(tmp_path, CORPUS_LINES * 60, tiny_tokenizer)
    opts = dict(tokenizer=tiny_tokenizer, tokens_per_step=64, window_steps=10, block_tokens=1000, progress=False)
    positions = []
    full = count_support(paths[kind], "all", on_block=positions.append, **opts)
    assert len(positions) > 3
    monkeypatch.setattr(counting, "SUPPORT_STATE_EVERY_S", 0.0)  # save after every block

    def interrupt_third(position):
        if position == positions[2]:
            raise RuntimeError("simulated interrupt")

    state = tmp_path / "state.json"
    with pytest.raises(RuntimeError, match="simulated interrupt"):
        count_support(paths[kind], "all", state_file=state, on_block=interrupt_third, **opts)
    assert state.is_file()
    resumed_at = []
    resumed = count_support(paths[kind], "all", state_file=state, on_block=resumed_at.append, **opts)
    pd.testing.assert_frame_equal(resumed, full)
    assert resumed_at == positions[3:]  # the three saved blocks were not counted again
    assert not state.exists()


def test_sequence_start_name_split_in_two_tokens_is_matched():
    from tinymodels import neox_tokenizer

    tok = neox_tokenizer()
    assert len(tok("Sue", add_special_tokens=False)["input_ids"]) == 2  # the case this guards
    (compiled,), _ = compile_rules(load_rules("pronoun_gender"), tok)
    assert any(f.text == "Sue" and len(f.ids) == 2 for f in compiled.cues)
    assert not compiled.unmatched


# --- unmatched cues are reported by name ------------------------------------------------------------------
def word_level_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_cue_class_that_tokenizes_to_nothing_is_reported_by_name(tmp_path):
    tok = word_level_tokenizer(["she", "he", "cried", "because"])  # no girl's name in it
    p = tmp_path / "c.txt"
    p.write_text("Mia cried because she\n")
    with pytest.warns(SupportCueWarning, match="female_names") as rec:
        f = count_support(p, "pronoun_gender", tokenizer=tok, progress=False)
    msg = str(rec[0].message)
    assert "'Mia'" in msg and "every word of cue class 'female_names'" in msg
    assert "female_names" in f.unmatched.iloc[0]
    assert any("every word of cue class 'female_names'" in u for u in f.attrs["unmatched"])
    with pytest.raises(TokenizationError, match="female_names"):
        count_support(p, "pronoun_gender", tokenizer=tok, progress=False, strict=True)


def test_single_token_counter_reports_multi_token_words(tiny_tokenizer):
    (compiled,), _ = compile_rules(load_rules("pronoun_gender"), tiny_tokenizer, multi_token=False)
    tok = load_tokenizer(tiny_tokenizer)
    multi = {w for w in lexicon()["female_names"]
             if all(len(tok.encode(t, add_special_tokens=False).ids) > 1 for t in (" " + w, w))}
    assert multi  # the tiny BPE splits most names
    reported = {u.word for u in compiled.unmatched if u.word and u.role == "cues"}
    assert reported == multi
    assert all("needs" in u.reason for u in compiled.unmatched if u.word)
    # frame words are reported the same way, under their own role
    frame_words = {w for e in load_rules("pronoun_gender")[0].frames[0].elements if not isinstance(e, str)
                   for w in e.words}
    multi_frame = {w for w in frame_words if all(len(tok.encode(t, add_special_tokens=False).ids) > 1
                                                 for t in (" " + w, w))}
    assert {u.word for u in compiled.unmatched if u.role == "frames" and u.word} == multi_frame


def test_cli(tmp_path, tiny_tokenizer, capsys):
    from pythia_forensics.cli import main

    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS_LINES))
    out = tmp_path / "out" / "support.csv"
    with pytest.raises(SystemExit) as exc:
        main(["support", str(p), "--rules", "pronoun_gender", "--tokenizer", str(tok_dir), "--out", str(out)])
    assert exc.value.code == 0
    table = pd.read_csv(out)
    assert overall(table)["pronoun_gender"] == (7, 2, 1)
    assert "pronoun_gender" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["support", str(p), "--rules", "pronoun_gender"])
    assert exc.value.code == 2
    assert "error: --tokenizer: a tokenizer is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["support", str(tmp_path / "nope.txt"), "--tokenizer", str(tok_dir)])
    assert exc.value.code == 2


def test_bad_inputs(tmp_path, tiny_tokenizer):
    p = tmp_path / "c.jsonl"
    p.write_text('{"body": "x"}\n')
    with pytest.raises(CorpusError, match="no field 'text'") as exc:
        count_support(p, "pronoun_gender", tokenizer=tiny_tokenizer, progress=False)
    # the library speaks of the value; the CLI adds the flag (test_cli_names_the_flag)
    assert exc.value.param == "text_field" and "--" not in str(exc.value)
    with pytest.raises(ConfigError, match="mode"):
        count_support(p, "pronoun_gender", tokenizer=tiny_tokenizer, mode="trigram", progress=False)


def test_cli_names_the_flag_of_a_bad_text_field(tmp_path, tiny_tokenizer, run_cli):
    tok_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tok_dir)
    p = tmp_path / "c.jsonl"
    p.write_text('{"body": "x"}\n')
    code, _, err = run_cli(["support", str(p), "--tokenizer", str(tok_dir), "--text-field", "txt"])
    assert code == 2 and "error: --text-field: " in err and "no field 'txt'" in err


def test_rule_reads_its_own_lexicon_through_the_one_reader(tmp_path, tiny_tokenizer):
    """A rule's `lexicon:` file is read by corpus.lexicon.load_lexicon (a file with word
    classes and forms only, no generator templates, is a valid lexicon)."""
    (tmp_path / "lex.yaml").write_text(yaml.safe_dump({"girls": ["Mia", "Sue"], "forms": {"p": {"f": "she", "m": "he"}}}))
    rule_file = tmp_path / "r.yaml"
    rule_file.write_text(yaml.safe_dump({"name": "mine", "lexicon": "lex.yaml", "cues": {"lexicon": "girls"},
                                         "targets": {"lexicon": "forms.p.f"}, "competitors": {"lexicon": "forms.p.m"}}))
    (r,) = load_rules(rule_file)
    assert r.cues[0].words == ("Mia", "Sue") and r.targets[0].words == ("she",) and r.competitors[0].words == ("he",)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "b", "lexicon": "missing.yaml", "cues": {"lexicon": "girls"},
                                   "targets": ["she"], "competitors": ["he"]}))
    with pytest.raises(ConfigError, match="lexicon file not found"):
        load_rules(bad)


# --- the mini corpus: counts equal the generator's recorded ground truth ---------------------------------
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """The small mini corpus (120 steps, 25-step windows), built once for this module's tests."""
    return make_mini_corpus(tmp_path_factory.mktemp("small") / "corpus", demo=False)


def test_mini_corpus_counts_equal_ground_truth(small_corpus):
    # 120 steps in 25-step windows: the last window is partial
    truth = pd.read_csv(small_corpus / "ground_truth.csv")
    frame = count_support(small_corpus, "all", progress=False)
    assert_counts_equal_ground_truth(frame, truth)


def assert_counts_equal_ground_truth(frame, truth):
    """Window by window: corpus-wide counts equal the generator's events, and the `conflict`
    frame's counts equal its conflict-frame sentences' events."""
    keys = ["rule", "window_start_step", "window_end_step"]
    for frame_name, cols in (("corpus", ("rule_wins", "prior_wins")),
                             ("conflict", ("conflict_rule_wins", "conflict_prior_wins"))):
        got = frame[(frame.scope == "window") & (frame.frame == frame_name)]
        got = got[keys + ["rule_wins", "prior_wins"]].rename(columns=dict(zip(("rule_wins", "prior_wins"), cols)))
        merged = truth[keys + list(cols)].merge(got, on=keys, how="outer", suffixes=("_truth", "_counted"),
                                                indicator=True)
        assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
        for col in cols:
            assert (merged[f"{col}_truth"] == merged[f"{col}_counted"]).all(), (frame_name, merged)
    assert set(truth.rule) == {"pronoun_gender", "reflexive_gender", "indefinite_article", "subject_verb_agreement"}
    assert truth.prior_wins.sum() > 0 and truth.rule_wins.sum() > 0
    # every rule's conflict frame holds events, both kinds occur, and the frame is not the corpus
    per_rule = truth.groupby("rule").sum(numeric_only=True)
    assert (per_rule.conflict_rule_wins + per_rule.conflict_prior_wins > 0).all(), per_rule
    assert per_rule.conflict_rule_wins.sum() > 0 and per_rule.conflict_prior_wins.sum() > 0
    assert (per_rule.conflict_rule_wins < per_rule.rule_wins).all()


def test_benchmark_counts_what_an_independent_count_finds():
    """The benchmark times the real counters: the events it reports for each mode equal a
    brute-force count of the same synthetic stream (a stub or a skipped mode would not)."""
    n = 20_000
    tokens, offsets, rules, vocab, battery = synthetic_stream(n, seed=3)
    res = benchmark(n, seed=3, window=16)
    docs = [tokens[a:b].tolist() for a, b in zip(offsets[:-1], list(offsets[1:-1]) + [n])]
    want = brute_force(docs, rules, vocab, 16)
    assert res["modes"]["windowed"]["events"] == sum(want[r.name][1] + want[r.name][2] for r in rules) > 0
    assert res["modes"]["in-frame"]["events"] == sum(want[(r.name, "frame")][0] for r in rules)
    bigram = brute_force(docs, rules, vocab, 1)
    assert res["modes"]["bigram"]["events"] == sum(bigram[r.name][1] + bigram[r.name][2] for r in rules)
    seqs = sum(1 for d in docs for p in battery for i in range(len(d) - len(p) + 1) if tuple(d[i:i + len(p)]) == p)
    assert res["modes"]["battery"]["events"] == seqs > 0
    assert set(res["modes"]) == {"windowed", "bigram", "in-frame", "battery"}


# --- the mini corpus, small and demo-sized: battery counts and in-frame ground truth ------------
def make_mini_corpus(out, *, demo: bool):
    from pythia_forensics.experiments.mini import corpus as corpus_mod
    from pythia_forensics.experiments.mini.config import CorpusConfig, SuiteConfig, TrainConfig
    from pythia_forensics.experiments.mini.tokenizer import build_tokenizer

    if demo:  # the demo's own corpus (same knobs, seed and size as `make demo`)
        cfg = SuiteConfig()
        config, train = cfg.corpus, cfg.train
    else:
        config, train = CorpusConfig(window_steps=25), TrainConfig(steps=120, batch_size=8, seq_len=32)
    records = corpus_mod.sample_records(config, n_sentences=corpus_mod.estimate_sentences(train))
    return corpus_mod.write_corpus(records, out, tokenizer=build_tokenizer(), config=config, train=train)


def reference_battery(corpus):
    """The paper's battery bigram counter written from its description, independently of the
    module: the shipped batteries read as plain YAML (libyaml, not the package's probe parser),
    plain Python n-gram counts per document, per step window, over the trained tokens."""
    from collections import Counter

    from transformers import PreTrainedTokenizerFast

    from pythia_forensics.corpus.indexed import IndexedDataset

    meta = json.loads((corpus / "corpus.json").read_text())
    tok = PreTrainedTokenizerFast.from_pretrained(corpus)
    width = meta["tokens_per_step"] * meta["window_steps"]
    limit = meta["train_tokens"]
    cells = {}
    batteries = sorted(p for p in probes_dir().glob("*.yaml") if p.name != "lexicon.yaml")
    assert len(batteries) == 4
    for path in batteries:
        for item in yaml.load(path.read_text(), Loader=yaml.CSafeLoader)["items"]:
            last = item["prefix"].split()[-1]
            cell = cells.setdefault((item["rule"], item["condition"]), (set(), set()))
            cell[0].add(tuple(tok(" " + last + item["target"], add_special_tokens=False)["input_ids"]))
            cell[1].add(tuple(tok(" " + last + item["foil"], add_special_tokens=False)["input_ids"]))
    lengths = {len(p) for t, f in cells.values() for p in t | f}
    wanted = {p for t, f in cells.values() for p in t | f}
    found = Counter()  # (pattern, window) -> count
    ds = IndexedDataset(corpus / "tokens")
    offset = 0
    for d in range(len(ds)):
        doc = ds[d].tolist()
        for L in lengths:
            for i in range(len(doc) - L + 1):
                if offset + i < limit:
                    p = tuple(doc[i:i + L])
                    if p in wanted:
                        found[(p, (offset + i) // width)] += 1
        offset += len(doc)
    n_windows = -(-min(offset, limit) // width)
    out = {}
    for (rule, cond), (targets, foils) in cells.items():
        for k in [None, *range(n_windows)]:
            t = sum(c for (p, w), c in found.items() if p in targets and (k is None or w == k))
            f = sum(c for (p, w), c in found.items() if p in foils and (k is None or w == k))
            out[(rule, cond, -1 if k is None else k)] = (t, f)
    return out


def check_battery_csv(path, reference):
    table = pd.read_csv(path)
    got = {(r.rule, r.condition, -1 if pd.isna(r.window) else int(r.window)): (r.target_count, r.foil_count)
           for r in table.itertuples()}
    assert got == reference
    for r in table.itertuples():
        if r.target_count == r.foil_count == 0:
            assert np.isnan(r.ratio) and r.note == "no events"
        else:
            assert r.ratio == pytest.approx((r.target_count + 1) / (r.foil_count + 1), rel=1e-12)


@pytest.mark.parametrize("demo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["small", "demo"])
def test_battery_cli_equals_an_independent_reimplementation(tmp_path, run_cli, demo, request):
    corpus = (make_mini_corpus(tmp_path / "corpus", demo=True) if demo
              else request.getfixturevalue("small_corpus"))
    out = tmp_path / "battery.csv"
    code, stdout, stderr = run_cli(["support", str(corpus), "--mode", "battery", "--probes", "all", "--out", str(out)])
    assert code == 0, stderr
    reference = reference_battery(corpus)
    check_battery_csv(out, reference)
    # the check above can fail: the counts are not all zero, and both sides occur
    assert sum(t for t, _ in reference.values()) > 0 and sum(f for _, f in reference.values()) > 0
    assert "pronoun_gender" in stdout
    if demo:
        # the windowed counter on the same corpus: in-frame counts equal the generator's
        # conflict-frame ground truth in every window, and pronoun_gender's is about 0.1 : 0.9
        truth = pd.read_csv(corpus / "ground_truth.csv")
        frame = count_support(corpus, "all", progress=False)
        assert_counts_equal_ground_truth(frame, truth)
        pg = frame[(frame.rule == "pronoun_gender") & (frame.frame == "conflict") & (frame.scope == "overall")]
        share = pg.rule_wins.item() / (pg.rule_wins.item() + pg.prior_wins.item())
        assert 0.05 < share < 0.15, share


def test_battery_mode_needs_probes_and_refuses_probes_elsewhere(small_corpus, run_cli):
    corpus = small_corpus
    code, _, err = run_cli(["support", str(corpus), "--mode", "battery"])
    assert code == 2 and "--probes" in err
    code, _, err = run_cli(["support", str(corpus), "--probes", "all"])
    assert code == 2 and "--mode battery" in err
