"""The figure set, looked at as a reviewer would: on a linear grid (the synthetic five-model
suite, stored and rendered end to end) and on a Pythia-like log grid (frames built here), each
figure type is drawn and its Axes are checked: tick labels across the analysed range, markers
where their names say (the CM crossing on the zero line), shared limits, every labelled
artist in the legend, no text outside the figure, honest small-data scale panels."""
from __future__ import annotations

import hashlib

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pythia_forensics.analysis import figures as F
from pythia_forensics.analysis.dynamics import analyze
from pythia_forensics.errors import ConfigError, StoreError
from pythia_forensics.analysis.step_axis import count_label, grid_scale, step_axis
from synthetic_results import SUITE_FINALS, SUITE_PARAMS, SUITE_STEPS, items_for, suite_items, suite_models, write_store

RULES = ("pronoun_gender", "reflexive_gender")
ORDER = list(SUITE_PARAMS)  # smallest first
PYTHIA_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 143001, 1000))
# Pythia-like models: (emergence step, collapse step, final accuracy); sizes from the model card
PYTHIA_MODELS = {"pythia-70m": (2000, 20000, 0.0), "pythia-160m": (1000, 40000, 0.3),
                 "pythia-410m": (512, 10**9, 1.0)}
PYTHIA_SIZES = {"pythia-70m": (70426624, 18915328), "pythia-160m": (162322944, 85056000),
                "pythia-410m": (405334016, 302311424)}


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The two-rule suite stored (one flagged checkpoint, a support table) and analysed."""
    root = write_store(tmp_path_factory.mktemp("fig") / "res", suite_items(RULES), models=suite_models(),
                       health=pd.DataFrame(dict(model=["mini-s"], revision=["step500"], step=[500],
                                                status=["flagged"], reasons=["trend break"])))
    support = pd.DataFrame(dict(rule="pronoun_gender", scope="window", window_start_step=[0, 250, 500, 750],
                                window_end_step=[250, 500, 750, 1000], rule_wins=[8, 9, 3, 0], prior_wins=[2, 2, 6, 9]))
    support["ratio"] = (support["rule_wins"] + 1) / (support["prior_wins"] + 1)
    support.to_csv(root / "support.csv", index=False)
    return root, analyze(root)


@pytest.fixture(scope="module")
def rendered(stored):
    """The whole figure set rendered from the stored suite (end to end, as `figures` does)."""
    root, analysis = stored
    return root, analysis, F.render_figures(root, root / "figures", analysis=analysis)


def pythia_items(models=PYTHIA_MODELS) -> pd.DataFrame:
    s = np.asarray(PYTHIA_STEPS, float)
    frames = []
    for model, (up, down, final) in models.items():
        conflict = np.where(s > down, final, np.where(s < up, 0.3, 1.0))
        agree = np.where(s < up / 2, 0.5, 1.0)
        frames.append(items_for(PYTHIA_STEPS, np.round(conflict * 10) / 10, agree, model=model))
    return pd.concat(frames, ignore_index=True)


def pythia_sizes(unknown=()) -> pd.DataFrame:
    names = list(PYTHIA_SIZES)
    total = pd.array([pd.NA if m in unknown else PYTHIA_SIZES[m][0] for m in names], dtype="Int64")
    nonemb = pd.array([pd.NA if m in unknown else PYTHIA_SIZES[m][1] for m in names], dtype="Int64")
    return pd.DataFrame(dict(model=names, params_total=total, params_nonembedding=nonemb,
                             tokens_per_step=[2097152] * len(names), source=["hub"] * len(names)))


@pytest.fixture(scope="module")
def pythia():
    analysis = analyze(pythia_items(), models=pythia_sizes())
    return analysis, step_axis(analysis.trajectories)


# --- helpers: what a reviewer looks at ---------------------------------------------------------------
def _labelled(ax, label):
    return [line for line in ax.get_lines() if line.get_label() == label]


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _hand_smooth(values):
    # centred k=3, truncated edges, written out independently of dynamics.smooth
    out = []
    for i in range(len(values)):
        window = values[max(0, i - 1): i + 2]
        out.append(sum(window) / len(window))
    return np.array(out)


def _renderer(fig):
    """The figure's Agg renderer (a bare Figure has a canvas that cannot measure text)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def assert_text_inside(fig):
    """Every visible, non-empty text (titles, labels, ticks, legend, annotations) lies in the figure."""
    renderer = _renderer(fig)
    box = fig.bbox
    undrawn = set()  # tick labels outside the view interval exist but are never drawn
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo <= tick.get_loc() <= hi:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    for text in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if not text.get_visible() or not text.get_text().strip() or id(text) in undrawn:
            continue
        if hasattr(text, "axes") and text.axes is not None and not text.axes.get_visible():
            continue
        ext = text.get_window_extent(renderer)
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1, \
            f"text {text.get_text()!r} at {ext.bounds} outside the figure {box.bounds}"


