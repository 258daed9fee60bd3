"""The figure set on a synthetic five-model suite: files exist and open, Figure objects carry
the expected labels, series and markers, and equal input gives equal bytes."""
from __future__ import annotations

import hashlib

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pythia_forensics import figures as F
from pythia_forensics.dynamics import analyze
from synthetic_results import SUITE_FINALS, SUITE_PARAMS, suite_items, suite_models, write_store

RULES = ("pronoun_gender", "reflexive_gender")
ORDER = list(SUITE_PARAMS)  # smallest first


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = write_store(tmp_path_factory.mktemp("fig") / "res", suite_items(RULES), models=suite_models(),
                       health=pd.DataFrame(dict(model=["mini-s"], revision=["step500"], step=[500],
                                                status=["flagged"], reasons=["trend break"])))
    support = pd.DataFrame(dict(rule="pronoun_gender", scope="window", window_start_step=[0, 250, 500, 750],
                                window_end_step=[250, 500, 750, 1000], rule_wins=[8, 9, 3, 0], prior_wins=[2, 2, 6, 9]))
    support["ratio"] = (support["rule_wins"] + 1) / (support["prior_wins"] + 1)
    support.to_csv(root / "support.csv", index=False)
    analysis = analyze(root)
    paths = F.render_figures(root, root / "figures", analysis=analysis)
    return root, analysis, paths


def _labelled(ax, label):
    return [line for line in ax.get_lines() if line.get_label() == label]


def _hand_smooth(values):
    # centred k=3, truncated edges, written out independently of dynamics.smooth
    out = []
    for i in range(len(values)):
        window = values[max(0, i - 1): i + 2]
        out.append(sum(window) / len(window))
    return np.array(out)


def test_every_figure_written_and_opens(rendered):
    root, _, paths = rendered
    stems = {p.stem for p in paths}
    want = {f"{kind}_{rule}" for kind in ("a_accuracy", "b_cm", "c_scale") for rule in RULES}
    want |= {"d_verdicts", "e_overview", "f_support_pronoun_gender"}
    assert stems == want
    assert len(paths) == 2 * len(want)
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000
        if path.suffix == ".pdf":
            assert path.read_bytes()[:5] == b"%PDF-"
        else:
            image = mpimg.imread(path)
            assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300


def test_accuracy_figure_series_markers_and_labels(rendered):
    _, analysis, _ = rendered
    fig = F.accuracy_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                            order=ORDER)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(":")[0] for ax in axes] == ORDER
    assert all(ax.get_xlabel() == F.STEP_LABEL and ax.get_xscale() == "symlog" for ax in axes)
    assert axes[0].get_ylabel() == F.ACC_LABEL
    for ax, model in zip(axes, ORDER):
        assert len(_labelled(ax, "conflict (smoothed)")) == 1 and len(_labelled(ax, "agree (smoothed)")) == 1
        assert len(_labelled(ax, "emergence")) == 1 and len(_labelled(ax, "peak")) == 1
        # collapse onset only where smoothed accuracy falls below .5 (final 0 and .2)
        assert len(_labelled(ax, "collapse onset")) == (1 if SUITE_FINALS[model] < 0.4 else 0)
        assert len(_labelled(ax, "flagged checkpoint (excluded)")) == (1 if model == "mini-s" else 0)
        assert len(_labelled(ax, "before minimum step (not analysed)")) == 1
    # mini-xs smoothed conflict line = hand smoothing of the raw values at steps 100..1000
    line = _labelled(axes[0], "conflict (smoothed)")[0]
    raw = [0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(line.get_xdata(), np.arange(100, 1001, 100))
    np.testing.assert_allclose(line.get_ydata(), _hand_smooth(raw))
    # emergence: first smoothed >= .8 with agree held: (.6 + .9 + 1)/3 = .833 at step 300
    assert _labelled(axes[0], "emergence")[0].get_xdata()[0] == 300
    assert axes[0].get_title() == "mini-xs: DISPLACED"
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "conflict (smoothed)" in legend_texts and "flagged checkpoint (excluded)" in legend_texts


def test_cm_figure_crossing_and_onset(rendered):
    _, analysis, _ = rendered
    fig = F.cm_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                      order=ORDER)
    ax = fig.axes[0]
    assert ax.get_ylabel() == F.CM_LABEL
    # mini-xs CM +1 through step 600, -1 after: smoothed 1/3 at 600, -1/3 at 700 -> crossing 600
    cross = _labelled(ax, "CM zero crossing")[0]
    assert cross.get_xdata()[0] == 600 and cross.get_ydata()[0] == pytest.approx(1 / 3)
    assert _labelled(ax, "collapse onset (accuracy)")[0].get_xdata()[0] == 600
    assert "lag +0 ckpt" in ax.get_title()


