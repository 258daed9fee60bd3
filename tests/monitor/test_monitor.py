"""The training monitor (issue #20): live scoring equals post-hoc scoring, training is
untouched, alerts fire on the collapse `analyze` finds, support counts equal the ground truth,
and the Trainer callback logs through a real `transformers.Trainer`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pythia_forensics.errors import MonitorError, PFError, ScoringError
from pythia_forensics.scoring.probes import parse_probes

ITEMS = """
name: tiny_pronoun
items:
  - {item_id: c1, rule: pronoun_gender, condition: conflict, split: heldout, prefix: "Mia cried because", target: " she", foil: " he"}
  - {item_id: c2, rule: pronoun_gender, condition: conflict, split: heldout, prefix: "Sue laughed because", target: " she", foil: " he"}
  - {item_id: a1, rule: pronoun_gender, condition: agree, split: heldout, prefix: "Tom cried because", target: " he", foil: " she"}
  - {item_id: a2, rule: pronoun_gender, condition: agree, split: heldout, prefix: "Bob laughed because", target: " he", foil: " she"}
  - {item_id: r1, rule: reflexive_gender, condition: conflict, split: heldout, prefix: "Anna hurt", target: " herself", foil: " himself"}
  - {item_id: r2, rule: reflexive_gender, condition: agree, split: heldout, prefix: "John hurt", target: " himself", foil: " herself"}
"""


@pytest.fixture(scope="module")
def tiny_set():
    return parse_probes(ITEMS, fmt="yaml", source="test")


def _direct_logp(model, tok, prefix: str, cand: str) -> float:
    """Independent fp32 one-item loop: full forward over prefix + candidate, sum of log-softmax."""
    import torch

    p = tok(prefix, add_special_tokens=False)["input_ids"]
    c = tok(cand, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits[:, :len(tok)], dim=-1)
    return float(sum(logp[len(p) - 1 + i, t] for i, t in enumerate(c)))


def _train(model, tok, steps: int, monitor=None, seed: int = 7):
    """A plain loop whose batches and dropout both draw from torch's global RNG."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(1, steps + 1):
        x = torch.randint(2, len(tok), (4, 12))
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(model, step, tokenizer=tok, batch=x)
            assert model.training and all(m.training for m in model.modules())
    return model


def _dropout_model(tok, seed=0):
    from tinymodels import tiny_neox

    model = tiny_neox(len(tok), seed=seed)
    model.config.hidden_dropout = model.config.attention_dropout = 0.1
    for m in model.modules():  # config set after build: set the modules' own rates too
        if m.__class__.__name__ == "Dropout":
            m.p = 0.1
    return model


def test_prepared_scoring_equals_plain_scoring_and_refuses_a_mismatch(tiny_tokenizer, tiny_set):
    from tinymodels import tiny_neox

    from pythia_forensics.scoring import score as scoring

    model = tiny_neox(len(tiny_tokenizer), seed=3)
    prepared = scoring.prepare(model, tiny_set, tokenizer=tiny_tokenizer)
    plain = scoring.score(model, tiny_set, tokenizer=tiny_tokenizer)
    again = scoring.score(model, tiny_set, tokenizer=tiny_tokenizer, prepared=prepared)
    np.testing.assert_array_equal(plain["logp_target"].to_numpy(), again["logp_target"].to_numpy())
    np.testing.assert_array_equal(plain["logp_foil"].to_numpy(), again["logp_foil"].to_numpy())
    other = parse_probes(ITEMS.replace("c1", "c9"), fmt="yaml", source="test")
    with pytest.raises(ScoringError, match="does not fit"):
        scoring.score(model, other, tokenizer=tiny_tokenizer, prepared=prepared)
    with pytest.raises(ScoringError, match="does not fit"):
        scoring.score(model, tiny_set, tokenizer=tiny_tokenizer, prepared=prepared, bos=True)