def assert_legend_complete(fig):
    """Every labelled artist of every panel has a legend entry."""
    legend = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    for ax in _panels(fig):
        for label in ax.get_legend_handles_labels()[1]:
            assert label in legend, f"{label!r} drawn but not in the legend {sorted(legend)}"


def assert_shared_limits(fig):
    panels = _panels(fig)
    assert len({tuple(np.round(ax.get_xlim(), 9)) for ax in panels}) == 1
    assert len({tuple(np.round(ax.get_ylim(), 9)) for ax in panels}) == 1


def assert_ticks_cover(ax, lo, hi, *, max_gap=0.45, min_labels=3):
    """Labelled x ticks inside [lo, hi], at least `min_labels`, never more than `max_gap` apart."""
    fig = ax.figure
    fig.draw_without_rendering()
    to_frac = lambda v: ax.transAxes.inverted().transform(ax.transData.transform((v, 0)))[0]  # noqa: E731
    ticks = [(t.get_position()[0], t.get_text()) for t in ax.get_xticklabels() if t.get_text()]
    inside = sorted(to_frac(x) for x, _ in ticks if lo <= x <= hi)
    assert len(inside) >= min_labels, f"only {len(inside)} labelled ticks in [{lo}, {hi}]: {ticks}"
    points = [to_frac(lo)] + inside + [to_frac(hi)]
    assert max(np.diff(points)) <= max_gap, f"tick gap {max(np.diff(points)):.2f} of the axis in [{lo}, {hi}]"
    # labels never overlap one another
    renderer = _renderer(fig)
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()),
                   key=lambda b: b.x0)
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0 + 0.5, "tick labels overlap"


# --- the x axis: pure functions ---------------------------------------------------------------------
def test_grid_scale_follows_the_grid():
    assert grid_scale([s for s in PYTHIA_STEPS if s >= 100]) == "log"  # 128, 256, 512, 1000, ... 143000
    assert grid_scale(PYTHIA_STEPS) == "log"
    mini = sorted({0, 1, 2, 4, 8, 16, 32, 64} | set(range(20, 801, 20)))
    assert grid_scale([s for s in mini if s >= 100]) == "linear"  # the analysed part is linear
    assert grid_scale(range(1000, 100001, 1000)) == "linear"  # a linear grid from 1000: ratios 2, 1.5, ...
    assert grid_scale([100, 200, 400, 800, 1600]) == "log"  # a pure doubling grid
    assert grid_scale([0, 10, 20]) == "linear"  # too few to tell
    assert grid_scale(SUITE_STEPS) == "linear"


@pytest.mark.parametrize("value, digits, text", [
    (0, 3, "0"), (512, 3, "512"), (1000, 3, "1k"), (1500, 3, "1.5k"), (10000, 3, "10k"), (143000, 3, "143k"),
    (2097152, 3, "2.1M"), (90000, 2, "90k"), (14067712, 2, "14M"), (405334016, 2, "410M"),
    (1414647808, 2, "1.4B"), (512, 2, "512")])
def test_count_label(value, digits, text):
    assert count_label(value, digits=digits) == text


