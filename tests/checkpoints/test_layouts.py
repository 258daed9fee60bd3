"""The checkpoint folders people already have (issue #13 point 2).

A Hugging Face Trainer `output_dir` (`checkpoint-<N>/` with `trainer_state.json`, no
manifest) and a folder named by `--step-pattern` are replayed, health-checked and audited
like the tool's own `step<N>/` suites. Scores are checked against a plain fp32 loop written
here (one item, one forward per candidate, log-softmax over every output row); sizes against
the model's own parameter count.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tinymodels import save_checkpoint, tiny_neox

from pythia_forensics.sweep.store import ResultsStore
from paths import DATA

PROBE_YAML = DATA / "probes" / "small.yaml"
TRAINER_STEPS = (100, 200, 300)


def _plain_margin_rows(model, tokenizer, items) -> dict[str, tuple[float, float]]:
    """item_id -> (log p(target), log p(foil)): fp32, one item at a time, all output rows."""
    import torch

    out = {}
    for item in items:
        prefix = item.prefix.rstrip()
        values = []
        for cand in (item.target, item.foil):
            cont = item.prefix[len(prefix):] + cand
            p = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            c = tokenizer(cont, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([p + c])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            values.append(float(sum(logp[len(p) - 1 + k, t] for k, t in enumerate(c))))
        out[item.item_id] = tuple(values)
    return out


def _write_trainer_dir(root: Path, tokenizer, steps=TRAINER_STEPS) -> tuple[Path, dict[int, object]]:
    """What `Trainer(output_dir=root).train()` leaves: checkpoint-<N>/ with trainer_state.json,
    optimizer and RNG state beside the weights, a final model at the top, a runs/ log folder."""
    models = {}
    for i, step in enumerate(steps):
        net = tiny_neox(len(tokenizer), seed=200 + i)
        folder = save_checkpoint(root / f"checkpoint-{step}", net, tokenizer)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": i + 1.0,
                                                                "log_history": []}))
        (folder / "optimizer.pt").write_bytes(os.urandom(64))
        (folder / "rng_state.pth").write_bytes(os.urandom(32))
        models[step] = net
    save_checkpoint(root, models[steps[-1]], tokenizer)
    (root / "runs").mkdir()
    return root, models


@pytest.fixture(scope="module")
def trainer_dir(tmp_path_factory, tiny_tokenizer):
    return _write_trainer_dir(tmp_path_factory.mktemp("trainer") / "output_dir", tiny_tokenizer)


def test_replay_trainer_output_dir_equals_plain_loop(trainer_dir, tiny_tokenizer, tmp_path):
    from pythia_forensics.scoring.probes import load_probes
    from pythia_forensics.sweep.replay import replay

    root, models = trainer_dir
    assert not (root / "manifest.json").exists()
    summary = replay(str(root), str(PROBE_YAML), results=tmp_path / "res", progress=False)
    assert summary.revisions_scored == len(TRAINER_STEPS)
    store = ResultsStore(tmp_path / "res")
    rows = store.items()
    assert sorted(rows["step"].unique()) == list(TRAINER_STEPS)
    assert set(rows["revision"]) == {f"checkpoint-{s}" for s in TRAINER_STEPS}
    items = load_probes(PROBE_YAML).items
    for step, net in models.items():
        want = _plain_margin_rows(net, tiny_tokenizer, items)
        got = rows[rows.step == step].set_index("item_id")
        assert len(got) == len(items)
        for item_id, (lt, lf) in want.items():
            np.testing.assert_allclose(got.loc[item_id, ["logp_target", "logp_foil"]].astype(float), [lt, lf],
                                       atol=1e-4, rtol=0)
    # sizes come from config.json and the weight headers: the model's own count
    net = models[TRAINER_STEPS[-1]]
    total = sum(p.numel() for p in net.parameters())
    emb = net.get_input_embeddings().weight.numel() + net.get_output_embeddings().weight.numel()
    meta = store.models().set_index("model").loc[root.name]
    assert (meta["params_total"], meta["params_nonembedding"]) == (total, total - emb)
    assert (meta["layers"], meta["d_model"]) == (net.config.num_hidden_layers, net.config.hidden_size)


def test_step_pattern_cli_replay_and_health(tiny_tokenizer, tmp_path, run_cli, monkeypatch, capsys):
    """Folders named `ckpt_<N>k` are a model only with --step-pattern (group 1 is the step)."""
    model_dir = tmp_path / "run"
    for n in (1, 2):
        save_checkpoint(model_dir / f"ckpt_{n}k", tiny_neox(len(tiny_tokenizer), seed=300 + n), tiny_tokenizer)
    # the option exports PF_STEP_PATTERN for the whole command; setenv restores it afterwards
    monkeypatch.setenv("PF_STEP_PATTERN", "")
    capsys.readouterr()  # drop the checkpoint writer's progress bars
    code, _, err = run_cli(["replay", str(model_dir), "-p", str(PROBE_YAML), "--results", str(tmp_path / "r")])
    assert code == 2 and "--step-pattern" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["replay", str(model_dir), "-p", str(PROBE_YAML), "--results", str(tmp_path / "r"),
                              "--step-pattern", r"ckpt_(\d+)k"])
    assert code in (0, None), err
    rows = ResultsStore(tmp_path / "r").items()
    assert sorted(rows["step"].unique()) == [1, 2] and set(rows["revision"]) == {"ckpt_1k", "ckpt_2k"}
    code, out, err = run_cli(["health", str(model_dir), "--step-pattern", r"ckpt_(\d+)k", "--all"])
    assert code in (0, None), err
    assert "ckpt_1k" in out and "ckpt_2k" in out and "2 revisions" in out


def test_health_on_trainer_dir_without_manifest(trainer_dir):
    from pythia_forensics.checkpoints.health import check_health

    root, _ = trainer_dir
    report = check_health(str(root), progress=False)
    assert [r.revision for r in report.rows] == [f"checkpoint-{s}" for s in TRAINER_STEPS]
    assert [r.step for r in report.rows] == list(TRAINER_STEPS)
    assert not report.failed


def test_suite_folder_of_trainer_dirs(tmp_path, tiny_tokenizer):
    """A suite folder is a folder of model folders, each in any layout; manifests optional."""
    from pythia_forensics.checkpoints.registry import load_local_suite

    _write_trainer_dir(tmp_path / "suite" / "run-a", tiny_tokenizer, steps=(10, 20))
    net = tiny_neox(len(tiny_tokenizer), seed=5)
    save_checkpoint(tmp_path / "suite" / "run-b" / "step0", net, tiny_tokenizer)
    (tmp_path / "suite" / "notes").mkdir()
    suite = load_local_suite(tmp_path / "suite")
    assert suite.names == ("run-a", "run-b")
    assert suite.model("run-a").revisions == ("checkpoint-10", "checkpoint-20")
    assert suite.model("run-b").params_total == sum(p.numel() for p in net.parameters())
    frame = pd.DataFrame({"s": [m.steps for m in suite.models]})
    assert frame["s"].tolist() == [(10, 20), (0,)]
