"""What a user installs works where the user is (issue #13 point 1).

Builds the wheel from the package sources alone, installs it (`--no-deps`) into a fresh venv
that reuses this interpreter's installed torch and friends through a `.pth` line, and then,
from a temporary working directory and with no checkout on the path: `--version`, `probe`
with a shipped set by name, and `replay` of a plain `step<N>/` folder without a manifest,
whose results land in that directory's `./results`. Nothing may be written inside the
venv's site-packages (compiled `.pyc` files aside).
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
import venv
from pathlib import Path

import pandas as pd
import pytest

from tinymodels import save_checkpoint, tiny_neox

from pythia_forensics.sweep.store import ResultsStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "pythia_forensics")


def _clean_env() -> dict[str, str]:
    """This environment without anything that points at the checkout or its data."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PF_PROBES_DIR", "PF_MINI_DIR")}
    env.update(HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    return env


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, its site-packages, seconds to build the wheel, seconds to install it)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # the package alone: no checkout beside it once installed
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    t0 = time.perf_counter()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "wheel"), str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    build_s = time.perf_counter() - t0
    wheel = next((tmp / "wheel").glob("pythia_forensics-*.whl"))

    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    t0 = time.perf_counter()
    # Installed before the venv can see anything else: pip then finds no copy to replace (the
    # checkout's editable install over there must never be touched).
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True, timeout=600, env=_clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    # Reuse what this interpreter has installed (torch, transformers, ...): plain path lines, so
    # the .pth files over there (an editable install of a checkout among them) stay inactive.
    # sys.path also holds what .pth files there added (a reused system torch, say); any folder
    # holding a pythia_forensics package (the checkout) is left out.
    outer = [p for p in dict.fromkeys([*site.getsitepackages(), *(q for q in sys.path if "-packages" in q)])
             if Path(p).is_dir() and not (Path(p) / "pythia_forensics").exists()]
    (purelib / "reuse-installed.pth").write_text("\n".join(outer) + "\n")
    install_s = time.perf_counter() - t0
    print(f"\nwheel build {build_s:.1f} s, install {install_s:.1f} s ({wheel.name})")
    return python, purelib, build_s, install_s


def _run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    console = python.parent / "pythia-forensics"
    return subprocess.run([str(console), *args], capture_output=True, text=True, cwd=cwd, env=_clean_env(),
                          timeout=900)


def test_wheel_runs_from_any_directory(installed, tmp_path, tiny_tokenizer):
    python, purelib, _, _ = installed
    where = subprocess.run([str(python), "-c", "import pythia_forensics as p; print(p.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert Path(where.stdout.strip()).is_relative_to(purelib), where.stdout + where.stderr
    before = _files(purelib)

    work = tmp_path / "work"
    work.mkdir()
    version = _run(python, work, "--version")
    assert version.returncode == 0 and version.stdout.startswith("pythia-forensics "), version.stderr

    ckpt = save_checkpoint(tmp_path / "one" / "step10", tiny_neox(len(tiny_tokenizer), seed=3), tiny_tokenizer)
    probe = _run(python, work, "probe", str(ckpt), "-p", "pronoun_gender", "--out", "scores.csv")
    assert probe.returncode == 0, probe.stderr[-3000:]
    scores = pd.read_csv(work / "scores.csv")
    assert len(scores) > 100 and scores["rule"].eq("pronoun_gender").all()

    run_dir = tmp_path / "my-run"
    for step in (0, 50):
        save_checkpoint(run_dir / f"step{step}", tiny_neox(len(tiny_tokenizer), seed=10 + step), tiny_tokenizer)
    assert not (run_dir / "manifest.json").exists()
    replay = _run(python, work, "replay", str(run_dir), "-p", "pronoun_gender")
    assert replay.returncode == 0, replay.stderr[-3000:]
    items = ResultsStore(work / "results").items()
    assert sorted(items["step"].unique()) == [0, 50] and items["model"].eq("my-run").all()

    assert _files(purelib) == before
    assert not (purelib / "results").exists() and not (purelib.parent / "results").exists()