def test_log_axis_gives_the_analysed_range_most_of_the_width():
    traj = pd.DataFrame(dict(model="m", step=PYTHIA_STEPS, used=[s >= 100 for s in PYTHIA_STEPS]))
    axis = step_axis(traj)
    assert axis.scale == "log"
    left, first, last = axis.fraction(np.array([0.0, 128.0, 143000.0]))
    assert 0 < left < 0.05 and last > 0.95  # step 0 drawn at the left edge, the end at the right
    assert last - first >= 0.6  # analysed 128 .. 143000 takes most of the width
    mini = pd.DataFrame(dict(model="m", step=SUITE_STEPS, used=[s >= 100 for s in SUITE_STEPS]))
    axis = step_axis(mini)
    assert axis.scale == "linear" and axis.label == "training step"
    assert step_axis(mini, xscale="log").scale == "log" and step_axis(mini, xscale="symlog").scale == "symlog"
    tokens = step_axis(mini, x="tokens", tokens_per_step={"m": 4096})
    assert tokens.hi == 1000 * 4096 and tokens.label == "training tokens"
    with pytest.raises(StoreError, match="tokens per step unknown for m"):
        step_axis(mini, x="tokens", tokens_per_step={})
    with pytest.raises(ConfigError, match="not one of"):
        step_axis(mini, xscale="logarithmic")


# --- linear grid: the stored synthetic suite --------------------------------------------------------
@pytest.mark.slow
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


def test_accuracy_figure_linear_grid(stored):
    _, analysis = stored
    fig = F.accuracy_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                            order=ORDER)
    axes = _panels(fig)
    assert [ax.get_title().split(":")[0] for ax in axes] == ORDER
    assert all(ax.get_xscale() == "linear" for ax in axes)  # the suite's analysed grid is linear
    assert axes[0].get_xlabel() == "training step" and axes[0].get_ylabel() == F.ACC_LABEL
    for ax, model in zip(axes, ORDER):
        assert len(_labelled(ax, F.EMERGENCE)) == 1 and len(_labelled(ax, F.PEAK)) == 1
        # collapse onset only where smoothed accuracy falls below .5 (final 0 and .2)
        assert len(_labelled(ax, F.ONSET)) == (1 if SUITE_FINALS[model] < 0.4 else 0)
        # flagged and not-analysed points in both conditions' colours
        assert len(_labelled(ax, F.FLAGGED)) == (2 if model == "mini-s" else 0)
        hollow = _labelled(ax, F.NOT_ANALYSED)
        assert sorted(h.get_markeredgecolor() for h in hollow) == sorted(F.CONDITION_COLORS.values())
        assert_ticks_cover(ax, 100, 1000)
    # mini-xs smoothed conflict line = hand smoothing of the raw values at steps 100..1000
    line = [ln for ln in _labelled(axes[0], F.COND_LABELS["conflict"]) if ln.get_linestyle() == "-"][0]
    raw = [0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(line.get_xdata(), np.arange(100, 1001, 100))
    np.testing.assert_allclose(line.get_ydata(), _hand_smooth(raw))
    # emergence: first smoothed >= .8 with agree held: (.6 + .9 + 1)/3 = .833 at step 300
    emergence = _labelled(axes[0], F.EMERGENCE)[0]
    assert emergence.get_xdata()[0] == 300 and emergence.get_ydata()[0] == pytest.approx(2.5 / 3)
    assert axes[0].get_title() == "mini-xs: DISPLACED"
    assert_shared_limits(fig)
    assert_legend_complete(fig)
    assert_text_inside(fig)


def test_peak_and_emergence_stay_visible_when_they_coincide(stored):
    _, analysis = stored
    fig = F.accuracy_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                            order=ORDER)
    fig.draw_without_rendering()
    ax = _panels(fig)[0]
    peak, emergence = _labelled(ax, F.PEAK)[0], _labelled(ax, F.EMERGENCE)[0]
    # drawn above the lines, the triangle over the star, and offset so it points at the point from below
    assert emergence.get_zorder() > peak.get_zorder() > 2
    data_y = ax.transData.transform((300, emergence.get_ydata()[0]))[1]
    drawn_y = emergence.get_transform().transform((300, emergence.get_ydata()[0]))[1]
    assert drawn_y < data_y - 3


