"""Numerical audit: fp32 batched reproduces fp32 batch-1; bf16 drift is found and reported.

Margins are checked against a plain fp32 (or bf16) one-item loop written here, not against
the scorer's own output.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from pythia_forensics.scoring.audit import audit, sample_items
from pythia_forensics.errors import AuditError
from pythia_forensics.scoring.probes import load_probes


def manual_margin(model, tok, item, *, n_rows: int) -> float:
    """log p(target|prefix) - log p(foil|prefix): one item, one forward per candidate, fp32 softmax."""
    core = item.prefix.rstrip()
    ws = item.prefix[len(core):]   # trailing whitespace belongs to the candidate (no stray "Ġ")
    ctx = tok.encode(core, add_special_tokens=False)

    def logp(candidate: str) -> float:
        ids = tok.encode(ws + candidate, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([ctx + ids])).logits[0].float()
        lp = logits[:, :n_rows].log_softmax(-1)
        return float(sum(lp[len(ctx) - 1 + k, t] for k, t in enumerate(ids)))

    return logp(item.target) - logp(item.foil)


def test_sample_is_stratified_seeded_and_validated():
    items = load_probes("pronoun_gender").items
    a, b = sample_items(items, 24), sample_items(items, 24)
    assert [i.item_id for i in a] == [i.item_id for i in b] and len(a) == 24
    groups = Counter((i.rule, i.condition, i.split) for i in items)
    got = Counter((i.rule, i.condition, i.split) for i in a)
    assert set(got) == set(groups) and max(got.values()) - min(got.values()) <= 1
    assert sample_items(items, 10**6) == list(items) and len(sample_items(items, 0.1)) == round(0.1 * len(items))
    assert [i.item_id for i in sample_items(items, 24, seed=1)] != [i.item_id for i in a]
    for bad in (0, -3, 1.5, "ten"):
        with pytest.raises(AuditError):
            sample_items(items, bad)


@pytest.mark.slow
def test_fp32_batched_matches_fp32_batch1(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = audit(str(tiny_checkpoint), probes="pronoun_gender", dtype="float32", batch_size=16,
                   sample=48, device="cpu")
    assert report.verdict == "pass" and not report.failed
    assert report.flips == 0 and report.nonfinite == 0 and report.max_abs_delta <= 1e-4
    assert report.n_items == 48 and report.batch_size_used == 16 and report.dtype == "float32"
    # the reference itself is right: an independent one-item loop gives the same margins
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    by_id = {i.item_id: i for i in load_probes("pronoun_gender").items}
    for row in report.items[:6]:
        expected = manual_margin(model, tok, by_id[row.item_id], n_rows=len(tok))
        assert row.margin_reference == pytest.approx(expected, abs=1e-4)
        assert row.margin == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_bf16_drift_on_pythia_shaped_model():
    """Pythia-70m's width and vocabulary (2 layers), real tokenizer: bf16 moves margins."""
    from tinymodels import neox_tokenizer, tiny_neox

    torch.set_num_threads(1)
    tok = neox_tokenizer()
    model = tiny_neox(50304, hidden=512, layers=2, heads=8, max_positions=64, seed=0)
    n_rows = min(len(tok), 50304)
    report = audit(model, tokenizer=tok, probes="pronoun_gender", dtype="bfloat16", batch_size=16,
                   sample=24, device="cpu")
    assert report.dtype == "bfloat16" and report.n_items == 24
    assert report.max_abs_delta > report.tolerance and report.verdict in ("drift", "fail")
    assert report.failed and (report.verdict == "fail") == (report.flips > 0)
    print(f"bf16 vs fp32 batch 1 on a Pythia-shaped model: max |d| {report.max_abs_delta:.4g} nats, "
          f"mean {report.mean_abs_delta:.4g}, flips {report.flips}/{report.n_items}")
    # the drift is real: an independent bf16 forward, one item at a time, moves margins too,
    # and the audit's fp32 reference agrees with an independent fp32 loop.
    by_id = {i.item_id: i for i in load_probes("pronoun_gender").items}
    worst = max(report.items, key=lambda i: abs(i.delta))
    item = by_id[worst.item_id]
    fp32 = manual_margin(model, tok, item, n_rows=n_rows)
    assert worst.margin_reference == pytest.approx(fp32, abs=1e-4)
    bf16 = manual_margin(model.to(torch.bfloat16), tok, item, n_rows=n_rows)
    assert abs(bf16 - fp32) > report.tolerance
    assert next(model.parameters()).dtype == torch.bfloat16  # (the test cast it; audit copied)


def test_cli_exit_status_and_report(tiny_checkpoint, tmp_path, run_cli):
    code, out, _ = run_cli(["audit", str(tiny_checkpoint), "--probes", "pronoun_gender", "--dtype", "float32",
                         "--batch-size", "8", "--sample", "16", "--device", "cpu"])
    assert code == 0 and "pass" in out
    code, out, _ = run_cli(["audit", str(tiny_checkpoint), "--probes", "pronoun_gender", "--dtype", "bfloat16",
                         "--batch-size", "8", "--sample", "16", "--device", "cpu",
                         "--out", str(tmp_path / "a.json")])
    data = json.loads((tmp_path / "a.json").read_text())
    assert code == 1 and data["verdict"] in ("drift", "fail") and data["max_abs_delta"] > 1e-4
    assert len(data["items"]) == 16


@pytest.mark.parametrize("extra, needle", [(["--batch-size", "lots"], "batch-size"),
                                           (["--out", "x.txt"], ".txt"),
                                           (["--dtype", "float8"], "float8")])
def test_cli_user_mistakes_exit_2(tiny_checkpoint, run_cli, extra, needle):
    code, _, err = run_cli(["audit", str(tiny_checkpoint), "--probes", "pronoun_gender", "--device", "cpu", *extra])
    assert code == 2 and needle in err and err.count("\n") == 1


def test_pick_revisions_spreads_over_the_grid():
    from pythia_forensics.scoring.audit import pick_revisions

    grid = [f"step{s}" for s in (0, 1, 2, 4, 8, 1000, 2000, 3000)]
    assert pick_revisions(grid, 3) == ["step0", "step8", "step3000"]
    assert pick_revisions(grid, 1) == ["step0"] and pick_revisions(grid, 20) == grid
    with pytest.raises(AuditError):
        pick_revisions(grid, 0)


def test_audit_revisions_of_a_local_suite(tmp_path, tiny_tokenizer, run_cli):
    import json as _json

    from tinymodels import save_checkpoint, tiny_neox

    model_dir = tmp_path / "suite" / "tiny"
    for seed, step in enumerate((0, 10, 20)):
        save_checkpoint(model_dir / f"step{step}", tiny_neox(len(tiny_tokenizer), seed=seed), tiny_tokenizer)
    (model_dir / "manifest.json").write_text(_json.dumps({"model": "tiny", "steps": [0, 10, 20]}))
    code, out, _ = run_cli(["audit", str(model_dir), "--revisions", "2", "--probes", "pronoun_gender",
                         "--dtype", "float32", "--batch-size", "8", "--sample", "8", "--device", "cpu",
                         "--out", str(tmp_path / "a.json")])
    data = _json.loads((tmp_path / "a.json").read_text())
    assert code == 0 and [r["revision"] for r in data["reports"]] == ["step0", "step20"]
    assert all(r["verdict"] == "pass" and r["model"] == "tiny" for r in data["reports"])
    # different revisions really were loaded: their reference margins differ
    m0 = [i["margin_reference"] for i in data["reports"][0]["items"]]
    m2 = [i["margin_reference"] for i in data["reports"][1]["items"]]
    assert m0 != m2
