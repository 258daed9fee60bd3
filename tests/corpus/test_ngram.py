"""The n-gram surface model (``support --mode ngram``) against a plain re-implementation of
stupid backoff written here from Brants et al. (2007): counts by brute force over the stream
prefix, scores item by item, per-(rule, condition, split) summaries."""
import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml

from pythia_forensics.constants import probes_dir
from test_support import make_mini_corpus

from pythia_forensics.corpus.ngram import count_ngram


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return make_mini_corpus(tmp_path_factory.mktemp("ngram") / "mini", demo=False)


def reference_items(corpus):
    """The shipped batteries read as plain YAML, tokenized by transformers."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(corpus)
    enc = lambda s: tuple(tok(s, add_special_tokens=False)["input_ids"])
    items = []
    for path in sorted(p for p in probes_dir().glob("*.yaml") if p.name != "lexicon.yaml"):
        for it in yaml.load(path.read_text(), Loader=yaml.CSafeLoader)["items"]:
            stripped = it["prefix"].rstrip()
            ws = it["prefix"][len(stripped):]
            items.append(dict(item_id=it["item_id"], rule=it["rule"], condition=it["condition"],
                              split=it["split"], ctx=enc(stripped), t=enc(ws + it["target"]), f=enc(ws + it["foil"])))
    return items


def brute_counts(corpus, budget, max_n):
    """Every n-gram (n <= max_n) inside one document whose last token is before ``budget``."""
    from pythia_forensics.corpus.indexed import IndexedDataset

    ds = IndexedDataset(corpus / "tokens")
    counts, offset = Counter(), 0
    for d in range(len(ds)):
        doc = ds[d].tolist()
        for i in range(len(doc)):
            for n in range(1, max_n + 1):
                if i + n <= len(doc) and offset + i + n - 1 < budget:
                    counts[tuple(doc[i:i + n])] += 1
        offset += len(doc)
    return counts


def sb_score(counts, N, hist, w):
    """Stupid backoff, recursively, as in the paper's formula."""
    if not hist:
        c = counts.get((w,), 0)
        return (c if c else 0.5) / N
    c = counts.get(hist + (w,), 0)
    return c / counts[hist] if c else 0.4 * sb_score(counts, N, hist[1:], w)


def ref_logp(counts, N, ctx, cont, order):
    total = 0.0
    for j, w in enumerate(cont):
        seq = ctx + cont[:j]
        hist = seq[max(len(seq) - (order - 1), 0):] if order > 1 else ()
        total += math.log(sb_score(counts, N, tuple(hist), w))
    return total


@pytest.mark.slow
def test_ngram_scores_equal_an_independent_stupid_backoff_item_by_item(mini):
    meta = json.loads((mini / "corpus.json").read_text())
    width = meta["tokens_per_step"] * meta["window_steps"]
    summary, per = count_ngram(mini, "all", orders="2,5", progress=False, per_item=True)
    n_tok = int(summary.tokens.max())
    assert n_tok == meta["train_tokens"]
    items = reference_items(mini)
    budgets = sorted(set(summary.tokens))
    assert len(budgets) >= 2
    for budget in (budgets[0], budgets[-1]):
        assert budget == min(width * (budgets.index(budget) + 1), n_tok)
        counts = brute_counts(mini, budget, 5)
        for order in (2, 5):
            got = per[(per.tokens == budget) & (per.order == order)].set_index("item_id")
            assert sorted(got.index) == sorted(it["item_id"] for it in items)
            ref_rows = []
            for it in items:
                g = got.loc[it["item_id"]]
                lt = ref_logp(counts, budget, it["ctx"], it["t"], order)
                lf = ref_logp(counts, budget, it["ctx"], it["f"], order)
                assert (g.rule, g.condition, g.split) == (it["rule"], it["condition"], it["split"])
                assert g.logp_target == pytest.approx(lt, rel=1e-12)
                assert g.logp_foil == pytest.approx(lf, rel=1e-12)
                ref_rows.append(dict(rule=it["rule"], condition=it["condition"], split=it["split"],
                                     correct=lt > lf, diff=lt / len(it["t"]) - lf / len(it["f"])))
                assert g.correct == (lt > lf)
            ref = pd.DataFrame(ref_rows).groupby(["rule", "condition", "split"])
            s = summary[(summary.tokens == budget) & (summary.order == order)].set_index(
                ["rule", "condition", "split"])
            assert len(s) == ref.ngroups
            for key, g in ref:
                assert s.loc[key, "accuracy"] == pytest.approx(g.correct.mean(), abs=1e-12)
                assert s.loc[key, "mean_norm_logp_diff"] == pytest.approx(g["diff"].mean(), rel=1e-9)
                assert s.loc[key, "n_items"] == len(g)
    # the surface model is not trivial here: some cell is solved, some is not
    final = summary[summary.tokens == n_tok]
    assert final.accuracy.max() > final.accuracy.min()


@pytest.mark.parametrize("argv, words", [
    (["--orders", "0"], "--orders"),
    (["--orders", "9"], "--orders"),
    (["--orders", "2,x"], "--orders"),
    (["--token-limit", "10000000"], "beyond the stream"),
])
def test_bad_ngram_input_is_one_line_exit_2(mini, run_cli, argv, words):
    code, out, err = run_cli(["support", str(mini), "--mode", "ngram", "--probes", "all", *argv])
    assert code == 2
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_candidate_that_tokenizes_to_nothing_is_refused(mini, tmp_path, run_cli):
    src = probes_dir() / "pronoun_gender.yaml"
    data = yaml.safe_load(src.read_text())
    data["items"][0]["foil"] = ""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    code, out, err = run_cli(["support", str(mini), "--mode", "ngram", "--probes", str(bad)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_cli_writes_the_table_and_per_item_rows(mini, tmp_path, run_cli):
    out, items = tmp_path / "ng.csv", tmp_path / "items.csv"
    code, stdout, err = run_cli(["support", str(mini), "--mode", "ngram", "--probes", "all", "--orders", "2,5",
                                 "--out", str(out), "--per-item", str(items)])
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table.columns) == ["rule", "condition", "split", "order", "step", "tokens", "accuracy",
                                   "mean_norm_logp_diff", "n_items", "n_unseen", "mode"]
    assert set(table.order) == {2, 5}
    meta = json.loads((mini / "corpus.json").read_text())
    assert (table.step * meta["tokens_per_step"]).clip(upper=meta["train_tokens"]).equals(table.tokens)
    per = pd.read_csv(items)
    assert len(per) == table.n_items.sum()