def test_cm_figure_crossing_at_the_stored_checkpoint(stored):
    _, analysis = stored
    fig = F.cm_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                      order=ORDER)
    ax = fig.axes[0]
    assert ax.get_ylabel() == F.CM_LABEL
    # mini-xs CM +1 through step 600, -1 after: smoothed 1/3 at 600, -1/3 at 700 -> the last
    # checkpoint with smoothed CM >= 0 is 600: the diamond sits there, on the smoothed line
    cross = _labelled(ax, F.CROSSING)[0]
    assert cross.get_xdata()[0] == 600 and cross.get_ydata()[0] == pytest.approx(1 / 3)
    assert _labelled(ax, F.ONSET)[0].get_xdata()[0] == 600
    assert "lag +0 ckpt" in ax.get_title()
    # models whose CM never falls below zero get no diamond
    assert all(not _labelled(a, F.CROSSING) for a in _panels(fig)[2:])
    assert_shared_limits(fig)
    assert_legend_complete(fig)
    assert_text_inside(fig)


def test_no_crossing_marker_before_emergence_or_upward():
    # never emerges (agree never holds), CM goes +1 then -1: the stored crossing is not drawn
    steps = list(range(100, 1100, 100))
    conflict = [1.0] * 5 + [0.0] * 5
    items = items_for(steps, conflict, [0.5] * 10, model="m")
    analysis = analyze(items)
    row = analysis.metrics.iloc[0]
    assert pd.isna(row["emergence_step"]) and pd.isna(row["cm_cross_step"])  # never emerged: no crossing
    fig = F.cm_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                      order=["m"])
    assert not _labelled(fig.axes[0], F.CROSSING)


def test_scale_figure_rho_ticks_and_labels(stored):
    root, analysis = stored
    fig = F.scale_figure(analysis.metrics, analysis.scale, suite_models(), probeset="pronoun_gender",
                         rule="pronoun_gender")
    total, nonemb = fig.axes[:2]
    assert total.get_xscale() == "log" and total.get_xlabel() == "parameters, total (log scale)"
    assert nonemb.get_xlabel() == "parameters, non-embedding (log scale)"
    assert total.get_ylabel() == "collapse depth (peak - final accuracy)"
    # depth only where the rule collapsed (final < .8): xs, s, m; l and xl ended recovered
    collapsed = [m for m in ORDER if SUITE_FINALS[m] < 0.8]
    rho = stats.spearmanr([SUITE_PARAMS[m] for m in collapsed], [1.0 - SUITE_FINALS[m] for m in collapsed]).statistic
    assert f"rho = {rho:.3f}" in total.get_title() and "n = 3" in total.get_title()  # over what is drawn
    points = total.containers[0]
    assert sorted(points.lines[0].get_xdata()) == [SUITE_PARAMS[m] for m in collapsed]
    notes = [t.get_text() for t in total.texts]
    assert "mini-l: never collapsed" in notes and "mini-xl: never collapsed" in notes
    # a tick at every model, labelled with its parameter count
    fig.draw_without_rendering()
    ticks = [t.get_text() for t in total.get_xticklabels()]
    assert ticks == ["100k", "400k", "1.6M", "6.4M", "26M"]
    assert_legend_complete(fig)
    assert_text_inside(fig)
    # reflexive: mini-m's control failed: its depth is a grey hollow point, not in rho
    fig = F.scale_figure(analysis.metrics, analysis.scale, suite_models(), probeset="reflexive_gender",
                         rule="reflexive_gender")
    total = fig.axes[0]
    assert [c.get_label() for c in total.containers] == ["collapse depth (bootstrap 95% CI)",
                                                         "void verdict (not in rho)"]
    assert "n = 2: too few models" in total.get_title()
    assert_text_inside(fig)