@pytest.mark.slow
def test_monitor_leaves_training_bit_identical_and_scores_the_live_weights(tiny_tokenizer, tiny_set, tmp_path):
    import torch

    from pythia_forensics.sweep.store import ResultsStore

    plain = _train(_dropout_model(tiny_tokenizer), tiny_tokenizer, 6)
    from pythia_forensics.monitor.live import Monitor

    monitor = Monitor(tiny_set, every=2, results=tmp_path / "res", run="toy", tokenizer=tiny_tokenizer)
    watched = _train(_dropout_model(tiny_tokenizer), tiny_tokenizer, 6, monitor=monitor)
    monitor.close()
    for (name, a), (_, b) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name
    assert monitor.checks == 3
    rows = ResultsStore(tmp_path / "res").items()
    assert sorted(rows["step"].unique()) == [2, 4, 6]
    assert set(rows["model"]) == {"toy"} and rows["content_key"].str.startswith("live:").all()
    assert rows.groupby("step")["content_key"].nunique().eq(1).all() and rows["content_key"].nunique() == 3
    # the last check scored the final weights: an independent one-item loop agrees
    watched.eval()
    last = rows[rows["step"] == 6].set_index("item_id")
    for item in tiny_set.items:
        lt = _direct_logp(watched, tiny_tokenizer, item.prefix, item.target)
        lf = _direct_logp(watched, tiny_tokenizer, item.prefix, item.foil)
        assert last.loc[item.item_id, "logp_target"] == pytest.approx(lt, rel=1e-5, abs=1e-5)
        assert last.loc[item.item_id, "margin"] == pytest.approx(lt - lf, rel=1e-5, abs=1e-5)
    # the running table is the one dynamics builds from the stored rows
    from pythia_forensics.analysis.dynamics import step_table

    want = step_table(rows).sort_values(["rule", "split", "step"]).reset_index(drop=True)
    got = monitor.trajectory().sort_values(["rule", "split", "step"]).reset_index(drop=True)
    np.testing.assert_allclose(got["conflict_acc"], want["conflict_acc"])
    np.testing.assert_allclose(got["conflict_cm"], want["conflict_cm"], rtol=1e-6)
    metrics = ResultsStore(tmp_path / "res").models()
    assert metrics.loc[0, "model"] == "toy" and metrics.loc[0, "params_total"] == sum(
        p.numel() for p in watched.parameters())


def test_bad_monitor_setup_is_one_line(tiny_set, tiny_tokenizer):
    from tinymodels import tiny_neox

    from pythia_forensics.monitor.live import Monitor

    for kwargs, text in (({"every": 0}, "every"), ({"rows": "packed"}, "rows"), ({"run": " "}, "run")):
        with pytest.raises(MonitorError, match=text) as exc:
            Monitor(tiny_set, **kwargs)
        assert isinstance(exc.value, PFError) and "\n" not in str(exc.value)
    monitor = Monitor(tiny_set, every=1)
    model = tiny_neox(len(tiny_tokenizer))
    with pytest.raises(MonitorError, match="tokenizer"):
        monitor.step(model, 1)
    monitor.step(model, 2, tokenizer=tiny_tokenizer)
    with pytest.raises(MonitorError, match="go back"):
        monitor.step(model, 1, tokenizer=tiny_tokenizer)


def _synthetic_table(acc, agree, cm, steps, rule="pronoun_gender"):
    return pd.DataFrame({"model": "run", "probeset": rule, "rule": rule, "split": "heldout", "step": steps,
                         "revision": [f"step{s}" for s in steps], "conflict_acc": acc, "agree_acc": agree,
                         "conflict_cm": cm, "agree_cm": 1.0, "n_conflict": 10, "n_agree": 10,
                         "health_status": "ok", "used": True, "drop_reason": ""})


