"""Suite registry: Pythia facts, step grids, --steps parsing, local suites, name resolution."""
from __future__ import annotations

import json
import math

import pytest

from pythia_forensics.constants import PYTHIA_TOKENS_PER_STEP
from pythia_forensics.errors import PFError, StepSpecError, UnknownModelError
from pythia_forensics.checkpoints.registry import (
    get_suite,
    known_suites,
    load_local_suite,
    parse_steps,
    resolve_model,
    revision_name,
    step_of_revision,
)

SIZES = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")


@pytest.fixture(scope="module")
def pythia():
    return get_suite("pythia")


# --- the official table --------------------------------------------------------------------
# The official Pythia card, typed here independently of suites/pythia.yaml (70m..12b);
# 14m and 31m are not on the card and are checked through the formula alone.
OFFICIAL = {
    "70m": (18_915_328, 70_426_624), "160m": (85_056_000, 162_322_944),
    "410m": (302_311_424, 405_334_016), "1b": (805_736_448, 1_011_781_632),
    "1.4b": (1_208_602_624, 1_414_647_808), "2.8b": (2_517_652_480, 2_775_208_960),
    "6.9b": (6_444_163_072, 6_857_302_016), "12b": (11_327_027_200, 11_846_072_320),
}


def test_param_formula_reproduces_every_row(pythia):
    for size in SIZES:
        m = pythia.model(f"pythia-{size}")
        d, L, V = m.d_model, m.layers, m.vocab_size
        body = 12 * d * d * L + 13 * d * L + 2 * d
        assert m.params_nonembedding == body, size
        assert m.params_total == body + 2 * V * d, size
        if size in OFFICIAL:
            assert (m.params_nonembedding, m.params_total) == OFFICIAL[size], size
        assert d % m.heads == 0