def test_scale_figure_labels_void_and_same_size_models_apart():
    """Two models of one size keep apart labels; a void model without a depth reads "void",
    never "never emerged"; a model that never emerged and one that ended recovered say so."""
    metrics = pd.DataFrame(dict(
        model=["a", "b", "v", "n", "r"], probeset="p", rule="p", split="heldout",
        emerged=[True, True, False, False, True], emergence_step=[200, 200, np.nan, np.nan, 200],
        void=[False, False, True, False, False], depth=[0.9, 0.88, np.nan, np.nan, np.nan],
        depth_lo=[0.8, 0.8, np.nan, np.nan, np.nan], depth_hi=[1.0, 0.95, np.nan, np.nan, np.nan]))
    sizes = pd.DataFrame(dict(model=list("abvnr"), params_total=[1e6, 1e6, 4e6, 4e6, 1.6e7],
                              params_nonembedding=[1e5, 1e5, 4e5, 4e5, 1.6e6]))
    scale = pd.DataFrame(dict(probeset="p", rule="p", split="heldout", size=["params_total", "params_nonembedding"],
                              metric="depth", n_models=2, models="a,b", rho=np.nan, p_perm=np.nan, rho_lo=np.nan,
                              rho_hi=np.nan, note="n = 2: too few models for a rank correlation"))
    fig = F.scale_figure(metrics, scale, sizes, probeset="p", rule="p")
    ax = fig.axes[0]
    notes = {t.get_text(): t for t in ax.texts}
    assert "n: never emerged; v: void" in notes and "r: never collapsed" in notes
    assert not any("v: never emerged" in t for t in notes)
    fig.draw_without_rendering()
    renderer = _renderer(fig)
    boxes = [notes[m].get_window_extent(renderer) for m in ("a", "b")]
    assert not boxes[0].overlaps(boxes[1])  # same size, close depths: stacked, not overprinted
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"never emerged (no depth)", "never collapsed: ended recovered (no depth)"} <= legend
    assert any(t.startswith("void verdict") for t in legend)
    assert_text_inside(fig)


def test_verdict_grid_letters_and_void(stored):
    _, analysis = stored
    fig = F.verdict_grid(analysis.metrics, order=ORDER)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "model (by parameter count)" and ax.get_ylabel() == "rule"
    assert [t.get_text() for t in ax.get_xticklabels()] == ORDER
    assert [t.get_text() for t in ax.get_yticklabels()] == list(RULES)
    cells = {(round(t.get_position()[1] - 0.5), round(t.get_position()[0] - 0.5)): t for t in ax.texts}
    letters = [[cells[(i, j)].get_text() for j in range(5)] for i in range(2)]
    # finals 0, .2, .5 -> D; .8, .9 -> R
    assert letters == [list("DDDRR"), list("DDDRR")]
    assert cells[(1, 2)].get_color() == F.VOID_TEXT and cells[(0, 2)].get_color() != F.VOID_TEXT
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:5] == ["R = recovered", "U = unstable", "D = displaced", "P = partial", "N = never"]
    void = " ".join(legend[5].split())  # both reasons a verdict is void, and what a void letter means
    assert "agree control failed" in void and "too few checkpoints" in void and "never used" in void
    assert_text_inside(fig)


def test_one_colour_language_across_the_set(stored):
    """Condition hues never mean a model or a verdict; model shades stay in the condition's hue."""
    _, analysis = stored
    conflict, agree = F.CONDITION_COLORS["conflict"], F.CONDITION_COLORS["agree"]
    assert not {conflict, agree} & set(F.VERDICT_COLORS.values())
    fig = F.overview_figure(analysis.trajectories, analysis.metrics, order=ORDER)
    for ax in _panels(fig):
        solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert [ln.get_label() for ln in solid] == ORDER and [ln.get_label() for ln in dashed] == ORDER
        assert [ln.get_color() for ln in solid] == F.model_shades(conflict, len(ORDER))
        assert [ln.get_color() for ln in dashed] == F.model_shades(agree, len(ORDER))
    # darker = larger: luminance falls along the size order
    lum = [np.dot(mpl_rgb(c), [0.2126, 0.7152, 0.0722]) for c in F.model_shades(conflict, 5)]
    assert all(a > b for a, b in zip(lum, lum[1:]))
    assert "conflict (solid) and agree (dashed)" in fig._suptitle.get_text()
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"solid: conflict items", "dashed: agree items (control)"} <= legend
    assert_shared_limits(fig)
    assert_legend_complete(fig)
    assert_text_inside(fig)


