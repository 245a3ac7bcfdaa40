import math

import numpy as np
import pytest

from lr_finder import (SuggestionError, analyse, confidence, default_skips, loss_ylim, onecycle_max_lr, smooth,
                       spread_decades, suggest_minimum, suggest_steepest, suggest_valley)

LRS = list(np.logspace(-6, 1, 120))


def descent_curve(center=1e-3, width=0.3, tail_from=1e-1):
    """Flat at 2.3, a logistic drop to 0.5 centred on ``center`` (in log10), rising after ``tail_from``."""
    x = np.log10(LRS)
    loss = 0.5 + 1.8 / (1 + np.exp((x - np.log10(center)) / width))
    return list(loss + np.where(x > np.log10(tail_from), (x - np.log10(tail_from)) * 4, 0))


def test_steepest_finds_the_centre_of_the_drop():
    lr = suggest_steepest(LRS, descent_curve(center=1e-3))
    assert abs(math.log10(lr) - (-3)) < 0.1


def test_steepest_is_never_the_lowest_point_itself():
    lrs = [10.0 ** (k / 4) for k in range(-16, 0)]
    losses = [2.3] * 6 + [2.25, 2.2, 2.15, 2.1, 2.05, 1.2, 3.0, 5.0, 8.0, 9.0]  # big last drop into the minimum
    assert suggest_steepest(lrs, losses, 0, 0) == pytest.approx(lrs[10])


def test_steepest_is_taken_against_log_lr_not_linear_lr():
    # Against linear lr the later (wider-spaced) points would look flatter; the drop centre still wins.
    lr = suggest_steepest(LRS, descent_curve(center=1e-4, width=0.5))
    assert abs(math.log10(lr) - (-4)) < 0.15


def test_steepest_ignores_a_fall_after_the_minimum():
    loss = descent_curve(center=1e-3)
    loss[-30:] = list(np.linspace(12, 1, 30))  # a blow-up, then a steep "recovery"
    assert abs(math.log10(suggest_steepest(LRS, loss)) - (-3)) < 0.1


def test_steepest_on_a_noisy_curve_stays_near_the_drop():
    rng = np.random.default_rng(0)
    noisy = np.array(descent_curve(center=1e-3)) + rng.normal(0, 0.05, len(LRS))
    lr = suggest_steepest(LRS, smooth(list(noisy), 0.3))
    assert abs(math.log10(lr) - (-3)) < 0.6


def test_non_finite_losses_are_skipped():
    loss = descent_curve(center=1e-3)
    loss[100] = float("nan")
    loss[101] = float("inf")
    assert abs(math.log10(suggest_steepest(LRS, loss)) - (-3)) < 0.1


def test_too_few_points_is_a_clear_error():
    with pytest.raises(SuggestionError, match="need at least 5.*raise --lr_iter"):
        suggest_steepest([1e-3, 1e-2, 1e-1], [2.0, 1.0, 3.0])


def test_valley_follows_fastai_on_a_hand_worked_curve():
    # Longest decreasing run ends at index 6 with length 6 (5, 4, 3, 2, 1, 0.5), so fastai's
    # start is 6 - 6 = 0, a third of the span is 2, and the pick is 0 + 2 + 1 = index 3.
    losses = [5, 4, 6, 3, 2, 1, 0.5, 2, 8]
    lrs = [10.0 ** k for k in range(-8, 1)]
    assert suggest_valley(lrs, losses, 0, 0) == pytest.approx(lrs[3])


def test_valley_lands_inside_the_descent():
    lr = suggest_valley(LRS, descent_curve(center=1e-3, width=0.4))
    assert 1e-5 < lr < 1e-1


def test_minimum_is_a_tenth_of_the_lowest_loss_lr():
    loss = [3.0, 2.5, 2.0, 1.5, 1.0, 0.8, 0.7, 1.5, 4.0, 9.0]
    lrs = [10.0 ** -k for k in range(10, 0, -1)]
    assert suggest_minimum(lrs, loss, 0, 0) == pytest.approx(lrs[6] / 10)
    assert onecycle_max_lr(lrs, loss, 0, 0) == pytest.approx(lrs[6])


def test_smoothing_matches_torch_lr_finder_formula():
    assert smooth([1.0, 3.0, 5.0], 0.5) == [1.0, 2.0, 3.5]
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_default_skips_scale_with_sweep_length():
    assert default_skips(1000) == (10, 5)
    assert default_skips(40) == (4, 2)
    assert default_skips(8) == (0, 0)


@pytest.mark.parametrize("spread,level", [(0.2, "high"), (0.5, "high"), (0.8, "medium"), (1.0, "medium"), (2.5, "low")])
def test_confidence_levels(spread, level):
    assert confidence(spread) == level


def test_spread_in_decades():
    assert spread_decades([1e-3, 1e-2, 1e-4]) == pytest.approx(2.0)


def test_analysis_warns_for_very_low_and_very_high_rates():
    verdict, warnings = analyse(1e-3, "high", 0.1)
    assert verdict == "Learning rate appears to be in a reasonable range" and warnings == []
    _, low = analyse(1e-7, "high", 0.1)
    assert len(low) == 1 and "very low" in low[0]
    _, high = analyse(5.0, "high", 0.1)
    assert len(high) == 1 and "very high" in high[0]
    _, disagree = analyse(1e-3, "low", 2.0)
    assert "disagree by 2.0 decades" in disagree[0]


def test_plot_limits_cut_a_diverging_tail():
    low, top = loss_ylim([2.0, 1.5, 1.0, 50.0])  # cut at 2.0 + 3 * (2.0 - 1.0) = 5.0, plus a margin
    assert 0.7 < low < 1.0 and 5.0 < top < 5.3
    assert loss_ylim([2.0, 1.9, 30.0])[1] == pytest.approx(3.0 + 0.05 * 1.1)  # at least 1.5x the start
