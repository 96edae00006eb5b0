"""The demo's plot: smoothed curves over faint raw points, legends clear of the data."""

from __future__ import annotations

import pytest

from rlhf.demo.plot import draw_training, ema


def test_ema_is_debiased_and_keeps_gaps():
    # a = 0.5, s_t = n_t / w_t with n_t = a*n_{t-1} + (1-a)*x_t and w_t = a*w_{t-1} + (1-a):
    #   n1 = 0.5*2 = 1,    w1 = 0.5    -> 2
    #   n2 = 0.5*1 + 0.5*4 = 2.5,      w2 = 0.75  -> 3.333
    #   (None: a gap, nothing changes)
    #   n3 = 0.5*2.5 + 0.5*0 = 1.25,   w3 = 0.875 -> 1.429
    assert ema([2.0, 4.0, None, 0.0], smoothing=0.5) == pytest.approx([2.0, 2.5 / 0.75, None, 1.25 / 0.875])
    assert ema([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])  # a constant stays put from the first point


def test_legends_sit_outside_the_data_and_raw_curves_are_faint():
    rows = [
        {
            "step": s,
            "objective/reward": s / 10,
            "objective/ground_truth": s / 20,
            "objective/kl": 10.0 if s == 2 else 0.5,
        }
        for s in range(1, 31)
    ]  # a late high reward, a step-2 spike
    fig = draw_training(rows)
    fig.canvas.draw()
    for ax in fig.axes:
        legend, frame = ax.get_legend(), ax.get_window_extent()
        assert legend.get_window_extent().y0 >= frame.y1 - 1  # above the panel, not on its data
        raw = [line for line in ax.get_lines() if line.get_alpha() is not None and line.get_alpha() < 0.5]
        smoothed = [line for line in ax.get_lines() if line.get_alpha() is None]
        assert raw and len(raw) == len(smoothed)
        assert all("(EMA)" in text.get_text() for text in legend.get_texts())