def test_formula_matches_a_real_gpt_neox_parameter_count():
    # The formula is only trustworthy if it counts what transformers builds: a scaled-down
    # Pythia-shaped model (untied embeddings, 4d MLP, final LayerNorm) must agree exactly.
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    d, L, V = 64, 3, 1000
    cfg = GPTNeoXConfig(vocab_size=V, hidden_size=d, num_hidden_layers=L, num_attention_heads=4,
                        intermediate_size=4 * d, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert total == 12 * d * d * L + 13 * d * L + 2 * d + 2 * V * d


def test_grid_has_154_revisions_and_main_is_final(pythia):
    m = pythia.model("pythia-160m")
    assert len(m.steps) == 154 == len(set(m.revisions))
    assert m.steps[:11] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    assert m.steps[11:] == tuple(range(1000, 143001, 1000))
    assert m.revisions[0] == "step0" and m.revisions[-1] == "step143000"
    assert m.step_of("main") == 143000 == m.final_step
    assert m.tokens_per_step == PYTHIA_TOKENS_PER_STEP == 1024 * 2048
    assert m.tokens_seen(143000) == 143000 * 2_097_152


def test_suite_members(pythia):
    names = set(pythia.names)
    assert len(names) == len(pythia.names)  # no duplicates
    for size in SIZES:
        assert {f"pythia-{size}", f"pythia-{size}-deduped"} <= names
    for size in ("14m", "31m", "70m", "160m", "410m"):
        for seed in range(1, 10):
            spec = pythia.model(f"pythia-{size}-seed{seed}")
            assert spec.seed == seed and spec.repo == f"EleutherAI/pythia-{size}-seed{seed}"
    assert "pythia-1b-seed1" not in names
    assert pythia.model("pythia-160m").seed == 1234
    ds = pythia.model("pythia-160m-data-seed1")
    assert (ds.data_seed, ds.weight_seed, ds.seed) == (1, 1234, None)
    ws = pythia.model("pythia-160m-weight-seed2")
    assert (ws.data_seed, ws.weight_seed) == (1234, 2)
    assert pythia.model("pythia-12b-deduped").deduped
    assert pythia.model("pythia-1b").precision == "bf16"
    assert pythia.model("EleutherAI/pythia-410m").name == "pythia-410m"
    assert "pythia" in known_suites()


def test_v0_steps_are_renamed(pythia):
    v0, v1 = pythia.model("pythia-160m-v0"), pythia.model("pythia-160m")
    assert v0.release == "v0" and v0.repo == "EleutherAI/pythia-160m-v0"
    # v0 `step1000` is really optimizer step 500 of a 4M-token batch: same tokens seen.
    assert v0.optimizer_step(1000) == 500
    assert v0.tokens_seen(1000) == v1.tokens_seen(1000) == 1000 * 2_097_152
    assert v0.revisions == v1.revisions


# --- --steps ---------------------------------------------------------------------------------
def test_parse_steps_forms(pythia):
    grid = pythia.model("pythia-70m").steps
    assert parse_steps("all", grid) == grid
    assert parse_steps(None, grid) == grid
    assert parse_steps("1000,0, step512,1000", grid) == (0, 512, 1000)
    assert parse_steps("64:2000", grid) == (64, 128, 256, 512, 1000, 2000)
    assert parse_steps(":4", grid) == (0, 1, 2, 4)
    assert parse_steps("142000:", grid) == (142000, 143000)
    log = parse_steps("log", grid)
    assert log[0] == 0 and log[-1] == 143000
    for k in range(0, 18):  # every power of two up to the end has its nearest grid step
        nearest = min((s for s in grid if s > 0), key=lambda s: abs(math.log2(s) - k))
        assert nearest in log
    assert set(log) <= set(grid) and len(log) == len(set(log)) == 20


@pytest.mark.parametrize("spec", ["abc", "1:2:3", "5000:1000", "1500", "100,x", ",", "-5", "9999999:"])
def test_parse_steps_rejects(spec, pythia):
    with pytest.raises(StepSpecError) as info:
        parse_steps(spec, pythia.model("pythia-70m").steps)
    assert isinstance(info.value, ValueError) and isinstance(info.value, PFError)
    assert repr(spec) in str(info.value) and "\n" not in str(info.value)


def test_step_names():
    assert revision_name(1000) == "step1000"
    assert step_of_revision("step1000") == 1000
    assert step_of_revision("main") is None and step_of_revision("step") is None


# --- names -----------------------------------------------------------------------------------
def test_unknown_name_did_you_mean():
    with pytest.raises(UnknownModelError) as info:
        resolve_model("pythia-160n")
    msg = str(info.value)
    assert "did you mean 'pythia-160m'" in msg and "known:" in msg and "pythia-70m" in msg
    with pytest.raises(UnknownModelError, match="did you mean 'pythia'"):
        get_suite("pythya")


def test_resolve_hub_id_and_registry():
    assert resolve_model("pythia-1.4b").repo == "EleutherAI/pythia-1.4b"
    generic = resolve_model("someorg/some-model")
    assert generic.repo == "someorg/some-model" and generic.source == "hub" and generic.layers is None


# --- local suites ------------------------------------------------------------------------------
def _fake_local(tmp_path, name="mini-s", steps=(0, 100, 200)):
    model_dir = tmp_path / "suite" / name
    for s in steps:
        (model_dir / f"step{s}").mkdir(parents=True)
    manifest = {"model": name, "params_total": 1234, "params_nonembedding": 234, "tokens_per_step": 8192,
                "layers": 2, "d_model": 32, "heads": 4, "vocab_size": 320, "seed": 7, "steps": list(steps)}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir


def test_local_suite_reads_manifest(tmp_path):
    model_dir = _fake_local(tmp_path)
    _fake_local(tmp_path, name="mini-m", steps=(0, 100))
    suite = load_local_suite(tmp_path / "suite")
    assert suite.names == ("mini-m", "mini-s")
    spec = suite.model("mini-s")
    assert (spec.source, spec.path, spec.repo) == ("local", model_dir.resolve(), None)
    assert spec.steps == (0, 100, 200) and spec.revisions == ("step0", "step100", "step200")
    assert (spec.params_total, spec.params_nonembedding, spec.tokens_per_step, spec.seed) == (1234, 234, 8192, 7)
    assert spec.tokens_seen(200) == 200 * 8192
    assert resolve_model(model_dir) == spec.__class__(**{**spec.__dict__, "suite": "suite"})
    assert resolve_model("mini-m", suite_dir=tmp_path / "suite").steps == (0, 100)
    assert get_suite(str(tmp_path / "suite")).names == suite.names


def test_local_folder_errors(tmp_path):
    (tmp_path / "nocheckpoints" / "logs").mkdir(parents=True)
    with pytest.raises(UnknownModelError, match="holds no checkpoint folders.*give a step pattern"):
        resolve_model(tmp_path / "nocheckpoints")
    with pytest.raises(UnknownModelError, match="did you mean 'mini-s'"):
        _fake_local(tmp_path)
        resolve_model("mini-z", suite_dir=tmp_path / "suite")


# --- CLI ---------------------------------------------------------------------------------------
def _cli(*args):
    import subprocess
    import sys

    env = {**__import__("os").environ, "COLUMNS": "220"}
    return subprocess.run([sys.executable, "-m", "pythia_forensics", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.slow
def test_cli_suite_show_and_list(tmp_path):
    out = _cli("suite", "show", "pythia")
    assert out.returncode == 0, out.stderr
    for size in SIZES:
        assert f"EleutherAI/pythia-{size} " in out.stdout
    assert "11,846,072,320" in out.stdout and "85,056,000" in out.stdout and "2,097,152" in out.stdout
    assert "154 revisions" in out.stdout and "main = step143000" in out.stdout
    assert "pythia-70m-seed3" not in out.stdout
    _fake_local(tmp_path)
    listed = _cli("suite", "list", "--suite-dir", str(tmp_path / "suite"))
    assert listed.returncode == 0 and "pythia" in listed.stdout and "suite  1 models" in listed.stdout
    bad = _cli("suite", "show", "pythya")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "did you mean 'pythia'" in bad.stderr and "Traceback" not in bad.stderr


# --- checkpoint folders people have (issue #13) -------------------------------------------------
def test_checkpoint_folders_names_trainer_state_and_pattern(tmp_path, monkeypatch):
    from pythia_forensics.checkpoints.registry import checkpoint_folders

    monkeypatch.setenv("PF_STEP_PATTERN", "")
    run = tmp_path / "run"
    for name in ("step0", "checkpoint-7", "checkpoint-20", "ckpt_3", "runs", "step12.tmp"):
        (run / name).mkdir(parents=True)
    # the Trainer's own count wins over the folder name (e.g. gradient accumulation renames)
    (run / "checkpoint-7" / "trainer_state.json").write_text(json.dumps({"global_step": 700}))
    (run / "checkpoint-20" / "trainer_state.json").write_text("{not json")
    assert checkpoint_folders(run) == {"step0": 0, "checkpoint-20": 20, "checkpoint-7": 700}
    assert checkpoint_folders(run, step_pattern=r"ckpt_(\d+)") == {"ckpt_3": 3}
    assert checkpoint_folders(run, step_pattern=r"ckpt_(?P<step>\d+)") == {"ckpt_3": 3}
    monkeypatch.setenv("PF_STEP_PATTERN", r"ckpt_(\d+)")
    assert checkpoint_folders(run) == {"ckpt_3": 3}
    with pytest.raises(UnknownModelError, match="no group"):
        checkpoint_folders(run, step_pattern="ckpt_3")
    with pytest.raises(UnknownModelError, match="not a regular expression"):
        checkpoint_folders(run, step_pattern="ckpt_(")
    monkeypatch.setenv("PF_STEP_PATTERN", "")
    (run / "step700").mkdir()
    with pytest.raises(UnknownModelError, match="checkpoint-7 and step700 both hold step 700"):
        checkpoint_folders(run)


def test_model_folder_without_manifest_reads_sizes_from_weights(tmp_path, tiny_tokenizer, monkeypatch):
    from tinymodels import save_checkpoint, tiny_neox

    monkeypatch.setenv("PF_STEP_PATTERN", "")
    net = tiny_neox(len(tiny_tokenizer), hidden=48, layers=3, heads=4, seed=1)
    save_checkpoint(tmp_path / "run" / "checkpoint-5", net, tiny_tokenizer)
    spec = resolve_model(tmp_path / "run")
    total = sum(p.numel() for p in net.parameters())
    emb_in, emb_out = net.get_input_embeddings().weight, net.get_output_embeddings().weight
    assert (spec.layers, spec.d_model, spec.heads) == (3, 48, 4)
    assert spec.vocab_size == emb_out.shape[0]
    assert spec.params_total == total and spec.params_nonembedding == total - emb_in.numel() - emb_out.numel()
    assert spec.steps == (5,) and spec.revisions == ("checkpoint-5",) and spec.step_of("checkpoint-5") == 5
    # a manifest, where present, wins field by field; what it lacks still comes from the weights
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"model": "named", "params_total": 99}))
    spec = resolve_model(tmp_path / "run")
    assert (spec.name, spec.params_total, spec.layers) == ("named", 99, 3)
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"layers": "three"}))
    with pytest.raises(UnknownModelError, match="not a valid manifest"):
        resolve_model(tmp_path / "run")


