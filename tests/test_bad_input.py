"""Issue #14: bad input never crashes and never scores garbage.

Every case is a real command run in-process (the `run_cli` fixture): it must end with the
documented exit status (2 for a user mistake or unusable input), exactly one line on stderr
(no traceback), no file left behind, and no marker file from any payload. Cases are grouped
by class (probe files, option values, output locations, checkpoints, suites); `CASES_TRIED`
counts them for the issue's closing note.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinymodels import save_checkpoint, tiny_neox, train_bpe_tokenizer

DATA = Path(__file__).parent / "data" / "probes"
GOOD_ITEM = {"item_id": "a1", "rule": "pronoun_gender", "condition": "conflict", "split": "train",
             "prefix": "Mia cried because", "target": " she", "foil": " he"}


# --- helpers ---------------------------------------------------------------------------------
def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _stderr_lines(err: str) -> list[str]:
    # progress bars redraw with "\r"; a line is what ends in "\n"
    return [line for line in err.splitlines() if line.strip()]


def _assert_clean(code, err, *, fragment: str | None = None, status: int = 2) -> str:
    lines = _stderr_lines(err)
    assert code == status, (code, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(("error: ", "interrupted: ")), lines[0]
    if fragment is not None:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _yaml_item(extra: str = "") -> str:
    body = "\n".join(f"  {k}: {json.dumps(v)}" for k, v in GOOD_ITEM.items())
    return "items:\n-" + body[1:] + "\n" + extra


def _alias_bomb() -> str:
    """The classic 'billion laughs' in an item's meta: 9 levels of 9 aliases (9**9 leaves)."""
    lines = [_yaml_item("  meta:\n    a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n")]
    names = "abcdefghi"
    for prev, cur in zip(names, names[1:]):
        lines.append(f"    {cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]\n")
    return "".join(lines)


def _jsonl(**changes) -> str:
    return json.dumps({**GOOD_ITEM, **changes}) + "\n"