@pytest.mark.parametrize("agree_drops", [False, True])
def test_alert_fires_once_at_the_collapse_while_the_agree_control_holds(tiny_set, agree_drops):
    """Feed the alert logic a trajectory (independent of scoring). Expected values worked out by
    hand from analysis.yaml (window-3 centred smoothing, edges truncated; emergence at conflict
    >= 0.8 with agree >= 0.8; collapse onset = last smoothed conflict >= 0.5): at step 260 the
    prefix's last smoothed point is (0.6 + 0.2) / 2 = 0.4, the one before (0.9 + 0.6 + 0.2) / 3
    = 0.57, so onset 240; smoothed CM at 240 is (2 + 0.5 - 0.8) / 3 > 0 and at 260 < 0; the
    last check still >= 0.8 is 220 ((1 + 0.9 + 0.6) / 3); the peak (1.0) is at 180."""
    from pythia_forensics.monitor.live import Monitor

    steps = np.arange(100, 340, 20)
    acc = np.array([0.2, 0.6, 0.9, 1.0, 1.0, 1.0, 0.9, 0.6, 0.2, 0.0, 0.0, 0.0])
    cm = np.array([-1.0, 0.5, 2.0, 3.0, 3.2, 3.0, 2.0, 0.5, -0.8, -1.5, -2.0, -2.2])
    agree = np.where(np.arange(len(steps)) >= 8, 0.3, 1.0) if agree_drops else np.ones(len(steps))
    monitor = Monitor(tiny_set, every=20)
    fired = []
    for i, step in enumerate(steps):
        monitor._table.append(_synthetic_table(acc[i:i + 1], agree[i:i + 1], cm[i:i + 1], steps[i:i + 1]))
        fired.extend(monitor._update_alerts(int(step), None))
    if agree_drops:  # the agree control failed with it: a global bias shift, not ungrokking
        assert fired == []
        return
    assert len(fired) == 1
    alert = fired[0]
    assert (alert.step, alert.onset_step, alert.keep_step, alert.peak_step) == (260, 240, 220, 180)
    assert alert.trigger == "accuracy + contrast margin" and alert.peak_acc == pytest.approx(1.0)
    assert alert.acc_now == pytest.approx(0.4) and alert.acc_raw == pytest.approx(0.2)
    assert alert.cm_now == pytest.approx(-0.15)
    assert [s for s, _ in alert.cm_trend] == [200, 220, 240, 260]
    assert "pronoun_gender" in alert.message and "step 260" in alert.message
    assert "keep checkpoint step220" in alert.message and "\n" not in alert.message


def _run_alert_checks(monitor, model, tok, steps, acc, cm):
    """The order `Monitor._check` runs in, on a synthetic trajectory and real moving weights:
    alerts (each keeps its checkpoint), then this check's weights are held and the rest dropped.
    Returns the alerts and each check's weights as they were at that check."""
    import torch

    fired, weights = [], {}
    for i, step in enumerate(steps):
        with torch.no_grad():  # the weights move at every check, as training moves them
            for p in model.parameters():
                p.add_(0.01 * (i + 1))
        weights[int(step)] = {k: v.clone() for k, v in model.state_dict().items()}
        monitor._table.append(_synthetic_table(acc[i:i + 1], np.ones(1), cm[i:i + 1], steps[i:i + 1]))
        monitor._last_step = int(step)
        fired.extend(monitor._keep(a, model, tok) for a in monitor._update_alerts(int(step), None))
        if monitor.keeper is not None:
            monitor.keeper.remember(int(step), model)
            monitor.keeper.retain(monitor._keep_candidates())
            assert len(monitor.keeper.held_steps) <= 2  # the latest check and the rule's last held one
    return fired, weights