def test_manifest_round_trip_keeps_unknown_keys(tmp_path):
    from pythia_forensics.checkpoints.manifest import Manifest, read_manifest, write_manifest

    data = {"model": "m", "layers": 2, "steps": [0, 10], "corpus": {"rules": {}}, "my_note": {"lr": 3}}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    manifest = read_manifest(tmp_path)
    assert manifest.steps == (0, 10) and manifest.extra == {"my_note": {"lr": 3}}
    write_manifest(tmp_path, manifest)
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert {k: again[k] for k in data} == data
    assert read_manifest(tmp_path / "absent") is None and Manifest().to_dict()["steps"] == []


PATH_LIKE = ["./no-such-run", "../nope/run", "~/no-such-run-xyz", "/no/such/run", "runs/a/b", "runs\\a"]
PATH_COMMANDS = (["replay", "{typed}", "-p", "pronoun_gender"], ["health", "{typed}"],
                 ["probe", "{typed}", "-p", "pronoun_gender"])


@pytest.mark.parametrize("i", range(len(PATH_LIKE)))
def test_path_like_model_that_does_not_exist_never_calls_the_hub(i, tmp_path, monkeypatch, run_cli):
    """Every spelling through the API and one command, each command with two spellings (the
    commands share the model lookup, so 6 x 3 CLI runs would repeat one path)."""
    import huggingface_hub

    from pythia_forensics.checkpoints import registry

    typed = PATH_LIKE[i]
    assert registry.looks_like_path(typed)

    def no_hub(*a, **k):
        raise AssertionError("the hub was called")

    for name in ("list_repo_refs", "model_info", "hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, no_hub)
        monkeypatch.setattr(huggingface_hub.HfApi, name, no_hub, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownModelError, match="no such folder") as info:
        registry.resolve_model(typed)
    assert str(info.value).startswith(f"no such folder: {typed}")
    command = [w.format(typed=typed) for w in PATH_COMMANDS[i % len(PATH_COMMANDS)]]
    code, out, err = run_cli(command)
    assert code == 2 and err.startswith(f"error: no such folder: {typed}") and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists()


def test_hub_ids_are_not_paths():
    from pythia_forensics.checkpoints.registry import looks_like_path

    assert not any(looks_like_path(t) for t in ("EleutherAI/pythia-70m", "pythia-70m", "org/name.v2"))