def mpl_rgb(color):
    from matplotlib.colors import to_rgb

    return np.array(to_rgb(color))


def test_support_figure_series(stored):
    root, analysis = stored
    support = F.load_support(root)
    fig = F.support_figure(support, analysis.trajectories, probeset="pronoun_gender", rule="pronoun_gender",
                           order=ORDER)
    left, right = fig.axes[:2]
    assert left.get_yscale() == "log" and left.get_ylabel() == "support ratio (log scale)"
    stairs = [p for p in left.patches if p.get_label().startswith("corpus-wide")]
    assert len(stairs) == 1
    np.testing.assert_allclose(stairs[0].get_data().values, [9 / 3, 10 / 3, 4 / 7, 1 / 10])
    assert [line.get_label() for line in right.get_lines()] == ORDER
    # each model keeps the shade it has in the overview
    assert [line.get_color() for line in right.get_lines()] == [F.model_colors(ORDER)[m] for m in ORDER]
    assert_text_inside(fig)


def test_same_input_same_bytes(stored, tmp_path):
    """Two figures built independently from the same frames save to identical PDF and PNG bytes
    (the whole set through render_figures: test_every_figure_written_and_opens, slow)."""
    _, analysis = stored
    for make, stem in ((lambda: F.verdict_grid(analysis.metrics, order=ORDER), "d_verdicts"),
                       (lambda: F.accuracy_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender",
                                                  rule="pronoun_gender", order=ORDER), "a_accuracy_pronoun_gender")):
        first, again = F.save_figure(make(), tmp_path / "one" / stem), F.save_figure(make(), tmp_path / "two" / stem)
        assert [p.suffix for p in first] == [".pdf", ".png"]
        for a, b in zip(first, again):
            assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


@pytest.mark.slow
def test_rendered_set_has_the_bytes_of_the_figures_drawn_directly(rendered, tmp_path):
    root, analysis, _ = rendered
    for make, stem in ((lambda: F.verdict_grid(analysis.metrics, order=ORDER), "d_verdicts"),
                       (lambda: F.accuracy_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender",
                                                  rule="pronoun_gender", order=ORDER), "a_accuracy_pronoun_gender")):
        for path in F.save_figure(make(), tmp_path / stem):
            original = root / "figures" / path.name
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()


# --- Pythia-like log grid -------------------------------------------------------------------------------
@pytest.mark.slow
def test_accuracy_and_cm_on_a_log_grid(pythia, tmp_path):
    analysis, axis = pythia
    order = list(PYTHIA_MODELS)
    assert axis.scale == "log"
    for make in (F.accuracy_figure, F.cm_figure):
        fig = make(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                   order=order, axis=axis)
        for ax in _panels(fig):
            assert ax.get_xscale() == "symlog"
            assert_ticks_cover(ax, 128, 143000)
            labels = [t.get_text() for t in ax.get_xticklabels()]
            assert {"0", "1k", "10k", "100k"} <= set(labels)
        assert_shared_limits(fig)
        assert_legend_complete(fig)
        assert_text_inside(fig)
        F.save_figure(fig, tmp_path / make.__name__)
    fig = F.cm_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                      order=order, axis=axis)
    ax = _panels(fig)[0]  # pythia-70m: CM +1 until 20000, -1 from 21000
    cross = _labelled(ax, F.CROSSING)[0]
    # the diamond is a vertex of the drawn smoothed line, at the stored crossing checkpoint
    line = _labelled(ax, "conflict-item CM")[0]
    row = analysis.metrics.set_index("model").loc["pythia-70m"]
    assert row["cm_cross_step"] == 20000
    assert cross.get_xdata()[0] == axis.values([20000], "pythia-70m")[0]
    k = list(line.get_xdata()).index(cross.get_xdata()[0])
    assert cross.get_ydata()[0] == line.get_ydata()[k] >= 0 > line.get_ydata()[k + 1]


