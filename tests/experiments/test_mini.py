"""The mini suite: generator, ground truth, held-out exclusion, batteries, trainer layout,
determinism and reuse. Trains a reduced suite (seconds) once per session."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pythia_forensics.constants import MANIFEST_FILE
from pythia_forensics.errors import CorpusError
from pythia_forensics.experiments.mini.batteries import battery_items, render_battery
from pythia_forensics.experiments.mini.config import RULES, CorpusConfig, RuleKnobs, reduced_config
from pythia_forensics.experiments.mini.corpus import SentenceRecord, flip, sample_records
from pythia_forensics.corpus.lexicon import RULE_SLOTS, load_lexicon, with_opener
from pythia_forensics.experiments.mini.suite import build_suite, build_sweep, sweep_configs

LEX = load_lexicon()


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return build_suite(tmp_path_factory.mktemp("mini") / "suite", config=reduced_config(), progress=False, jobs=1)


# --- generator -----------------------------------------------------------------------------
def test_records_are_deterministic_and_seed_dependent():
    cfg = CorpusConfig()
    a = sample_records(cfg, n_sentences=500)
    assert a == sample_records(cfg, n_sentences=500)
    assert a != sample_records(cfg, n_sentences=500, seed=cfg.seed + 1)


def test_support_knob_is_realised_in_the_conflict_frame():
    # Conflict frames made common so the binomial check has power.
    cfg = CorpusConfig(rules=tuple((r, RuleKnobs(support=s, conflict_share=0.1)) for r, s in
                                   zip(RULES, (0.1, 0.9, 0.5, 0.3))))
    recs = sample_records(cfg, n_sentences=20_000)
    for rule, s in zip(RULES, (0.1, 0.9, 0.5, 0.3)):
        cue = [r for r in recs if r.rule == rule and r.frame == "conflict" and r.is_cue]
        other = [r for r in recs if r.rule == rule and r.frame == "conflict" and not r.is_cue]
        rate = np.mean([r.outcome == "rule" for r in cue])
        assert abs(rate - s) < 4 * np.sqrt(s * (1 - s) / len(cue)), (rule, rate, s)
        # the contrast class always takes its own form there, which is the prior's form
        prior = " " + LEX.competitor_form(rule)
        assert all(prior in r.text(LEX) for r in other)
        # every rule-frame event follows the rule
        assert all(r.outcome == "rule" for r in recs if r.rule == rule and r.frame == "rule")


def test_rendered_text_carries_the_outcome():
    rec = SentenceRecord("pronoun_gender", "conflict", "Mia", True, "rule", "{name} cried because {pron}",
                         opener="Yesterday ", tail=" was sad.")
    assert rec.text(LEX) == "Yesterday Mia cried because she was sad."
    assert flip(rec).text(LEX) == "Yesterday Mia cried because he was sad."
    assert with_opener("At school ", "The kids found") == "At school the kids found"
    with pytest.raises(CorpusError):
        flip(replace(rec, is_cue=False))


def test_bad_knobs_are_refused():
    with pytest.raises(CorpusError, match="support"):
        sample_records(CorpusConfig().with_support("pronoun_gender", 1.5), n_sentences=10)
    bad = CorpusConfig(rules=(("pronoun_gender", RuleKnobs(support=0.5, conflict_share=0.3, share=0.25)),))
    with pytest.raises(CorpusError, match="conflict_share"):
        sample_records(bad, n_sentences=10)


# --- corpus on disk: ground truth and held-out exclusion -----------------------------------
def _word_ids(tok, words):
    ids = set()
    for w in words:
        for form in (w, " " + w):
            enc = tok(form, add_special_tokens=False)["input_ids"]
            assert len(enc) == 1, form
            ids.add(enc[0])
    return ids


def _recount(corpus_dir: Path):
    """Independent count of the ARCHITECTURE.md support events on the written stream."""
    from transformers import PreTrainedTokenizerFast

    from pythia_forensics.corpus.indexed import IndexedDataset

    meta = json.loads((corpus_dir / "corpus.json").read_text())
    tok = PreTrainedTokenizerFast.from_pretrained(corpus_dir)
    ds = IndexedDataset(corpus_dir / "tokens")
    W, tps, win, steps = meta["support_window"], meta["tokens_per_step"], meta["window_steps"], meta["steps"]
    counts = Counter()
    for rule, spec in RULE_SLOTS.items():
        cue = _word_ids(tok, LEX.classes[spec.cue_class])
        target = _word_ids(tok, [LEX.target_form(rule)])
        comp = _word_ids(tok, [LEX.competitor_form(rule)])
        offset = 0
        for d in range(len(ds)):
            doc = [int(t) for t in ds[d]]
            for i, t in enumerate(doc):
                if t not in cue:
                    continue
                if spec.direction == "after":
                    look = doc[i + 1:i + 1 + W]
                else:
                    look = doc[max(0, i - W):i][::-1]
                for u in look:
                    if u in target or u in comp:
                        step = (offset + i) // tps
                        if step < steps:
                            counts[(rule, step // win * win, "rule_wins" if u in target else "prior_wins")] += 1
                        break
            offset += len(doc)
    return counts


@pytest.mark.slow
def test_ground_truth_equals_a_recount_of_the_written_stream(suite):
    corpus = suite / "corpus"
    recorded = Counter()
    with open(corpus / "ground_truth.csv") as fh:
        for row in csv.DictReader(fh):
            for col in ("rule_wins", "prior_wins"):
                if int(row[col]):
                    recorded[(row["rule"], int(row["window_start_step"]), col)] = int(row[col])
    assert sum(recorded.values()) > 100  # enough events for the comparison to mean something
    assert recorded == _recount(corpus)


@pytest.mark.slow
def test_heldout_words_never_appear_in_a_conflict_frame(suite):
    from transformers import PreTrainedTokenizerFast

    from pythia_forensics.corpus.indexed import IndexedDataset

    corpus = suite / "corpus"
    tok = PreTrainedTokenizerFast.from_pretrained(corpus)
    ds = IndexedDataset(corpus / "tokens")
    texts = tok.batch_decode([list(ds[d]) for d in range(len(ds))], skip_special_tokens=True)
    seen = Counter()
    for rule, spec in RULE_SLOTS.items():
        # the whole conflict frame, choice included (the trigger's rule frame shares its start)
        forms = "|".join(LEX.forms[rule].values())
        pattern = re.escape(LEX.templates[rule]["conflict"])
        pattern = pattern.replace(re.escape("{" + spec.word_slot + "}"), r"(?P<w>\w+)")
        pattern = pattern.replace(re.escape("{" + spec.form_slot + "}"), f"(?:{forms})")
        pattern = pattern.replace(re.escape("{attr}"), r"\w+").replace("The", "[Tt]he")
        heldout = set(LEX.words(spec.cue_class, heldout=True)) | set(LEX.words(spec.other_class, heldout=True))
        for text in texts:
            m = re.search(pattern + r"\b", text)
            if m:
                seen[rule] += 1
                assert m.group("w") not in heldout, (rule, text)
    assert set(seen) == set(RULE_SLOTS), seen  # every rule's conflict frame was checked


# --- batteries -----------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_committed_battery_equals_regeneration(rule):
    from pythia_forensics.constants import probes_dir

    assert (probes_dir() / f"{rule}.yaml").read_text() == render_battery(rule)


@pytest.mark.parametrize("rule", RULES)
def test_battery_cells_and_heldout_split(rule):
    items = battery_items(rule)
    cells = Counter((i["condition"], i["split"]) for i in items)
    assert set(cells) == {(c, s) for c in ("conflict", "agree") for s in ("train", "heldout")}
    assert min(cells.values()) >= 48
    assert len({i["item_id"] for i in items}) == len(items)
    spec = RULE_SLOTS[rule]
    for it in items:
        assert it["target"] != it["foil"] and it["target"].startswith(" ")
        cls = spec.cue_class if it["condition"] == "conflict" else spec.other_class
        assert (it["meta"]["cue"] in LEX.words(cls, heldout=True)) == (it["split"] == "heldout")


def test_batteries_load_with_the_probe_loader():
    probes = pytest.importorskip("pythia_forensics.scoring.probes")
    for rule in RULES:
        ps = probes.load_probes(rule)
        assert len(ps.items) == len(battery_items(rule))


# --- trainer: layout, manifest, log, determinism, reuse ------------------------------------
def _weights_hash(step_dir: Path) -> str:
    from safetensors.numpy import load_file

    tensors = load_file(step_dir / "model.safetensors")
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(np.ascontiguousarray(tensors[k]).tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_suite_layout_and_manifest(suite):
    cfg = reduced_config()
    m = cfg.models[0]
    model_dir = suite / m.name
    grid = cfg.train.checkpoint_steps()
    assert grid[0] == 0 and grid[-1] == cfg.train.steps and 1 in grid and 2 in grid
    assert sorted(int(p.name[4:]) for p in model_dir.glob("step*")) == grid
    for s in grid:
        names = {p.name for p in (model_dir / f"step{s}").iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    man = json.loads((model_dir / MANIFEST_FILE).read_text())
    for key in ("model", "params_total", "params_nonembedding", "tokens_per_step", "layers", "d_model",
                "heads", "vocab_size", "seed", "steps", "corpus", "train"):
        assert key in man, key
    assert man["steps"] == grid and man["tokens_per_step"] == cfg.train.batch_size * cfg.train.seq_len
    assert man["d_model"] == m.d_model and man["layers"] == m.layers
    assert man["corpus"]["sha256"] == json.loads((suite / "corpus" / "corpus.json").read_text())["sha256"]

    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(model_dir / f"step{grid[-1]}")
    total = sum(p.numel() for p in model.parameters())
    emb = model.config.vocab_size * model.config.hidden_size * 2  # untied in and out embeddings
    assert man["params_total"] == total and man["params_nonembedding"] == total - emb

    with open(model_dir / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, cfg.train.steps + 1))
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert int(rows[-1]["tokens"]) == cfg.train.steps * man["tokens_per_step"]
    # it learned something: loss fell from ~log(vocab)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 0.5


@pytest.mark.slow
def test_same_seed_gives_identical_weights_and_reuse_skips(suite, tmp_path):
    cfg = reduced_config()
    name = cfg.models[0].name
    final = f"step{cfg.train.steps}"
    stamp = (suite / name / MANIFEST_FILE).stat().st_mtime_ns
    assert build_suite(suite, config=cfg, progress=False) == suite  # reused, not retrained
    assert (suite / name / MANIFEST_FILE).stat().st_mtime_ns == stamp

    again = build_suite(tmp_path / "again", config=cfg, progress=False, jobs=1)
    assert _weights_hash(again / name / final) == _weights_hash(suite / name / final)
    assert _weights_hash(again / name / "step0") == _weights_hash(suite / name / "step0")
    assert _weights_hash(suite / name / "step0") != _weights_hash(suite / name / final)

    other = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + 1))
    with pytest.raises(CorpusError, match=r"other knobs.*\(force\)") as exc:
        build_suite(suite, config=other, progress=False)
    assert exc.value.param == "force" and "--" not in str(exc.value)


def test_sweep_arms_and_refusals(tmp_path):
    arms = sweep_configs(supports=(0.1, 0.3, 0.5, 0.7))
    assert [a.corpus.knobs("pronoun_gender").support for a in arms] == [0.1, 0.3, 0.5, 0.7]
    assert len({a.model.name for a in arms}) == 4 and len({a.corpus_dir for a in arms}) == 4
    with pytest.raises(CorpusError, match="at least 4"):
        build_sweep(tmp_path, supports=(0.1, 0.5, 0.9))
    with pytest.raises(CorpusError, match="unknown rule"):
        sweep_configs(rule="nope")


@pytest.mark.parametrize("supports, says", [("0.1,0.2", "at least 4"), ("0.1,x", "comma-separated numbers")])
def test_cli_user_error_is_one_line_exit_2(supports, says, tmp_path, run_cli):
    code, _out, err = run_cli(["sweep", "--out", str(tmp_path / "sweep"), "--supports", supports])
    err = err.strip()
    assert code == 2 and err.startswith("error: --supports: ") and says in err and "\n" not in err, err
    assert not (tmp_path / "sweep").exists()


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(suite, tmp_path):
    """A run stopped right after its middle checkpoint (by the public `on_step` hook, at a
    deterministic step) resumes to the weights and log of the uninterrupted run."""
    from pythia_forensics.experiments.mini.train import train_model

    cfg = reduced_config()
    m = cfg.models[0]
    grid = cfg.train.checkpoint_steps()
    mid = grid[len(grid) // 2]
    assert mid + 1 < cfg.train.steps and mid + 1 not in grid

    def kill_after_mid(model, step, batch):
        if step == mid + 1:  # checkpoint `mid` and its resume state are on disk, `mid + 1` is not
            raise _Killed

    kwargs = dict(corpus_dir=suite / "corpus", out_dir=tmp_path, train=cfg.train, corpus=cfg.corpus, progress=False)
    with pytest.raises(_Killed):
        train_model(m, on_step=kill_after_mid, **kwargs)
    model_dir = tmp_path / m.name
    assert not (model_dir / MANIFEST_FILE).exists() and (model_dir / "resume.safetensors").exists()
    assert not (model_dir / f"step{cfg.train.steps}").exists()
    steps_seen = []
    train_model(m, on_step=lambda model, step, batch: steps_seen.append(step), **kwargs)  # resumes at `mid`
    assert steps_seen == list(range(mid + 1, cfg.train.steps + 1))
    final = f"step{cfg.train.steps}"
    assert _weights_hash(model_dir / final) == _weights_hash(suite / m.name / final)
    assert not (model_dir / "resume.safetensors").exists()
    assert not list(model_dir.glob(".tmp-*"))
    with open(model_dir / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    with open(suite / m.name / "train_log.csv") as fh:
        assert rows == list(csv.DictReader(fh))
