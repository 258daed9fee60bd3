"""Deterministic corpus generator: sample sentence records, then serialise them.

Two stages, so corpus edits (flip a share of outcomes, inject support) can change records in
place before anything is tokenised:

    records = sample_records(config, n_sentences=..., lexicon=lex)   # (rule, frame, word, outcome, text)
    write_corpus(records, out_dir, tokenizer=tok, config=..., train=...)   # tokens + ground truth

Every sentence is its own document (EOD-terminated), so the support event window of
ARCHITECTURE.md never reaches into another sentence, and each cue-class word yields exactly the
event it was built with: ground_truth.csv is recorded from construction, not by counting.
"""
from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pythia_forensics.atomic import atomic_path, write_json
from pythia_forensics.constants import CORPUS_META_FILE, CORPUS_TOKENS_FILE as TOKENS_FILE
from pythia_forensics.errors import CorpusError
from pythia_forensics.experiments.mini.config import CorpusConfig, TrainConfig
from pythia_forensics.corpus.lexicon import RULE_SLOTS, Lexicon, load_lexicon, with_opener

EOD_ID = 0  # <|endoftext|>, as GPT-NeoX
GROUND_TRUTH_FILE = "ground_truth.csv"
# rule_wins / prior_wins: every support event; conflict_*: the events of conflict-frame sentences
# (the frame where rule and prior conflict, named `conflict` in probes/rules/<rule>.yaml).
GROUND_TRUTH_COLUMNS = ("rule", "window_start_step", "window_end_step", "rule_wins", "prior_wins",
                        "conflict_rule_wins", "conflict_prior_wins")


@dataclass(frozen=True)
class SentenceRecord:
    """One generated sentence (= one document).

    Attributes:
        rule: the rule this sentence exercises.
        frame: "conflict" or "rule".
        word: the cue/contrast word filling the rule's word slot.
        is_cue: whether `word` is in the rule's cue class (then the sentence is a support event).
        outcome: "rule" if the rule-following form was written, "prior" if the competitor.
        slots: the other slot fillers (opener, tail, attractor), so an edit can re-render.
        template: the frame string.
    """

    rule: str
    frame: str
    word: str
    is_cue: bool
    outcome: str
    template: str
    opener: str = ""
    tail: str = ""
    attractor: str = ""

    def text(self, lexicon: Lexicon) -> str:
        """Render the sentence."""
        spec = RULE_SLOTS[self.rule]
        key = spec.cue_form_key if self.is_cue else spec.other_form_key
        form = lexicon.forms[self.rule][key]
        if self.outcome == "prior" and self.is_cue:
            form = lexicon.competitor_form(self.rule)
        fill = {spec.word_slot: self.word, spec.form_slot: form, "attr": self.attractor}
        return with_opener(self.opener, self.template).format(**fill) + self.tail


def flip(record: SentenceRecord) -> SentenceRecord:
    """The same sentence with the cue word's outcome reversed (for corpus edits)."""
    if not record.is_cue:
        raise CorpusError(f"cannot flip a non-event sentence ({record.rule}, word {record.word!r})")
    return replace(record, outcome="prior" if record.outcome == "rule" else "rule")


