"""The range-test plot: y-limits that keep the lowest raw and smoothed points in view, and a
title that names the data the user gave."""

import pytest

import find_lr
import main
from lr_plot import loss_ylim
from suggest import smooth

from conftest import FAST, make_image_folder


def test_the_lowest_raw_point_stays_above_the_lower_limit():
    raw = [2.3, 2.2, 1.9, 1.2, 0.4, 1.0, 1.5, 9.0, 40.0]  # one batch dives to 0.4
    smoothed = smooth(raw, 0.3)
    low, top = loss_ylim(smoothed, raw)
    assert min(smoothed) > 1.0 and low < 0.4  # the smoothed curve alone would put the limit near 1
    assert top < 9.0  # the diverging tail is still cut
    # smoothed [2, 1.5, 1, 50]: top cut at 2 + 3 * (2 - 1) = 5 from the smoothed curve; the raw 0.5
    # sets the bottom; a margin of 5 % of (5 - 0.5) on each side
    assert loss_ylim([2.0, 1.5, 1.0, 50.0], [2.2, 0.5, 1.1, 70.0]) == pytest.approx((0.275, 5.225))


def test_without_raw_points_below_the_smoothed_curve_the_limits_are_unchanged():
    smoothed = [2.0, 1.5, 1.0, 50.0]
    assert loss_ylim(smoothed, [2.1, 1.6, 1.05, 60.0]) == loss_ylim(smoothed)
    assert loss_ylim(smoothed, [float("nan"), float("-inf")]) == loss_ylim(smoothed)


def test_the_lower_limit_is_below_every_finite_point_of_both_curves():
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(200):
        raw = list(rng.lognormal(0.5, 0.6, rng.integers(2, 60)))
        smoothed = smooth(raw, 0.05)
        low, top = loss_ylim(smoothed, raw)
        assert low < min(raw) and low < min(smoothed) and top > low


@pytest.mark.parametrize("demo", [False, True])
def test_plot_title_names_the_data(tmp_path, monkeypatch, demo):
    """The user's own folder by its name (not the --dataset default, imagenet1k); the demo by its data set."""
    data = make_image_folder(tmp_path / "flowers", per_class=4, val_per_class=0, size=16)
    titles = []
    monkeypatch.setattr(find_lr, "plot_sweep", lambda path, result, sweep, smooth_f, title, *a: titles.append(title))
    source = ["--demo", "--max_samples", "40"] if demo else ["--data_dir", str(data)]
    main.main(["--find_lr", *source, "--lr_plot", str(tmp_path / "out" / "p.png"), *FAST, "--lr_iter", "3"])
    expected = "digits, resnet18, AdamW" if demo else "flowers, resnet18, SGD"  # the demo sweeps AdamW
    assert titles == [f"LR range test: {expected}, batch 4, 3 of 3 steps"]