def test_scale_figure_rho_and_axes(rendered):
    root, analysis, _ = rendered
    fig = F.scale_figure(analysis.metrics, analysis.scale, suite_models(), probeset="reflexive_gender",
                         rule="reflexive_gender")
    total, nonemb = fig.axes[:2]
    assert total.get_xscale() == "log" and total.get_xlabel() == "parameters, total (log scale)"
    assert nonemb.get_xlabel() == "parameters, non-embedding (log scale)"
    assert total.get_ylabel() == "collapse depth (peak - final accuracy)"
    valid = [m for m in ORDER if m != "mini-m"]  # reflexive mini-m's control failed: void
    depth = [1.0 - SUITE_FINALS[m] for m in valid]  # ranks as peak - final (peak ~1 everywhere)
    rho = stats.spearmanr([SUITE_PARAMS[m] for m in valid], depth).statistic
    assert f"rho = {rho:.3f}" in total.get_title() and "n = 4" in total.get_title()
    # one error bar series for the valid models, one (grey) for the void one
    labels = [c.get_label() for c in total.containers]
    assert labels == ["collapse depth (95% CI)", "void verdict (not in rho)"]


def test_verdict_grid_letters_and_void(rendered):
    _, analysis, _ = rendered
    fig = F.verdict_grid(analysis.metrics, order=ORDER)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "model (by parameter count)" and ax.get_ylabel() == "rule"
    assert [t.get_text() for t in ax.get_xticklabels()] == ORDER
    assert [t.get_text() for t in ax.get_yticklabels()] == list(RULES)
    cells = {(round(t.get_position()[1] - 0.5), round(t.get_position()[0] - 0.5)): t for t in ax.texts}
    letters = [[cells[(i, j)].get_text() for j in range(5)] for i in range(2)]
    # finals 0, .2, .5 -> D; .8, .9 -> R
    assert letters == [list("DDDRR"), list("DDDRR")]
    assert cells[(1, 2)].get_color() == F.VOID_TEXT and cells[(0, 2)].get_color() == "white"


def test_overview_and_support_series(rendered):
    root, analysis, _ = rendered
    fig = F.overview_figure(analysis.trajectories, analysis.metrics, order=ORDER)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(RULES)
    for ax in panels:
        assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] == ORDER
    support = F.load_support(root)
    fig = F.support_figure(support, analysis.trajectories, probeset="pronoun_gender", rule="pronoun_gender",
                           order=ORDER)
    left, right = fig.axes[:2]
    assert left.get_yscale() == "log" and left.get_ylabel() == "support ratio (log scale)"
    stairs = [p for p in left.patches if p.get_label() == "support ratio per window"]
    assert len(stairs) == 1
    np.testing.assert_allclose(stairs[0].get_data().values, [9 / 3, 10 / 3, 4 / 7, 1 / 10])
    assert [line.get_label() for line in right.get_lines()] == ORDER


def test_same_input_same_bytes(rendered, tmp_path):
    root, analysis, _ = rendered
    for make, stem in ((lambda: F.verdict_grid(analysis.metrics, order=ORDER), "d_verdicts"),
                       (lambda: F.accuracy_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender",
                                                  rule="pronoun_gender", order=ORDER), "a_accuracy_pronoun_gender")):
        again = F.save_figure(make(), tmp_path / stem)
        for path in again:
            original = root / "figures" / path.name
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()