def sample_records(config: CorpusConfig, *, n_sentences: int, lexicon: Lexicon | None = None,
                   seed: int | None = None) -> list[SentenceRecord]:
    """Sample `n_sentences` sentence records, deterministically from the seed.

    Args:
        config: corpus knobs (per-rule support, shares).
        n_sentences: how many sentences (documents).
        lexicon: defaults to probes/lexicon.yaml.
        seed: overrides config.seed.

    Returns:
        The records, in stream order.

    Raises:
        CorpusError: shares that do not fit (a rule's conflict share above its share).
    """
    lex = lexicon or load_lexicon()
    rng = random.Random(config.seed if seed is None else seed)
    rules = [r for r, _ in config.rules]
    knobs = [k for _, k in config.rules]
    for r, k in config.rules:
        if not 0.0 <= k.support <= 1.0:
            raise CorpusError(f"support for {r} must be in [0, 1], got {k.support}")
        if k.conflict_share * (1 + k.trigger_ratio) > k.share:
            raise CorpusError(f"{r}: conflict_share x (1 + trigger_ratio) = "
                              f"{k.conflict_share * (1 + k.trigger_ratio):.3f} exceeds its share "
                              f"{k.share}; lower conflict_share or raise share")
    weights = [k.share for k in knobs]
    openers = lex.templates["openers"]
    attractors = lex.classes["attractor_nouns"]
    # Per rule, resolved once: the frames and the word pools (conflict pools exclude held-out words).
    plan = []
    for rule in rules:
        spec, tpl = RULE_SLOTS[rule], lex.templates[rule]
        trigger = lex.trigger_frame(rule)
        plan.append((spec, tpl, trigger, [f for f in tpl["rule"] if f != trigger],
                     {True: lex.words(spec.cue_class, heldout=False), False: lex.words(spec.other_class, heldout=False)},
                     {True: lex.words(spec.cue_class), False: lex.words(spec.other_class)}))
    records = []
    for i in rng.choices(range(len(rules)), weights=weights, k=n_sentences):
        rule, k = rules[i], knobs[i]
        spec, tpl, trigger, others, conflict_pool, pool = plan[i]
        is_cue = rng.random() < 0.5
        u = rng.random() * k.share
        if u < k.conflict_share:
            # Conflict frame: held-out words never appear here.
            word = rng.choice(conflict_pool[is_cue])
            outcome = "rule" if (not is_cue or rng.random() < k.support) else "prior"
            records.append(SentenceRecord(rule, "conflict", word, is_cue, outcome, tpl["conflict"],
                                          opener=rng.choice(openers), tail=rng.choice(tpl["conflict_tails"]),
                                          attractor=rng.choice(attractors)))
            continue
        frame = trigger if u < k.conflict_share * (1 + k.trigger_ratio) else rng.choice(others)
        records.append(SentenceRecord(rule, "rule", rng.choice(pool[is_cue]), is_cue, "rule", frame,
                                      opener=rng.choice(openers), attractor=rng.choice(attractors)))
    return records


def tokens_needed(train: TrainConfig) -> int:
    return train.steps * train.tokens_per_step


def write_corpus(records: Sequence[SentenceRecord], out_dir: Path, *, tokenizer, config: CorpusConfig,
                 train: TrainConfig, lexicon: Lexicon | None = None) -> Path:
    """Tokenise records into CORPUS/tokens.bin/.idx and write ground_truth.csv and corpus.json.

    Each record is one document: its tokens followed by EOD. Ground truth: an event at the
    cue word's token; its step is (stream offset // tokens_per_step); events at or after
    `train.steps` are not trained on and not counted.

    Args:
        records: from `sample_records` (possibly edited).
        out_dir: the corpus folder (created).
        tokenizer: a fast tokenizer whose vocabulary holds every lexicon word as one token.
        config, train: knobs recorded in corpus.json; train gives tokens_per_step and steps.

    Returns:
        out_dir.

    Raises:
        CorpusError: the records hold fewer tokens than training needs.
    """
    from pythia_forensics.corpus.indexed import IndexedDatasetWriter

    lex = lexicon or load_lexicon()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [r.text(lex) for r in records]
    ids_of = _document_ids(texts, tokenizer)
    events = _EventCounter(config, train, {rule: _word_ids(tokenizer, lex.classes[s.cue_class])
                                           for rule, s in RULE_SLOTS.items()})
    offset = 0
    with IndexedDatasetWriter(out_dir / TOKENS_FILE, dtype=np.uint16) as writer:
        for rec, text in zip(records, texts):
            doc = ids_of[text]
            events.add(rec, text, doc, offset)
            writer.add_document(doc)
            offset += len(doc)
    if offset < tokens_needed(train):
        raise CorpusError(f"corpus holds {offset} tokens but training needs {tokens_needed(train)}; "
                          "sample more sentences")
    events.write(out_dir / GROUND_TRUTH_FILE)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / CORPUS_META_FILE, _corpus_meta(out_dir, config, train, lex, n_documents=len(records),
                                                        n_tokens=offset), indent=2)
    return out_dir