def test_tokens_axis(pythia):
    analysis, _ = pythia
    tokens = step_axis(analysis.trajectories, x="tokens", tokens_per_step={m: 2097152 for m in PYTHIA_MODELS})
    fig = F.accuracy_figure(analysis.trajectories, analysis.metrics, probeset="pronoun_gender", rule="pronoun_gender",
                            order=list(PYTHIA_MODELS), axis=tokens)
    ax = _panels(fig)[0]
    assert ax.get_xlabel().startswith("training tokens")
    assert ax.get_xlim()[1] > 143000 * 2097152
    assert_ticks_cover(ax, 128 * 2097152, 143000 * 2097152)
    assert "1B" in [t.get_text() for t in ax.get_xticklabels()]


def _contrast_on_white(color) -> float:
    """WCAG contrast ratio of `color` on white, computed here from the sRGB definition."""
    rgb = np.array(mpl_rgb(color))
    lin = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return 1.05 / (float(lin @ [0.2126, 0.7152, 0.0722]) + 0.05)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_no_model_shade_is_faint(n):
    for hue in F.CONDITION_COLORS.values():
        assert min(_contrast_on_white(c) for c in F.model_shades(hue, n)) >= 3.0  # WCAG 3:1 for graphics


@pytest.mark.parametrize("rules, grid", [(["a"], (1, 1)), (["a", "b", "c"], (1, 3)), (list("abcd"), (2, 2)),
                                         (list("abcdef"), (2, 3))])