@pytest.mark.parametrize("acc, cm, fired_at, kept", [
    # the trajectory above: at step 260 the alert names step220 (the last check still >= 0.8)
    ([0.2, 0.6, 0.9, 1.0, 1.0, 1.0, 0.9, 0.6, 0.2, 0.0, 0.0, 0.0],
     [-1.0, 0.5, 2.0, 3.0, 3.2, 3.0, 2.0, 0.5, -0.8, -1.5, -2.0, -2.2], 260, 220),
    # at the check of step 200 its own smoothed value (.7 + .9) / 2 = .8 says "held", but the next
    # check settles it at (.7 + .9 + 0) / 3 = .53: the alert at 220 names 180 ((1 + .7 + .9) / 3),
    # so 180's weights must still be held after the check of 200
    ([0.2, 0.9, 1.0, 1.0, 0.7, 0.9, 0.0, 0.0, 0.0],
     [-1.0, 2.0, 3.0, 3.0, 2.0, 2.0, 1.0, -1.0, -1.0], 220, 180),
])
def test_an_alert_saves_the_checkpoint_it_names_with_its_tokenizer(tiny_tokenizer, tiny_set, tmp_path, acc, cm,
                                                                   fired_at, kept):
    """The saved folder holds the named check's weights, not the live ones at the alert, and the
    tool scores it as any checkpoint folder (same numbers as scoring those weights directly)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import pythia_forensics as pf
    from pythia_forensics.monitor.live import Monitor
    from tinymodels import tiny_neox

    acc, cm = np.array(acc), np.array(cm)
    steps = np.arange(100, 100 + 20 * len(acc), 20)
    model = tiny_neox(len(tiny_tokenizer), seed=1)
    monitor = Monitor(tiny_set, every=20, run="toy", keep=tmp_path / "keep")
    fired, weights = _run_alert_checks(monitor, model, tiny_tokenizer, steps, acc, cm)
    assert [(a.step, a.keep_step) for a in fired] == [(fired_at, kept)]
    alert = fired[0]
    folder = tmp_path / "keep" / "toy" / f"step{kept}"
    assert alert.kept == str(folder) and alert.message.endswith(f"keep checkpoint step{kept}; kept in {folder}")
    saved = AutoModelForCausalLM.from_pretrained(folder)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, weights[kept][name]), name
    first = next(iter(weights[kept]))
    assert not torch.equal(saved.state_dict()[first], model.state_dict()[first])  # not the live weights
    assert AutoTokenizer.from_pretrained(folder)("Mia cried because")["input_ids"] == \
        tiny_tokenizer("Mia cried because")["input_ids"]
    scored = pf.score(str(folder), tiny_set)  # the folder is a checkpoint the tool reads
    model.load_state_dict(weights[kept])
    direct = pf.score(model, tiny_set, tokenizer=tiny_tokenizer)
    np.testing.assert_allclose(scored["logp_target"], direct["logp_target"], rtol=0, atol=1e-5)


def test_an_alert_says_when_it_could_not_keep_its_checkpoint(tiny_tokenizer, tiny_set, tmp_path):
    from pythia_forensics.monitor.live import Monitor
    from tinymodels import tiny_neox

    steps = np.arange(100, 340, 20)
    acc = np.array([0.2, 0.6, 0.9, 1.0, 1.0, 1.0, 0.9, 0.6, 0.2, 0.0, 0.0, 0.0])
    cm = np.array([-1.0, 0.5, 2.0, 3.0, 3.2, 3.0, 2.0, 0.5, -0.8, -1.5, -2.0, -2.2])
    model = tiny_neox(len(tiny_tokenizer), seed=1)
    (alert,), _ = _run_alert_checks(Monitor(tiny_set, every=20, run="toy"), model, tiny_tokenizer, steps, acc, cm)
    assert alert.kept is None and alert.message.endswith("not saved (pass keep=FOLDER to Monitor to save it)")
    monitor = Monitor(tiny_set, every=20, run="toy", keep=tmp_path / "keep")
    monitor.keeper.retain = lambda steps: monitor.keeper._copies.clear()  # nothing held: nothing to save
    (alert,), _ = _run_alert_checks(monitor, model, tiny_tokenizer, steps, acc, cm)
    assert alert.kept is None and "checkpoint step220 not saved: its weights were not held" in alert.message
    assert not (tmp_path / "keep").exists()


def test_a_sudden_drop_alerts_at_the_first_check_below_the_collapse_threshold(tiny_set):
    """Raw conflict accuracy 0.3 at step 220 (< 0.5) while the prefix's smoothed value is still
    (1 + 0.3) / 2 = 0.65: the accuracy trigger fires now, not one check later; onset = the last
    earlier check whose smoothed value is >= 0.5 (200: (1 + 1 + 0.3) / 3); keep = the last one
    >= 0.8 (180); smoothed CM (3 + 1) / 2 is still positive, so no margin trigger."""
    from pythia_forensics.monitor.live import Monitor

    steps = np.arange(100, 240, 20)
    acc = np.array([0.2, 0.9, 1.0, 1.0, 1.0, 1.0, 0.3])
    cm = np.array([-1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 1.0])
    monitor = Monitor(tiny_set, every=20)
    fired = []
    for i, step in enumerate(steps):
        monitor._table.append(_synthetic_table(acc[i:i + 1], np.ones(1), cm[i:i + 1], steps[i:i + 1]))
        fired.extend(monitor._update_alerts(int(step), None))
    assert [(a.step, a.onset_step, a.keep_step, a.peak_step, a.trigger) for a in fired] == [
        (220, 200, 180, 160, "accuracy")]


def _reduced_corpus(tmp_path):
    from pythia_forensics.experiments.mini.config import reduced_config
    from pythia_forensics.experiments.mini.corpus import estimate_sentences, sample_records, write_corpus
    from pythia_forensics.experiments.mini.tokenizer import build_tokenizer

    cfg = reduced_config()
    tok = build_tokenizer(vocab_size=cfg.tokenizer_vocab)
    out = write_corpus(sample_records(cfg.corpus, n_sentences=estimate_sentences(cfg.train)), tmp_path / "corpus",
                       tokenizer=tok, config=cfg.corpus, train=cfg.train)
    return cfg, tok, out


def _assert_windows_equal_truth(got: pd.DataFrame, truth: pd.DataFrame) -> None:
    """Every ground-truth window has the monitor's window with the same counts (and some events)."""
    merged = truth.merge(got, on=["rule", "window_start_step", "window_end_step"], suffixes=("_truth", ""))
    assert len(merged) == len(truth) > 0
    np.testing.assert_array_equal(merged["rule_wins"], merged["rule_wins_truth"])
    np.testing.assert_array_equal(merged["prior_wins"], merged["prior_wins_truth"])
    assert merged["rule_wins"].sum() > 0 and merged["prior_wins"].sum() > 0