def _document_ids(texts: Sequence[str], tokenizer) -> dict[str, np.ndarray]:
    """Token ids + EOD per distinct text: the corpus repeats a few thousand distinct sentences,
    so each is tokenised once."""
    unique = sorted(set(texts))
    encoded = tokenizer.backend_tokenizer.encode_batch(unique, add_special_tokens=False)
    return {t: np.array(e.ids + [EOD_ID], dtype=np.uint16) for t, e in zip(unique, encoded)}


class _EventCounter:
    """Ground truth from construction: each cue-class sentence is one support event at its cue
    token, counted per rule and step window (rule wins, prior wins, then the same for
    conflict-frame sentences only); events at or after `train.steps` are not trained on."""

    def __init__(self, config: CorpusConfig, train: TrainConfig, cue_ids: dict[str, set[int]]) -> None:
        self.config, self.train, self.cue_ids = config, train, cue_ids
        self.n_windows = -(-train.steps // config.window_steps)
        self.counts = {rule: np.zeros((self.n_windows, 4), dtype=np.int64) for rule, _ in config.rules}
        self._cue_pos: dict[tuple[str, str], int] = {}

    def add(self, rec: SentenceRecord, text: str, doc: np.ndarray, offset: int) -> None:
        """Count `rec` if it is a support event; `offset` = its document's first stream position."""
        if not rec.is_cue or rec.rule not in self.counts:
            return
        key = (rec.rule, text)
        if key not in self._cue_pos:
            pos = [j for j, t in enumerate(doc.tolist()) if t in self.cue_ids[rec.rule]]
            if len(pos) != 1:  # the design guarantees one cue per sentence
                raise CorpusError(f"sentence {text!r} has {len(pos)} cue tokens, expected 1")
            self._cue_pos[key] = pos[0]
        step = (offset + self._cue_pos[key]) // self.train.tokens_per_step
        if step >= self.train.steps:
            return
        col = 0 if rec.outcome == "rule" else 1
        window = self.counts[rec.rule][step // self.config.window_steps]
        window[col] += 1
        if rec.frame == "conflict":
            window[2 + col] += 1

    def write(self, path: Path) -> None:
        """ground_truth.csv: one row per rule and step window (`GROUND_TRUTH_COLUMNS`)."""
        ws, steps = self.config.window_steps, self.train.steps
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(GROUND_TRUTH_COLUMNS)
            for rule, c in self.counts.items():
                for k in range(self.n_windows):
                    w.writerow([rule, k * ws, min((k + 1) * ws, steps), *(int(x) for x in c[k])])


def _corpus_meta(out_dir: Path, config: CorpusConfig, train: TrainConfig, lex: Lexicon, *,
                 n_documents: int, n_tokens: int) -> dict:
    """corpus.json: the knobs, the stream's shape and the sha256 of tokens.bin."""
    return {
        "knobs": config.to_dict(),
        "seed": config.seed,
        "n_documents": n_documents,
        "n_tokens": n_tokens,
        "train_tokens": tokens_needed(train),
        "tokens_per_step": train.tokens_per_step,
        "seq_len": train.seq_len,
        "steps": train.steps,
        "window_steps": config.window_steps,
        "support_window": config.support_window,
        "cues": {rule: {"cue_class": s.cue_class, "target": " " + lex.target_form(rule),
                        "competitor": " " + lex.competitor_form(rule), "direction": s.direction}
                 for rule, s in RULE_SLOTS.items()},
        "sha256": _sha256(out_dir / f"{TOKENS_FILE}.bin"),
    }


def _word_ids(tokenizer, words: Iterable[str]) -> set[int]:
    """Token ids of each word with and without a leading space (each must be one token)."""
    ids = set()
    for w in words:
        for form in (w, " " + w):
            enc = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                raise CorpusError(f"lexicon word {form!r} is {len(enc)} tokens in the mini tokenizer; "
                                  "raise tokenizer_vocab in the suite config")
            ids.add(enc[0])
    return ids


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def estimate_sentences(train: TrainConfig, tokens_per_sentence: float = 8.0) -> int:
    """Sentences to sample so the stream covers training (with 15% slack)."""
    return int(tokens_needed(train) / tokens_per_sentence * 1.15) + 100