def test_overview_every_panel_has_its_x_label_and_no_empty_slot(rules, grid):
    items = pd.concat([items_for(SUITE_STEPS, [0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                                 [1.0] * 12, model=m, rule=r, probeset=r) for r in rules for m in ("s", "l")])
    analysis = analyze(items)
    fig = F.overview_figure(analysis.trajectories, analysis.metrics, order=["s", "l"])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(fig.axes) == len(rules)  # no hidden (empty) grid slot
    shape = {(round(ax.get_position().y0, 3), round(ax.get_position().x0, 3)) for ax in axes}
    assert (len({y for y, _ in shape}), len({x for _, x in shape})) == grid
    assert all(ax.get_xlabel() == "training step" for ax in axes)
    assert_text_inside(fig)


def test_overview_and_verdicts_on_a_log_grid(pythia):
    analysis, axis = pythia
    fig = F.overview_figure(analysis.trajectories, analysis.metrics, order=list(PYTHIA_MODELS), axis=axis)
    for ax in _panels(fig):
        assert_ticks_cover(ax, 128, 143000)
    assert_legend_complete(fig)
    assert_text_inside(fig)
    assert_text_inside(F.verdict_grid(analysis.metrics, order=list(PYTHIA_MODELS)))


def test_scale_panel_with_three_models_prints_the_note(pythia):
    """n = 3 with a note and NaN rho (the dynamics contract): the note, never rho, p or a CI."""
    analysis, _ = pythia
    scale = analysis.scale.copy()
    note = "n = 3: too few models for a rank correlation"
    scale[["rho", "p_perm", "rho_lo", "rho_hi"]] = np.nan
    scale["note"] = note
    fig = F.scale_figure(analysis.metrics, scale, pythia_sizes(), probeset="pronoun_gender", rule="pronoun_gender")
    total, nonemb = fig.axes[:2]
    for ax in (total, nonemb):
        p_min = scale[(scale["rule"] == "pronoun_gender") & (scale["metric"] == "depth")]["p_min"].iloc[0]
        # the note, then what these n sizes could ever show (issue #32)
        assert ax.get_title().replace("\n", " ") == f"{note} smallest attainable p = {p_min:.3g}"
    texts = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "rho =" not in texts and "CI [" not in texts
    fig.draw_without_rendering()
    assert [t.get_text() for t in total.get_xticklabels()] == ["70M", "160M", "410M"]
    assert_text_inside(fig)


def test_scale_panel_never_emerged_gets_no_depth():
    models = {"pythia-70m": (2000, 20000, 0.0), "pythia-160m": (10**9, 10**9, 0.3), "pythia-410m": (512, 10**9, 1.0)}
    items = pythia_items(models)
    # pythia-160m: conflict never reaches .8 -> never emerges
    analysis = analyze(items, models=pythia_sizes())
    met = analysis.metrics.set_index("model")
    assert not met.loc["pythia-160m", "emerged"]
    fig = F.scale_figure(analysis.metrics, analysis.scale, pythia_sizes(), probeset="pronoun_gender",
                         rule="pronoun_gender")
    ax = fig.axes[0]
    drawn_x = np.concatenate([c.lines[0].get_xdata() for c in ax.containers])
    assert PYTHIA_SIZES["pythia-160m"][0] not in drawn_x  # no point, so no depth
    # its agree control never held either (agree .5 throughout): the verdict is void, and the
    # line says so rather than "never emerged"; pythia-410m ended recovered: no depth either
    assert met.loc["pythia-160m", "void"]
    void = [ln for ln in ax.get_lines() if ln.get_label().startswith("void verdict")]
    assert len(void) == 1 and void[0].get_xdata()[0] == PYTHIA_SIZES["pythia-160m"][0]
    assert {t.get_text() for t in ax.texts} >= {"pythia-160m: void", "pythia-410m: never collapsed"}
    # whatever the scale row holds, the panel never prints a rho over points it does not draw
    assert "rho =" not in ax.get_title()
    assert_legend_complete(fig)
    assert_text_inside(fig)


def test_scale_figure_with_unknown_sizes_names_them(pythia):
    analysis, _ = pythia
    sizes = pythia_sizes(unknown=("pythia-410m",))
    fig = F.scale_figure(analysis.metrics, analysis.scale, sizes, probeset="pronoun_gender", rule="pronoun_gender")
    assert "sizes unknown for: pythia-410m" in fig._suptitle.get_text()
    fig.draw_without_rendering()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["70M", "160M"]
    assert F.model_order(list(PYTHIA_MODELS), sizes) == list(PYTHIA_MODELS)  # unknown sizes last, no crash
    assert F.unknown_size_models(list(PYTHIA_MODELS), sizes) == ["pythia-410m"]
    assert_text_inside(fig)


def test_tiny_error_bars_make_no_offset_text():
    """Depths equal up to 1e-15 (smoothing noise) must not produce an axis offset over the title."""
    metrics = pd.DataFrame(dict(probeset="p", rule="r", split="heldout", model=["a", "b", "c"], emerged=True,
                                void=False, depth=[1.0, 1.0, 1.0 + 2e-16], depth_lo=[1.0 - 1e-15] * 3,
                                depth_hi=[1.0 + 1e-15] * 3, emergence_step=100))
    sizes = pd.DataFrame(dict(model=["a", "b", "c"], params_total=[1e6, 2e6, 4e6], params_nonembedding=[5e5, 1e6, 2e6]))
    scale = pd.DataFrame(dict(probeset="p", rule="r", split="heldout", size=["params_total", "params_nonembedding"],
                              metric="depth", n_models=3, models="a,b,c", rho=np.nan, p_perm=np.nan, rho_lo=np.nan,
                              rho_hi=np.nan, note="rho undefined: all depths equal", config_sha256="x"))
    fig = F.scale_figure(metrics, scale, sizes, probeset="p", rule="r")
    fig.draw_without_rendering()
    for ax in fig.axes[:2]:
        assert ax.yaxis.get_offset_text().get_text() == "" and ax.xaxis.get_offset_text().get_text() == ""
        assert ax.get_title() == "rho undefined: all depths equal"
    assert_text_inside(fig)