def test_support_per_window_equals_the_corpus_ground_truth(tmp_path, tiny_set):
    """Batches shown to the monitor are the mini stream, step by step; its per-window counts
    must equal the generator's own ground truth (ground_truth.csv), an independent count."""
    from transformers import PreTrainedTokenizerFast

    from pythia_forensics.corpus.indexed import IndexedDataset
    from pythia_forensics.experiments.mini.corpus import EOD_ID, GROUND_TRUTH_FILE, TOKENS_FILE
    from pythia_forensics.monitor.live import Monitor

    cfg, _, corpus = _reduced_corpus(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(corpus)
    stream = IndexedDataset(corpus / TOKENS_FILE).tokens
    T, W = cfg.train.tokens_per_step, cfg.corpus.window_steps
    monitor = Monitor(tiny_set, every=W, tokenizer=tok, support="all", rows="stream", eod_id=EOD_ID)
    # no model: count through the monitor's own observe/close path without scoring
    for step in range(1, cfg.train.steps + 2):  # one step past the end gives the last window its look-ahead
        x = np.asarray(stream[(step - 1) * T:step * T], dtype=np.int64).reshape(cfg.train.batch_size, -1)
        monitor.observe(x)
        if step % W == 0:
            monitor._support.close_window(step - W, step)
    monitor.close()
    got = monitor.support_frame()
    assert got[got["window_end_step"] <= cfg.train.steps]["final"].all()
    _assert_windows_equal_truth(got, pd.read_csv(corpus / GROUND_TRUTH_FILE))


# --- end to end on the mini suite -----------------------------------------------------------
@pytest.fixture(scope="module")
def monitored_mini(tmp_path_factory):
    """mini-s of the demo suite (the smallest scale that collapses), trained once with the
    monitor attached (every 20, checkpoints every 20), then the same checkpoints replayed."""
    import time

    from pythia_forensics.experiments.mini.config import demo_config
    from pythia_forensics.experiments.mini.corpus import EOD_ID, estimate_sentences, sample_records, write_corpus
    from pythia_forensics.experiments.mini.tokenizer import build_tokenizer
    from pythia_forensics.experiments.mini.train import train_model
    from pythia_forensics.monitor.live import Monitor
    from pythia_forensics.sweep.replay import replay

    root = tmp_path_factory.mktemp("mini-monitor")
    cfg = demo_config()
    model_cfg = next(m for m in cfg.models if m.name == "mini-s")
    tok = build_tokenizer(vocab_size=cfg.tokenizer_vocab)
    suite = root / "suite"
    corpus = write_corpus(sample_records(cfg.corpus, n_sentences=estimate_sentences(cfg.train)), suite / "corpus",
                          tokenizer=tok, config=cfg.corpus, train=cfg.train)
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(corpus)
    alerts = []
    probes = ["pronoun_gender", "reflexive_gender"]
    monitor = Monitor(probes, every=20, results=root / "live", run="mini-s", tokenizer=tok, support="all",
                      rows="stream", eod_id=EOD_ID, on_alert=alerts.append, keep=root / "keep")
    t0 = time.perf_counter()
    train_model(model_cfg, corpus_dir=corpus, out_dir=suite, train=cfg.train, corpus=cfg.corpus, progress=False,
                on_step=monitor)
    wall = time.perf_counter() - t0
    monitor.close()
    replay("mini-s", probes, steps=[s for s in cfg.train.checkpoint_steps() if s % 20 == 0 and s > 0],
           suite_dir=suite, results=root / "replayed", progress=False)
    (root / "timing.json").write_text(json.dumps({"train_wall_s": wall, "monitor_s": monitor.overhead_s,
                                                  "checks": monitor.checks}))
    return root, monitor, alerts


@pytest.mark.slow
def test_live_rows_equal_a_replay_of_the_saved_checkpoints(monitored_mini):
    from pythia_forensics.sweep.store import ResultsStore

    root, monitor, _ = monitored_mini
    live = ResultsStore(root / "live").items()
    post = ResultsStore(root / "replayed").items()
    keys = ["probeset", "step", "item_id"]
    merged = live.merge(post, on=keys, suffixes=("_live", "_replay"))
    assert len(merged) == len(live) == len(post) > 0
    for col in ("logp_target", "logp_foil", "margin"):
        np.testing.assert_allclose(merged[f"{col}_live"], merged[f"{col}_replay"], atol=1e-4, rtol=0)
    assert (merged["correct_live"] == merged["correct_replay"]).mean() > 0.99
    timing = json.loads((root / "timing.json").read_text())
    print(f"\nmonitor overhead: {timing['monitor_s']:.1f} s of {timing['train_wall_s']:.1f} s wall "
          f"({timing['monitor_s'] / (timing['train_wall_s'] - timing['monitor_s']):.1%} of training), "
          f"{timing['checks']} checks")


@pytest.mark.slow
def test_alert_fires_for_pronoun_gender_at_the_collapse_analyze_finds_and_not_for_reflexive(monitored_mini):
    from pythia_forensics.analysis.dynamics import analyze

    root, monitor, alerts = monitored_mini
    post = analyze(root / "replayed").metrics
    post = post[post["split"] == "heldout"].set_index("rule")
    onset = int(post.loc["pronoun_gender", "collapse_step"])
    fired = {a.rule: a for a in alerts}
    assert "reflexive_gender" not in fired, fired.get("reflexive_gender")
    assert bool(post.loc["reflexive_gender", "emerged"]) and pd.isna(post.loc["reflexive_gender", "collapse_step"])
    alert = fired["pronoun_gender"]
    assert abs(alert.onset_step - onset) <= monitor.every
    assert onset < alert.step <= onset + monitor.every
    print(f"\n{alert.message}\nanalyze afterwards: collapse onset step {onset}")
    assert alert.keep_step < onset + monitor.every and alert.support is not None
    assert (root / "live" / "monitor" / "mini-s" / "alerts.jsonl").read_text().count("\n") == len(alerts)
    # the named checkpoint was saved, tokenizer included, and scores as the live model did then
    import pythia_forensics as pf
    from pythia_forensics.sweep.store import ResultsStore

    assert alert.kept == str(root / "keep" / "mini-s" / f"step{alert.keep_step}")
    kept = pf.score(alert.kept, "pronoun_gender").set_index("item_id")
    live = ResultsStore(root / "live").items()
    live = live[(live["step"] == alert.keep_step) & (live["probeset"] == "pronoun_gender")].set_index("item_id")
    assert len(kept) == len(live) > 0
    np.testing.assert_allclose(kept.loc[live.index, "margin"], live["margin"], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_support_seen_by_the_live_monitor_equals_the_ground_truth(monitored_mini):
    """Monitor windows (20 steps) and ground-truth windows (50 steps) meet every 100 steps."""
    root, monitor, _ = monitored_mini
    from pythia_forensics.experiments.mini.corpus import GROUND_TRUTH_FILE

    truth = pd.read_csv(root / "suite" / "corpus" / GROUND_TRUTH_FILE)
    got = monitor.support_frame()
    assert got["final"].all()
    for frame in (truth, got):
        frame["bin"] = frame["window_start_step"] // 100
    a = truth.groupby(["rule", "bin"])[["rule_wins", "prior_wins"]].sum().sort_index()
    b = got.groupby(["rule", "bin"])[["rule_wins", "prior_wins"]].sum().sort_index()
    assert a.index.equals(b.index)
    inner = a.index.get_level_values("bin") < a.index.get_level_values("bin").max()
    pd.testing.assert_frame_equal(a[inner], b[inner], check_dtype=False)
    # the last window has no look-ahead past the end of training (the generator's truth does):
    # a sentence cut by the end can lose its one event
    assert ((a[~inner] - b[~inner]).to_numpy() >= 0).all() and ((a[~inner] - b[~inner]).to_numpy() <= 1).all()


# --- inside a real transformers.Trainer -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("with_trainer", [True, False])
def test_trainer_callback_logs_metrics_through_the_trainer(tmp_path, tiny_tokenizer, tiny_set, with_trainer):
    import torch
    from transformers import Trainer, TrainingArguments

    from tinymodels import tiny_neox

    from pythia_forensics.monitor.live import Monitor
    from pythia_forensics.monitor.trainer import MonitorCallback
    from pythia_forensics.sweep.store import ResultsStore

    model = tiny_neox(len(tiny_tokenizer), seed=1)
    torch.manual_seed(0)
    data = [{"input_ids": torch.randint(2, len(tiny_tokenizer), (12,)).tolist()} for _ in range(24)]
    for row in data:
        row["labels"] = row["input_ids"]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6,
                             logging_steps=100, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, learning_rate=1e-3)
    monitor = Monitor(tiny_set, every=3, results=tmp_path / "res", run="hf-run")
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tiny_tokenizer)
    trainer.add_callback(MonitorCallback(monitor, trainer=trainer if with_trainer else None))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "pf/tiny_pronoun/pronoun_gender/conflict_acc" in h]
    assert [h["step"] for h in logged] == [3, 6]
    rows = ResultsStore(tmp_path / "res").items()
    for entry in logged:
        at = rows[(rows["step"] == entry["step"]) & (rows["rule"] == "pronoun_gender") & (rows["split"] == "heldout")]
        conflict = at[at["condition"] == "conflict"]
        assert entry["pf/tiny_pronoun/pronoun_gender/conflict_acc"] == pytest.approx(conflict["correct"].mean())
        assert entry["pf/tiny_pronoun/pronoun_gender/contrast_margin"] == pytest.approx(conflict["margin"].mean(), rel=1e-9)
        assert "pf/tiny_pronoun/reflexive_gender/agree_acc" in entry
    assert (tmp_path / "res" / "summary.parquet").exists()  # on_train_end closed the monitor


