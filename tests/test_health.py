"""Checkpoint forensics: census and deep checks find every planted fault, and nothing else.

Pure checks run on synthetic listings/series; the wiring runs on local and loopback-hub
suites of tiny GPT-NeoX checkpoints whose weights move smoothly from a seed's init
(theta_t = theta_0 + g(t) * delta), with faults planted by copying, deleting and
truncating files.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pythia_forensics.health import (
    ListedFile,
    RevisionListing,
    build_rows,
    census_findings,
    cluster_blobs,
    trend_breaks,
)


# --- pure: census on synthetic listings ----------------------------------------------------
def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _listing(rev: str, blob: str | None = None, *, files=None, size: int = 1000) -> RevisionListing:
    step = int(rev[4:]) if rev.startswith("step") else None
    if files is None:
        files = (ListedFile("model.safetensors", size, _sha(blob or rev)),)
    return RevisionListing(rev, step, tuple(files))


GRID = ["step0", "step1", "step2", "step4", "step8", "step16", "step100", "step200", "step300"]


def _clean():
    return [_listing(r) for r in GRID] + [_listing("main", "step300")]


def _codes(findings):
    return sorted((f.revision, f.code, f.status) for f in findings)


def test_census_clean_suite_reports_nothing():
    findings, clusters = census_findings(_clean(), expected=GRID, final_revision="step300")
    assert findings == [] and clusters == []


def test_census_finds_each_planted_fault():
    listings = {x.revision: x for x in _clean()}
    listings["step100"] = _listing("step100", "step300")          # final model under a mid name
    listings["step1"] = _listing("step1", "step0")                # known upstream fault
    del listings["step8"]                                         # missing branch
    listings["step16"] = _listing("step16", files=())             # no weight file
    listings["step4"] = _listing("step4", size=600)               # truncated upload (size)
    findings, clusters = census_findings(list(listings.values()), expected=GRID, final_revision="step300")
    assert _codes(findings) == [
        ("step1", "duplicate", "flagged"),
        ("step100", "duplicate", "bad"),
        ("step16", "no_weights", "bad"),
        ("step4", "size", "bad"),
        ("step8", "missing", "bad"),
    ]
    known = {f.revision: f.known for f in findings}
    assert known["step1"] is True and known["step100"] is False
    assert "main" in next(f.detail for f in findings if f.revision == "step100")
    assert clusters == [("step0", "step1"), ("step100", "step300", "main")]


def test_census_partial_shard_sharing_and_incomplete_shards():
    def shards(rev, first=None, n=2, drop=()):
        return _listing(rev, files=tuple(
            ListedFile(f"pytorch_model-{i:05d}-of-{n:05d}.bin", 500, _sha(first if (i == 1 and first) else f"{rev}/{i}"))
            for i in range(1, n + 1) if i not in drop))
    listings = [shards(r) for r in GRID] + [shards("main")]
    listings[GRID.index("step200")] = shards("step200", first="step300/1")   # 12b: final's first shard
    listings[GRID.index("step2")] = shards("step2", drop=(2,))
    # main's shards = step300's
    listings[-1] = _listing("main", files=listings[GRID.index("step300")].files)
    findings, _ = census_findings(listings, expected=GRID, final_revision="step300")
    assert _codes(findings) == [("step2", "incomplete", "bad"), ("step200", "shared_blob", "bad")]
    assert "pytorch_model-00002-of-00002.bin" in findings[0].detail
    assert "pytorch_model-00001-of-00002.bin" in findings[1].detail


def test_census_cluster_without_final_blames_later_members():
    listings = _clean()
    listings[GRID.index("step200")] = _listing("step200", "step100")   # stale: step200 is step100
    findings, clusters = census_findings(listings, expected=GRID, final_revision="step300")
    assert _codes(findings) == [("step100", "duplicate", "flagged"), ("step200", "duplicate", "bad")]
    assert clusters == [("step100", "step200")]


def test_census_final_differs_from_main():
    listings = _clean()
    listings[-1] = _listing("main", "something else")
    findings, _ = census_findings(listings, expected=GRID, final_revision="step300")
    assert _codes(findings) == [("main", "final_mismatch", "flagged"), ("step300", "final_mismatch", "flagged")]


def test_cluster_blobs_is_transitive_and_ordered():
    a = _listing("step2", files=(ListedFile("a.safetensors", 1, "x"), ListedFile("b.safetensors", 1, "y")))
    b = _listing("step1", files=(ListedFile("a.safetensors", 1, "x"),))
    c = _listing("step4", files=(ListedFile("b.safetensors", 1, "y"),))
    d = _listing("step8", files=(ListedFile("a.safetensors", 1, "z"),))
    assert cluster_blobs([a, b, c, d]) == [("step1", "step2", "step4")]


def test_rows_take_worst_status_and_keep_ok_revisions():
    listings = _clean()
    listings[GRID.index("step100")] = _listing("step100", "step300")
    findings, _ = census_findings(listings, expected=GRID, final_revision="step300")
    rows = build_rows("m", [(x.revision, x.step) for x in listings], findings)
    status = {r.revision: r.status for r in rows}
    assert status["step100"] == "bad" and status["step300"] == "ok" and status["main"] == "ok"
    assert [r.revision for r in rows][-1] == "main" and len(rows) == len(listings)


# --- pure: trend breaks ------------------------------------------------------------------
def test_trend_breaks_find_a_swapped_point_and_nothing_on_smooth_series():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 20001, 1000)), float)
    rise = np.sqrt(steps)                                   # distance from init: grows, slows
    bump = np.exp(-((np.log1p(steps) - 6) ** 2))            # a smooth rise and fall (embedding norm)
    assert trend_breaks(rise) == [] and trend_breaks(bump) == [] and trend_breaks(-rise) == []
    assert trend_breaks(np.ones(10)) == []
    swapped = rise.copy()
    swapped[15] = rise[-1]                                  # a checkpoint swapped with the final one
    assert trend_breaks(swapped) == [15]
    dip = bump.copy()
    dip[20] -= 0.5
    assert trend_breaks(dip) == [20]
