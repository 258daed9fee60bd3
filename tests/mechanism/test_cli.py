"""`pythia-forensics mechanism`: writes tidy rows once, resumes, refuses in one line (#30)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pythia_forensics.cli import main
from tests.tinymodels import save_checkpoint, tiny_neox, train_bpe_tokenizer

ROWS = [
    {"item_id": "p1", "rule": "pronoun_gender", "condition": "conflict", "split": "heldout",
     "prefix": "Mia cried because", "target": " she", "foil": " he"},
    {"item_id": "p2", "rule": "pronoun_gender", "condition": "agree", "split": "heldout",
     "prefix": "Tom cried because", "target": " he", "foil": " she"},
]


def _setup(tmp_path, rows=ROWS):
    tok = train_bpe_tokenizer()
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_neox(len(tok), seed=4), tok)
    probes = tmp_path / "pg.jsonl"
    probes.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return ckpt, probes, tok


def test_writes_rows_that_sum_to_the_gap_and_resumes(tmp_path, capsys):
    ckpt, probes, tok = _setup(tmp_path)
    results = tmp_path / "R"
    with pytest.raises(SystemExit) as ex:
        main(["mechanism", str(ckpt), "--probes", str(probes), "--results", str(results)])
    assert ex.value.code in (0, None)
    files = list((results / "mechanism" / "decomposition").rglob("*.parquet"))
    assert len(files) == 1
    frame = pd.read_parquet(files[0])
    from transformers import GPTNeoXForCausalLM
    model = GPTNeoXForCausalLM.from_pretrained(ckpt).eval()
    for row in ROWS:
        ids = tok(row["prefix"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        t, f = (tok(row[k], add_special_tokens=False)["input_ids"][0] for k in ("target", "foil"))
        got = frame[frame.item_id == row["item_id"]].contribution.sum()
        assert abs(got - float(logits[t] - logits[f])) < 1e-4
    mtime = files[0].stat().st_mtime_ns
    with pytest.raises(SystemExit):
        main(["mechanism", str(ckpt), "--probes", str(probes), "--results", str(results)])
    assert "already done" in capsys.readouterr().out
    assert files[0].stat().st_mtime_ns == mtime


def test_multi_token_candidate_is_one_line_exit_2(tmp_path, capsys):
    rows = [dict(ROWS[0], target=" Xqzvwobbly"), ROWS[1]]
    ckpt, probes, _ = _setup(tmp_path, rows)
    capsys.readouterr()  # drop save_pretrained's progress bar
    with pytest.raises(SystemExit) as ex:
        main(["mechanism", str(ckpt), "--probes", str(probes), "--results", str(tmp_path / "R")])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "tokens" in err and "\n" not in err and "Traceback" not in err
    assert not list((tmp_path / "R").rglob("*.parquet"))