@pytest.mark.slow
def test_trainer_callback_support_windows_equal_the_corpus_ground_truth(tmp_path, tiny_set):
    """Inside a real Trainer: the mini stream in order (an IterableDataset, so no shuffling),
    MonitorCallback.collator queues each batch, the callback shows the monitor each step's
    batches and closes a window every W steps. Per-window counts must equal the generator's ground truth (ground_truth.csv), an
    independent count over the same tokens; a batch counted into the wrong window (the data
    loader fetching ahead of the step) shows up as a mismatch."""
    import torch
    from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments

    from tinymodels import tiny_neox

    from pythia_forensics.corpus.indexed import IndexedDataset
    from pythia_forensics.experiments.mini.corpus import EOD_ID, GROUND_TRUTH_FILE, TOKENS_FILE
    from pythia_forensics.monitor.live import Monitor
    from pythia_forensics.monitor.trainer import MonitorCallback

    cfg, _, corpus = _reduced_corpus(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(corpus)
    stream = np.asarray(IndexedDataset(corpus / TOKENS_FILE).tokens, dtype=np.int64)
    T, W, B = cfg.train.tokens_per_step, cfg.corpus.window_steps, cfg.train.batch_size
    steps = cfg.train.steps + 1  # one step past the end gives the last window its look-ahead
    rows = stream[:steps * T].reshape(steps * B, T // B)

    class Rows(torch.utils.data.IterableDataset):
        def __iter__(self):
            for row in rows:
                yield {"input_ids": torch.from_numpy(row.copy())}

    monitor = Monitor(tiny_set, every=W, tokenizer=tok, support="all", rows="stream", eod_id=EOD_ID,
                      results=tmp_path / "res", run="hf-support")
    shown = []

    def collate(examples):
        x = torch.stack([e["input_ids"] for e in examples])
        shown.append(x.clone())
        return {"input_ids": x, "labels": x}

    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=B, max_steps=steps,
                             logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, learning_rate=1e-3, dataloader_num_workers=0)
    callback = MonitorCallback(monitor)
    trainer = Trainer(model=tiny_neox(len(tok), seed=2), args=args, train_dataset=Rows(),
                      data_collator=callback.collator(collate))
    callback.trainer = trainer
    trainer.add_callback(callback)
    trainer.train()
    # the Trainer trained on exactly the stream, in order
    np.testing.assert_array_equal(torch.cat(shown).reshape(-1).numpy()[:steps * T], stream[:steps * T])
    got = monitor.support_frame()
    _assert_windows_equal_truth(got, pd.read_csv(corpus / GROUND_TRUTH_FILE))
