"""Pre-registration: an honest lock is scored, a lock newer than the results is refused."""
from __future__ import annotations

import json
import shutil

import pytest

from pythia_forensics.analysis.dynamics import analyze, load_config
from pythia_forensics.errors import ConfigError, PreregError
from pythia_forensics.analysis.prereg import lock, parse_predictions, read_lock, ledger
from synthetic_results import suite_items, suite_models, write_store

PREDICTIONS = """\
split: heldout
predictions:
  - mini-xs pronoun_gender DISPLACED
  - mini-xl pronoun_gender DISPLACED
  - mini-l pronoun_gender RECOVERED|UNSTABLE
  - mini-m reflexive_gender DISPLACED
  - pythia-70m pronoun_gender DISPLACED
  - id: size-final
    claim: rho(size, final) > 0
  - rho(params_nonembedding, depth) < 0 for pronoun_gender
  - rho(size, depth) > 0.5 for pronoun_gender
"""


@pytest.fixture(scope="module")
def locked_store(tmp_path_factory):
    """PREDICTIONS locked into an empty folder, then the suite written after the lock (replay
    runs after the lock), once for the module. Read-only: tests that write copy it."""
    root = tmp_path_factory.mktemp("locked")
    path = root / "predictions.yaml"
    path.write_text(PREDICTIONS)
    lock_file = lock(path, root / "res")
    write_store(root / "res", suite_items(), models=suite_models())
    return root / "res", lock_file


@pytest.fixture
def old_results(tmp_path, locked_store):
    """The suite's results without a lock: a lock made now is newer than every stored row."""
    results = shutil.copytree(locked_store[0], tmp_path / "res")
    (results / locked_store[1].name).unlink()
    return results


@pytest.fixture
def predictions(tmp_path):
    path = tmp_path / "predictions.yaml"
    path.write_text(PREDICTIONS)
    return path


def test_honest_lock_is_scored(locked_store):
    results, lock_file = locked_store
    assert read_lock(results)["config_sha256"] == load_config().sha256
    table = ledger(analyze(results), results).set_index("id")
    # finals: xs 0 (displaced), xl .9 (recovered), l .8 (recovered); reflexive mini-m: void control
    assert table.loc["p1", "status"] == "pass" and table.loc["p1", "observed"] == "DISPLACED"
    assert table.loc["p2", "status"] == "fail" and table.loc["p2", "observed"] == "RECOVERED"
    assert table.loc["p3", "status"] == "pass"
    assert table.loc["p4", "status"] == "void" and "agree control invalid" in table.loc["p4", "detail"]
    assert table.loc["p5", "status"] == "void" and "no results" in table.loc["p5", "detail"]
    # finals rise with size in both rules (rho = 1 each): pass; depth falls: rho = -1
    assert table.loc["size-final", "status"] == "pass"
    assert table.loc["p7", "status"] == "pass"
    assert table.loc["p8", "status"] == "fail"
    assert lock_file.exists()


def test_lock_newer_than_results_is_refused(old_results, predictions):
    results = old_results
    lock(predictions, results)  # results already written: the predictions could be post hoc
    with pytest.raises(PreregError, match="after the results they govern"):
        ledger(analyze(results), results)


def test_only_claims_on_earlier_results_are_late(tmp_path):
    items = suite_items(rules=("pronoun_gender",))
    results = write_store(tmp_path / "res", items[items["model"] == "mini-xs"])
    path = tmp_path / "p.yaml"
    path.write_text("predictions:\n  - mini-s pronoun_gender DISPLACED\n")
    lock(path, results)
    write_store(results, items[items["model"] == "mini-s"])
    assert ledger(analyze(results), results)["status"].tolist() == ["pass"]
    (results / "prereg.lock.json").rename(tmp_path / "old.lock")
    path.write_text("predictions:\n  - mini-xs pronoun_gender DISPLACED\n")
    lock(path, results)
    with pytest.raises(PreregError, match="mini-xs"):
        ledger(analyze(results), results)


def test_tampered_lock_and_changed_thresholds_are_refused(tmp_path, old_results, predictions):
    results = old_results
    lock(predictions, results)  # late, but tampering and threshold checks come first
    override = tmp_path / "cfg.yaml"
    override.write_text("verdicts:\n  displaced_final_max: 0.3\n")
    with pytest.raises(PreregError, match="thresholds changed"):
        ledger(analyze(results, config=override), results)
    path = results / "prereg.lock.json"
    body = json.loads(path.read_text())
    body["claims"][1]["verdicts"] = ["RECOVERED"]
    path.write_text(json.dumps(body))
    with pytest.raises(PreregError, match="edited after locking"):
        ledger(analyze(results), results)


def test_lock_once_and_grammar_errors(tmp_path, predictions):
    lock(predictions, tmp_path / "res")
    with pytest.raises(PreregError, match="already exists"):
        lock(predictions, tmp_path / "res")
    bad = tmp_path / "bad.yaml"
    bad.write_text("predictions:\n  - mini-xs pronoun_gender DISPLACD\n")
    with pytest.raises(ConfigError, match="unknown verdict 'DISPLACD'"):
        lock(bad, tmp_path / "res2")
    bad.write_text("predictions:\n  - rho(size, loss) > 0\n")
    with pytest.raises(ConfigError, match="metric one of"):
        parse_predictions(bad)
    bad.write_text("predictions:\n  - the model forgets it all\n")
    with pytest.raises(ConfigError, match="cannot read claim"):
        parse_predictions(bad)
    assert not (tmp_path / "res2" / "prereg.lock.json").exists()


def test_no_lock_no_ledger(old_results):
    results = old_results
    assert ledger(analyze(results), results) is None
