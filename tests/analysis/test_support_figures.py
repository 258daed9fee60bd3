"""The support and sweep figures draw the measured numbers: in-frame and corpus-wide lines on
a log axis with the parity line, empty windows as gaps, the sweep against measured support."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pythia_forensics.analysis.support_figures import support_figure, sweep_figure


def support_rows():
    rows = []
    for frame, wins, losses in (("corpus", [500, 600, 550], [10, 12, 9]), ("conflict", [5, 0, 3], [40, 0, 30])):
        for k, (w, p) in enumerate(zip(wins, losses)):
            ratio = np.nan if w == p == 0 else (w + 1) / (p + 1)
            rows.append(dict(rule="r", frame=frame, window_start_step=50 * k, window_end_step=50 * (k + 1),
                             rule_wins=w, prior_wins=p, ratio=ratio))
    return pd.DataFrame(rows)


def trajectories():
    steps = [0, 50, 100, 150]
    return pd.DataFrame(dict(model="m", probeset="r", rule="r", split="heldout", step=steps, used=True,
                             conflict_smooth=[0.0, 1.0, 1.0, 0.0]))


def test_support_figure_draws_each_frame_on_a_log_axis_with_parity():
    fig = support_figure(support_rows(), trajectories(), probeset="r", rule="r", order=["m"])
    left = fig.axes[0]
    assert left.get_yscale() == "log"
    stairs = [p for p in left.patches]
    assert len(stairs) == 2  # corpus-wide and in-frame
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert any(lab.startswith("corpus-wide: 1,650:31") for lab in labels)
    assert any(lab.startswith("in the conflict frame: 8:70") for lab in labels)
    parity = [ln for ln in left.get_lines() if list(ln.get_ydata()) == [1.0, 1.0]]
    assert parity, "no parity line"
    conflict = next(p for p in stairs if p.get_label().startswith("in the conflict frame"))
    values = conflict.get_data().values
    assert np.isnan(values[1]) and values[0] < 1 < stairs[0].get_data().values[0]  # no events: a gap


def test_sweep_figure_x_is_the_measured_in_frame_ratio():
    table = pd.DataFrame(dict(support=[0.1, 0.5, 0.9], in_frame_ratio=[0.12, 0.95, 9.0], final_acc=[0.0, 0.0, 1.0],
                              final_cm=[-4.0, -1.0, 4.0], verdict=["DISPLACED", "DISPLACED", "RECOVERED"],
                              survived=[False, False, True]))
    fig = sweep_figure(table, rule="r")
    left = fig.axes[0]
    assert left.get_xscale() == "log"
    line = left.get_lines()[0]
    assert list(line.get_xdata()) == [0.12, 0.95, 9.0]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "fate flips between 0.95 and 9" in labels