# --- probe files: every way a file can be malformed or hostile --------------------------------
PROBE_FILES = {
    # name: (suffix, content (str or bytes), fragment of the one-line error)
    "deep_json": (".jsonl", '{"item_id": "a", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "nested more than"),
    "deep_yaml": (".yaml", _yaml_item("  meta: {x: " + "[" * 3000 + "]" * 3000 + "}\n"), "nested more than"),
    "bigint_json": (".jsonl", _jsonl()[:-2] + ', "meta": {"x": ' + "9" * 5000 + "}}\n", "5,000 digits"),
    "bigint_yaml": (".yaml", _yaml_item("  meta: {x: " + "9" * 5000 + "}\n"), "5,000 digits"),
    "bigint_template": (".yaml", _yaml_item("  template: " + "7" * 5000 + "\n"), "5,000 digits"),
    "surrogate_json": (".jsonl", _jsonl()[:-2] + ', "template": "\\ud800"}\n', "lone surrogate"),
    "surrogate_yaml": (".yaml", _yaml_item('  meta: {x: "\\ud800"}\n'), "lone surrogate"),
    "surrogate_id": (".jsonl", _jsonl(item_id="\ud800x").replace("\\ud800", "\\ud800"), "lone surrogate"),
    "nonstring_key": (".yaml", _yaml_item("  1: x\n"), "non-string field name 1"),
    "nonstring_meta_key": (".yaml", _yaml_item("  meta: {2024-01-01: x}\n"), "non-string key"),
    "yaml_date_meta": (".yaml", _yaml_item("  meta: {when: 2024-01-02}\n"), "date"),
    "yaml_binary_meta": (".yaml", _yaml_item("  meta: {blob: !!binary aGVsbG8=}\n"), "bytes"),
    "yaml_timestamp_meta": (".yaml", _yaml_item("  meta: {at: 2024-01-02 10:00:00}\n"), "datetime"),
    "alias_bomb": (".yaml", _alias_bomb(), "alias"),
    "alias_cycle": (".yaml", "items:\n- &x {item_id: a, rule: r, condition: conflict, split: train, prefix: p, "
                    "target: t, foil: f, meta: {m: *x}}\n", "refers to itself"),
    "too_many_aliases": (".yaml", _yaml_item("  meta:\n    a: &a x\n    b: [" + ",".join(["*a"] * 1500) + "]\n"),
                         "alias uses"),
    "not_utf8": (".jsonl", _jsonl().encode() + b'{"item_id": "b\xff"}\n', ":2: not UTF-8"),
    "latin1_yaml": (".yaml", _yaml_item().encode().replace(b"Mia", b"M\xeda"), ":6: not UTF-8"),
    "python_tag": (".yaml", _yaml_item("  meta: !!python/object/apply:os.system ['touch MARKER']\n"), "not valid YAML"),
    "json_list_line": (".jsonl", "[1, 2]\n", "must be a JSON object"),
    "yaml_scalar_file": (".yaml", "just text\n", "items"),
    "empty_file": (".jsonl", "", "no probe items"),
    "bad_json_after_u2028": (".jsonl", _jsonl(prefix="a\u2028b", item_id="x") + "{oops\n", ":2: not valid JSON"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny GPT-NeoX revision (64 positions) and its tokenizer."""
    tok = train_bpe_tokenizer()
    return save_checkpoint(tmp_path_factory.mktemp("good") / "step100", tiny_neox(len(tok), max_positions=64), tok)


@pytest.mark.parametrize("name", sorted(PROBE_FILES))
def test_probe_file_is_one_line(name, checkpoint, tmp_path, run_cli, monkeypatch):
    suffix, content, fragment = PROBE_FILES[name]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"{name}{suffix}"
    (path.write_bytes if isinstance(content, bytes) else lambda c: path.write_text(c, encoding="utf-8",
                                                                                    errors="surrogatepass"))(content)
    before = _tree(tmp_path)
    code, out, err = run_cli(["probe", str(checkpoint), "--probes", str(path), "--out", str(tmp_path / "s.csv")])
    line = _assert_clean(code, err, fragment=fragment)
    assert f"{name}{suffix}" in line  # names the file
    assert _tree(tmp_path) == before  # nothing written, no marker from a payload
    assert not (tmp_path / "MARKER").exists()


def test_alias_bomb_is_refused_without_expanding(tmp_path):
    """The budget is charged during composition: the bomb's 9**9 leaves are never built."""
    import tracemalloc

    from pythia_forensics.errors import ProbeFormatError
    from pythia_forensics.scoring.probes import parse_probes

    tracemalloc.start()
    with pytest.raises(ProbeFormatError, match="alias"):
        parse_probes(_alias_bomb(), fmt="yaml", source="bomb.yaml")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20, peak  # the expanded tree would need > 3 GB


def test_file_size_bound(tmp_path, monkeypatch):
    from pythia_forensics.scoring import probes
    from pythia_forensics.errors import ProbeFormatError

    path = tmp_path / "big.jsonl"
    path.write_text(_jsonl() * 50)
    monkeypatch.setattr(probes, "PROBE_MAX_BYTES", 1000)
    with pytest.raises(ProbeFormatError, match="bytes, more than 1,000"):
        probes.load_probes(path)


def test_u2028_inside_a_string_is_accepted_with_true_line_numbers(tmp_path):
    from pythia_forensics.errors import ProbeFormatError
    from pythia_forensics.scoring.probes import load_probes

    path = tmp_path / "sep.jsonl"
    text = _jsonl(item_id="x1", prefix="Mia\u2028cried\u0085because") + _jsonl(item_id="x2") + "\n"
    path.write_text(text, encoding="utf-8")
    loaded = load_probes(path)
    assert [i.item_id for i in loaded.items] == ["x1", "x2"]
    assert loaded.items[0].prefix == "Mia\u2028cried\u0085because"
    path.write_text(text + _jsonl(item_id="x3", split="nope"), encoding="utf-8")
    with pytest.raises(ProbeFormatError) as info:
        load_probes(path)
    assert info.value.problems[0].startswith(f"{path}:4: field 'split'"), info.value.problems


# --- option values ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def suite(tmp_path_factory, checkpoint):
    """A local suite: DIR/tiny/{manifest.json, step100/, step200/} (two good revisions)."""
    root = tmp_path_factory.mktemp("suite")
    model = root / "tiny"
    for step in (100, 200):
        shutil.copytree(checkpoint, model / f"step{step}")
    (model / "manifest.json").write_text(json.dumps({"model": "tiny", "layers": 2, "d_model": 32, "heads": 4,
                                                     "tokens_per_step": 1024, "steps": [100, 200]}))
    return model


SMALL = str(DATA / "small.yaml")
OPTION_CASES = {
    "probe_batch_superscript": (["probe", "CKPT", "-p", SMALL, "--batch-size", "²"], "--batch-size '²'"),
    "probe_batch_zero": (["probe", "CKPT", "-p", SMALL, "--batch-size", "0"], "--batch-size '0'"),
    "probe_batch_arabic_digit": (["probe", "CKPT", "-p", SMALL, "--batch-size", "٣"], "--batch-size"),
    "replay_batch_superscript": (["replay", "SUITE", "-p", SMALL, "--results", "OUT/r", "--batch-size", "²"],
                                 "--batch-size '²'"),
    "replay_steps_superscript": (["replay", "SUITE", "-p", SMALL, "--results", "OUT/r", "--steps", "²"], "'²'"),
    "replay_steps_range_superscript": (["replay", "SUITE", "-p", SMALL, "--results", "OUT/r", "--steps", "1:²"],
                                       "'²'"),
    "audit_batch_superscript": (["audit", "CKPT", "-p", SMALL, "--batch-size", "²"], "--batch-size '²'"),
    "unknown_option": (["probe", "CKPT", "-p", SMALL, "--bogus"], "--bogus"),
    "missing_argument": (["probe"], "Missing argument"),
    "bad_int_option": (["audit", "CKPT", "-p", SMALL, "--sample", "x"], "--sample"),
}


def _argv(args, *, ckpt, suite_dir, out):
    swap = {"CKPT": str(ckpt), "SUITE": str(suite_dir)}
    return [swap.get(a, a.replace("OUT", str(out))) for a in args]


@pytest.mark.parametrize("name", sorted(OPTION_CASES))
def test_option_value_is_one_line(name, checkpoint, suite, tmp_path, run_cli, monkeypatch):
    args, fragment = OPTION_CASES[name]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(_argv(args, ckpt=checkpoint, suite_dir=suite, out=tmp_path))
    _assert_clean(code, err, fragment=fragment)
    assert _tree(tmp_path) == set()


# --- output locations: checked before any work starts ----------------------------------------
# (command template, which placeholder is the output); FILE_PARENT = a path under a regular file,
# DIR = an existing folder given where a file is wanted, FILE = a regular file given as a folder.
OUTPUT_CASES = {
    "probe_out_under_file": ["probe", "CKPT", "-p", SMALL, "--out", "FILE/s.csv"],
    "probe_out_is_dir": ["probe", "CKPT", "-p", SMALL, "--out", "DIR.csv"],
    "replay_results_is_file": ["replay", "SUITE", "-p", SMALL, "--results", "FILE"],
    "replay_results_under_file": ["replay", "SUITE", "-p", SMALL, "--results", "FILE/r"],
    "analyze_results_under_file": ["analyze", "--results", "FILE/r"],
    "figures_out_under_file": ["figures", "--results", "OUT/none", "--out", "FILE/figs"],
    "figures_out_is_file": ["figures", "--results", "OUT/none", "--out", "FILE"],
    "health_out_under_file": ["health", "SUITE", "--out", "FILE/h.json"],
    "health_out_is_dir": ["health", "SUITE", "--out", "DIR.json"],
    "health_results_is_file": ["health", "SUITE", "--results", "FILE"],
    "audit_out_under_file": ["audit", "CKPT", "-p", SMALL, "--out", "FILE/a.json"],
    "audit_out_is_dir": ["audit", "CKPT", "-p", SMALL, "--out", "DIR.json"],
    "support_out_under_file": ["support", "CORPUS", "--out", "FILE/s.csv"],
    "support_out_is_dir": ["support", "CORPUS", "--out", "DIR.csv"],
    "mini_train_out_is_file": ["mini", "train", "--out", "FILE"],
    "mini_sweep_out_under_file": ["mini", "sweep", "--out", "FILE/sweep"],
    "prereg_results_under_file": ["prereg", "lock", "PRED", "--results", "FILE/r"],
}


@pytest.mark.parametrize("name", sorted(OUTPUT_CASES))
def test_unwritable_output_is_refused_before_work(name, checkpoint, suite, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a regular file\n")
    (tmp_path / "DIR.csv").mkdir()
    (tmp_path / "DIR.json").mkdir()
    (tmp_path / "corpus.txt").write_text("Mia cried because she was sad.\n")
    (tmp_path / "pred.yaml").write_text("predictions: []\n")
    swap = {"CKPT": str(checkpoint), "SUITE": str(suite), "CORPUS": str(tmp_path / "corpus.txt"),
            "PRED": str(tmp_path / "pred.yaml")}
    argv = [swap.get(a, a.replace("OUT", str(tmp_path))) for a in OUTPUT_CASES[name]]
    before = _tree(tmp_path)
    code, out, err = run_cli(argv)
    _assert_clean(code, err)
    assert "accuracy" not in out  # refused before scoring, not after
    assert _tree(tmp_path) == before  # no .tmp, no partial output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(checkpoint, tmp_path, run_cli):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(["probe", str(checkpoint), "-p", SMALL, "--out", str(ro / "s.csv")])
        _assert_clean(code, err, fragment="cannot create files")
    finally:
        ro.chmod(0o755)


def test_output_check_is_real_not_a_permission_guess(tmp_path, monkeypatch):
    """The check tries to create a file (os.access says yes to root on a read-only mount)."""
    from pythia_forensics.cli import common
    from pythia_forensics.errors import OutputPathError

    def refuse(*_, **__):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputPathError, match="cannot create files in"):
        common.check_output_file(tmp_path / "x.csv")
    with pytest.raises(OutputPathError, match="cannot create files in"):
        common.check_output_dir(tmp_path / "new" / "deeper")


# --- checkpoints: unreadable, hostile, or unscoreable ----------------------------------------
def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _resave(folder: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _break(kind: str, folder: Path, marker: Path) -> None:
    import torch

    st = folder / "model.safetensors"
    data = st.read_bytes()
    if kind == "zero_byte":
        st.write_bytes(b"")
    elif kind == "truncated":
        st.write_bytes(data[: len(data) // 2])
    elif kind == "bad_header":
        st.write_bytes(b"\xff" * 8 + data[8:])
    elif kind == "not_safetensors":
        st.write_text("<html>404 not found</html>")
    elif kind in ("wrong_shape", "missing_tensor", "unexpected_tensor", "nan_weights", "inf_weight"):
        t = _tensors(folder)
        key = next(k for k in t if "dense_h_to_4h.weight" in k)
        if kind == "wrong_shape":
            t[key] = torch.zeros(t[key].shape[0] + 1, t[key].shape[1])
        elif kind == "missing_tensor":
            del t[key]
        elif kind == "unexpected_tensor":
            t["gpt_neox.layers.0.extra.weight"] = torch.zeros(3)
        elif kind == "nan_weights":
            t = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in t.items()}
        else:
            t[key] = t[key].clone()
            t[key][0, 0] = float("inf")
        _resave(folder, t)
    elif kind == "malicious_bin":
        st.unlink()

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        with open(folder / "pytorch_model.bin", "wb") as fh:
            pickle.dump({"gpt_neox.embed_in.weight": Payload()}, fh)
    elif kind == "bert_config":
        from transformers import BertConfig

        config = BertConfig(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64).to_dict()
        config["architectures"] = ["BertForMaskedLM"]
        (folder / "config.json").write_text(json.dumps(config))
    elif kind == "encoder_without_architectures":
        from transformers import BertConfig

        (folder / "config.json").write_text(json.dumps(BertConfig(vocab_size=320).to_dict()))
    elif kind == "no_tokenizer":
        for f in list(folder.iterdir()):
            if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
                f.unlink()
    else:
        raise AssertionError(kind)


CHECKPOINT_CASES = {
    "zero_byte": "empty (0 bytes)",
    "truncated": "not a readable safetensors file",
    "bad_header": "not a readable safetensors file",
    "not_safetensors": "not a readable safetensors file",
    "wrong_shape": "another shape",
    "missing_tensor": "missing from the weights",
    "unexpected_tensor": "no place in the model",
    "nan_weights": "non-finite weights",
    "inf_weight": "non-finite weights",
    "malicious_bin": "refused to unpickle",
    "bert_config": "BertForMaskedLM",
    "encoder_without_architectures": "encoder",
    "no_tokenizer": "no tokenizer",
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_CASES))
def test_probe_refuses_a_bad_checkpoint(kind, checkpoint, tmp_path, run_cli):
    folder = tmp_path / "step100"
    shutil.copytree(checkpoint, folder)
    marker = tmp_path / "PAYLOAD_RAN"
    _break(kind, folder, marker)
    before = _tree(tmp_path)
    code, out, err = run_cli(["probe", str(folder), "-p", SMALL, "--device", "cpu", "--out", str(tmp_path / "s.csv")])
    _assert_clean(code, err, fragment=CHECKPOINT_CASES[kind])
    assert "accuracy" not in out
    assert not marker.exists()
    assert _tree(tmp_path) == before


# replay: the first revision builds the skeleton (load_model), later ones are copied into it
# (load_weights_into); a damaged later revision must be refused on that path too.
REPLAY_KINDS = ("zero_byte", "truncated", "bad_header", "wrong_shape", "missing_tensor", "unexpected_tensor",
                "nan_weights", "malicious_bin", "bert_config")


@pytest.mark.parametrize("kind", REPLAY_KINDS)
def test_replay_refuses_a_bad_first_checkpoint(kind, suite, tmp_path, run_cli):
    """A sweep never scores a damaged revision and never stops on one (#15): the revision is
    skipped with one warning line, recorded with its reason, the good one is still scored, and
    the exit status (1) says that something failed. Here the damaged revision is the one the
    skeleton is built from (load_model)."""
    from pythia_forensics.sweep.replay import read_failures
    from pythia_forensics.sweep.store import ResultsStore

    model = tmp_path / "tiny"
    shutil.copytree(suite, model)
    marker = tmp_path / "PAYLOAD_RAN"
    _break(kind, model / "step100", marker)
    code, _, err = run_cli(["replay", str(model), "-p", SMALL, "--results", str(tmp_path / "r"), "--device", "cpu"])
    assert code == 1 and "Traceback" not in err, err[-3000:]
    skipped = [line for line in _stderr_lines(err) if line.startswith("warning: ") and " skipped " in line]
    assert len(skipped) == 1 and "tiny@step100 skipped" in skipped[0], err[-3000:]
    assert CHECKPOINT_CASES[kind] in skipped[0]
    assert not marker.exists()
    assert list(read_failures(tmp_path / "r")["revision"]) == ["step100"]
    assert set(ResultsStore(tmp_path / "r").items()["revision"]) == {"step200"}


def test_replay_refuses_every_bad_later_checkpoint(checkpoint, tmp_path, run_cli):
    """The same for revisions copied into an existing skeleton (load_weights_into): one good
    first revision, then one revision per kind of damage, in ONE sweep: each is skipped with
    its own warning line and reason, none stops the sweep, only the good one is scored."""
    from pythia_forensics.sweep.replay import read_failures
    from pythia_forensics.sweep.store import ResultsStore

    model = tmp_path / "tiny"
    bad = {f"step{200 + 100 * i}": kind for i, kind in enumerate(REPLAY_KINDS)}
    for revision in ("step100", *bad):
        shutil.copytree(checkpoint, model / revision)
    (model / "manifest.json").write_text(json.dumps({"model": "tiny", "layers": 2, "d_model": 32, "heads": 4,
                                                     "tokens_per_step": 1024,
                                                     "steps": [int(r[4:]) for r in ("step100", *bad)]}))
    marker = tmp_path / "PAYLOAD_RAN"
    for revision, kind in bad.items():
        _break(kind, model / revision, marker)
    code, _, err = run_cli(["replay", str(model), "-p", SMALL, "--results", str(tmp_path / "r"), "--device", "cpu"])
    assert code == 1 and "Traceback" not in err, err[-3000:]
    skipped = [line for line in _stderr_lines(err) if line.startswith("warning: ") and " skipped " in line]
    assert len(skipped) == len(bad), err[-3000:]
    for revision, kind in bad.items():
        line = next(x for x in skipped if f"tiny@{revision} skipped" in x)
        if kind != "bert_config":   # a later BERT config fails on the architecture, not the class name
            assert CHECKPOINT_CASES[kind] in line, line
    assert not marker.exists()
    assert sorted(read_failures(tmp_path / "r")["revision"]) == sorted(bad)
    assert set(ResultsStore(tmp_path / "r").items()["revision"]) == {"step100"}


def test_context_overflow_names_the_item(checkpoint, tmp_path, run_cli):
    path = tmp_path / "long.jsonl"
    path.write_text(_jsonl(item_id="short") + _jsonl(item_id="too-long", prefix="Mia cried because " * 40))
    code, out, err = run_cli(["probe", str(checkpoint), "-p", str(path), "--device", "cpu"])
    line = _assert_clean(code, err, fragment="'too-long'")
    assert "context of 64 positions" in line and "'short'" not in line


def test_context_exactly_full_is_scored(checkpoint, tmp_path):
    """The bound is exact: context + candidate - 1 == 64 positions still scores."""
    from transformers import AutoTokenizer

    from pythia_forensics.scoring.score import score

    tok = AutoTokenizer.from_pretrained(checkpoint)
    words = "Mia cried because"
    prefix = words
    while len(tok(prefix + " she", add_special_tokens=False)["input_ids"]) < 65:
        prefix = words + " " + prefix
    # trim to exactly 64 inputs (context + " she"[:-1])
    ids = tok(prefix, add_special_tokens=False)["input_ids"]
    cand = len(tok(" she", add_special_tokens=False)["input_ids"])
    prefix = tok.decode(ids[len(ids) - (65 - cand):])
    assert len(tok(prefix, add_special_tokens=False)["input_ids"]) + cand - 1 == 64
    from pythia_forensics.scoring.probes import parse_probes

    probes = parse_probes(_jsonl(prefix=prefix), fmt="jsonl")
    frame = score(str(checkpoint), probes, device="cpu")
    assert len(frame) == 1 and frame["logp_target"].notna().all()


def test_nan_log_prob_is_never_an_accuracy(checkpoint):
    """Finite weights can still overflow (fp16 on a large model); simulated by NaN outputs."""
    import torch

    from pythia_forensics.errors import ScoringError
    from pythia_forensics.scoring.score import load_model, score

    model, tok = load_model(str(checkpoint), device="cpu")
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.fill_(float("nan"))
    with pytest.raises(ScoringError, match="non-finite log-prob"):
        score(model, SMALL, tokenizer=tok)


def test_health_deep_flags_nonfinite(suite, tmp_path):
    from pythia_forensics.checkpoints.health import check_health

    model = tmp_path / "tiny"
    shutil.copytree(suite, model)
    _break("nan_weights", model / "step200", tmp_path / "m")
    report = check_health(str(model), deep=True, progress=False)
    status = {r.revision: r for r in report.rows}
    assert status["step200"].status == "bad" and any(x.startswith("nonfinite") for x in status["step200"].reasons)
    assert not any(x.startswith("nonfinite") for x in status["step100"].reasons)


# --- local suite manifests -------------------------------------------------------------------
MANIFEST_CASES = {
    "layers_is_text": ({"model": "tiny", "layers": "two"}, "not a valid manifest"),
    "json_list": ([1, 2, 3], "not an object"),
    "steps_superscript": ({"model": "tiny", "steps": ["²"]}, "not a valid manifest"),
    "truncated": ('{"model": "tiny", "lay', "not a valid manifest"),
    "params_nan": ('{"model": "tiny", "params_total": NaN}', "not a valid manifest"),
    "params_inf": ('{"model": "tiny", "params_total": Infinity}', "not a valid manifest"),
}


@pytest.mark.parametrize("command", ["probe", "replay"])
@pytest.mark.parametrize("name", sorted(MANIFEST_CASES))
def test_bad_manifest_is_one_line(name, command, suite, tmp_path, run_cli):
    model = tmp_path / "tiny"
    shutil.copytree(suite, model)
    content, fragment = MANIFEST_CASES[name]
    (model / "manifest.json").write_text(content if isinstance(content, str) else json.dumps(content))
    argv = ["probe", str(model), "-p", SMALL, "--revision", "step100"] if command == "probe" else \
        ["replay", str(model), "-p", SMALL, "--results", str(tmp_path / "r")]
    code, out, err = run_cli(argv)
    if command == "probe":
        # probe scores a revision folder and never reads the suite's manifest: still exact
        assert code == 0 and "accuracy" in out, err[-2000:]
    else:
        _assert_clean(code, err, fragment=fragment)


# --- clean shutdown --------------------------------------------------------------------------
def test_interrupt_is_one_line_exit_130(run_cli, monkeypatch, tmp_path):
    from pythia_forensics.scoring import score as scoring

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(scoring, "load_model", interrupted)
    code, _, err = run_cli(["probe", str(tmp_path), "-p", SMALL])
    _assert_clean(code, err, status=130, fragment="rerun")


MINI_MANIFESTS = ['{"model": "mini-s", "cor', "[]", '{"layers": "two"}', '{"seed": Infinity}']


@pytest.mark.parametrize("content", MINI_MANIFESTS)
def test_damaged_manifest_stops_mini_train_with_one_line(content, tmp_path, run_cli):
    """Refused in one line naming the file (never a crash, never trusted as finished)."""
    (tmp_path / "suite" / "mini-l").mkdir(parents=True)
    (tmp_path / "suite" / "mini-l" / "manifest.json").write_text(content)
    code, _, err = run_cli(["mini", "train", "--out", str(tmp_path / "suite")])
    _assert_clean(code, err, fragment="manifest.json is not a valid manifest")


def test_describe_kept_counts_checkpoints(tmp_path):
    from pythia_forensics.experiments.mini.train import describe_kept

    for step in (0, 64, 128):
        (tmp_path / "mini-s" / f"step{step}").mkdir(parents=True)
    (tmp_path / "mini-m" / "step0").mkdir(parents=True)
    (tmp_path / "mini-m" / "manifest.json").write_text("{}")
    text = describe_kept(tmp_path, ["mini-s", "mini-m", "mini-l"])
    assert text == "mini-s up to step 128 (3 checkpoints), mini-m finished, mini-l nothing yet"


_ORPHAN_SCRIPT = r"""
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pythia_forensics.experiments.mini.train import worker_init

def work(path):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    while True:
        time.sleep(0.05)

if __name__ == "__main__":
    pool = ProcessPoolExecutor(max_workers=1, initializer=worker_init, initargs=(os.getpid(), 0.1))
    pool.submit(work, sys.argv[1])
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_training_workers_die_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_SCRIPT)
    pid_file = tmp_path / "worker.pid"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)], env=env)
    try:
        for _ in range(1200):  # wait (bounded) until the worker runs
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(600):  # a bounded poll, not a speed assertion
            if not _alive(worker):
                break
            time.sleep(0.1)
        assert not _alive(worker), "worker outlived its SIGKILLed parent"
    finally:
        parent.kill()
        if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


CASES_TRIED = (len(PROBE_FILES) + len(OPTION_CASES) + len(OUTPUT_CASES) + len(CHECKPOINT_CASES)
               + 2 * len(REPLAY_KINDS) + 2 * len(MANIFEST_CASES) + len(MINI_MANIFESTS)
               + 4)  # + file size, context overflow, 2 interrupts


def test_mini_train_interrupt_says_what_was_kept(tmp_path, run_cli, monkeypatch):
    """Ctrl-C during `mini train`: one line naming the kept checkpoints and the rerun, exit 130."""
    from pythia_forensics.experiments.mini import suite as mini_suite

    def train_then_interrupt(out, **_):
        for step in (0, 64):
            (Path(out) / "mini-s" / f"step{step}").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(mini_suite, "build_suite", train_then_interrupt)
    code, _, err = run_cli(["mini", "train", "--out", str(tmp_path / "suite")])
    line = _assert_clean(code, err, status=130, fragment="mini-s up to step 64 (2 checkpoints)")
    assert "rerun the same command to resume" in line


def test_pf_debug_keeps_the_traceback(tmp_path, monkeypatch):
    from pythia_forensics.cli import main
    from pythia_forensics.errors import ProbeFormatError

    path = tmp_path / "bad.jsonl"
    path.write_text("[1]\n")
    monkeypatch.setenv("PF_DEBUG", "1")
    with pytest.raises(ProbeFormatError, match="must be a JSON object"):
        main(["probe", str(tmp_path), "--probes", str(path)])


def test_library_messages_speak_of_values_and_the_cli_names_the_flag(tmp_path, run_cli, monkeypatch):
    """A Python caller never typed `--steps`: the API message names the value (and `param`),
    the CLI line prefixes the flag the user did type."""
    from huggingface_hub import constants as hf_constants
    from hubserver import HubServer

    from pythia_forensics.checkpoints.fetch import check_fits, format_size
    from pythia_forensics.checkpoints.registry import parse_steps
    from pythia_forensics.errors import DiskBudgetError, StepSpecError

    with pytest.raises(StepSpecError) as steps_error:
        parse_steps("1:x", [0, 1, 2])
    assert steps_error.value.param == "steps" and "--" not in str(steps_error.value)
    with pytest.raises(DiskBudgetError) as budget_error:
        check_fits("tiny", "step0", 5000, 1000)
    assert budget_error.value.param == "disk_budget" and "--" not in str(budget_error.value)
    assert f"must be at least {format_size(5000)}" in str(budget_error.value)

    with HubServer() as hub:
        # no config.json: the census then reads nothing through the download path
        for rev in ("step0", "step1"):
            hub.add_branch("org/tiny-msg", rev, {"model.safetensors": b"w" * 5000})
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        code, _, err = run_cli(["health", "org/tiny-msg", "--deep", "--disk-budget", "1kB"])
        line = err.replace("\r", "\n").strip().splitlines()[-1]   # after the listing's progress bar
        assert code == 2 and "Traceback" not in err and line.startswith("error: --disk-budget: disk budget "), err
        assert "the disk budget must be at least" in line and line.count("--") == 1, line
        code, _, err = run_cli(["health", "org/tiny-msg", "--steps", "1:x"])
        line = _assert_clean(code, err, fragment="error: --steps: ")
        assert line.count("--") == 1, line
        assert hub.bytes_sent(file="*.safetensors") == 0
