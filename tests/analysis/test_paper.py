"""The paper kit: LaTeX tables carry the CSVs' numbers, the methods file names thresholds,
versions, probe-set hashes and per-checkpoint provenance, and the document compiles."""
from __future__ import annotations

import math
import re
import shutil
import subprocess

import pandas as pd
import pytest

from pythia_forensics.analysis.config import load_config
from pythia_forensics.analysis.dynamics import analyze
from pythia_forensics.analysis.paper import cell, write_paper_kit


def _tex_rows(tex: str) -> list[list[str]]:
    """Body rows of a booktabs table: the lines between \\midrule and \\bottomrule."""
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    body = body.replace(r"\endhead", "")
    return [[c.strip() for c in line.rstrip("\\").rstrip().rstrip("\\").split(" & ")]
            for line in body.strip().splitlines() if line.strip().endswith(r"\\")]


def _unescape(text: str) -> str:
    return re.sub(r"\\([&%$#_{}])", r"\1", text)


def _same(tex_cell: str, value) -> bool:
    if tex_cell == "--":
        return value is None or (isinstance(value, float) and math.isnan(value))
    try:
        got = float(tex_cell)
    except ValueError:
        return _unescape(tex_cell) == str(value)
    return math.isclose(got, float(value), rel_tol=5e-4, abs_tol=1e-12)


@pytest.fixture(scope="module")
def kit(pronoun_suite_store, tmp_path_factory):
    return write_paper_kit(pronoun_suite_store, tmp_path_factory.mktemp("kit") / "paper", figures=False)


@pytest.mark.parametrize("name", ["verdicts", "trajectory_metrics", "scale"])
def test_every_latex_cell_equals_its_csv(kit, name):
    tex = kit.tables[name].read_text()
    csv = pd.read_csv(kit.tables[name].with_suffix(".csv"))
    rows = _tex_rows(tex)
    assert len(rows) == len(csv) > 0
    for tex_row, (_, csv_row) in zip(rows, csv.iterrows()):
        assert len(tex_row) == len(csv.columns)
        for t, v in zip(tex_row, csv_row):
            assert _same(t, v), (name, t, v)
    assert r"\toprule" in tex and r"\bottomrule" in tex


def test_csv_tables_are_the_analysis_numbers(kit, pronoun_suite_store):
    metrics = analyze(pronoun_suite_store).metrics.set_index(["model", "rule", "split"])
    table = pd.read_csv(kit.tables["trajectory_metrics"].with_suffix(".csv"))
    assert set(table["split"]) == {load_config().primary_split}
    for _, row in table.iterrows():
        want = metrics.loc[(row["model"], row["rule"], row["split"])]
        for col in ("peak_acc", "final_acc", "depth"):
            assert row[col] == pytest.approx(want[col], nan_ok=True)
    verdicts = pd.read_csv(kit.tables["verdicts"].with_suffix(".csv"))
    assert dict(zip(verdicts["model"], verdicts["verdict_label"])) == {
        m: metrics.loc[(m, "pronoun_gender", "heldout"), "verdict_label"] for m in verdicts["model"]}


def test_methods_name_thresholds_hash_versions_probes_and_provenance(kit, pronoun_suite_store):
    from pythia_forensics.scoring.score import SCORING_VERSION

    methods = kit.methods.read_text()
    assert load_config().sha256 in methods and f"SCORING\\_VERSION = {SCORING_VERSION}" in methods
    tables = kit.out / "tables"
    thresholds = pd.read_csv(tables / "thresholds.csv")
    assert thresholds.set_index("threshold").loc["scale.bootstrap_min_models", "value"] == str(
        load_config().scale_bootstrap_min_models)
    versions = pd.read_csv(tables / "versions.csv").set_index("package")["version"]
    assert versions["pandas"] == pd.__version__
    probes = pd.read_csv(tables / "probe_sets.csv")
    assert probes["probeset_sha256"].tolist() == ["p" * 64]  # what write_store stored
    prov = pd.read_csv(tables / "provenance.csv")
    items = pd.read_parquet(pronoun_suite_store / "items")
    assert len(prov) == len(items[["model", "revision"]].drop_duplicates())
    assert set(prov["repo"]) == set(items["model"])  # write_store records repo = model
    assert r"\appendix" in methods and "provenance.tex" in methods


def test_cell_formats_nan_ints_and_floats():
    assert cell(float("nan")) == "--" and cell(3) == "3" and cell(400.0) == "400"
    assert cell(0.123456) == "0.1235" and cell("a_b&c") == r"a\_b\&c"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_the_kit_compiles_with_plain_pdflatex(kit):
    for _ in range(2):  # longtable settles its column widths on the second run
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
                             cwd=kit.out, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout[-3000:]
    assert (kit.out / "paper.pdf").stat().st_size > 0
