import math

import numpy as np
import pytest

from finder_result import Trial, Verification, answer_warnings
from lr_plot import loss_ylim
from suggest import (
    AUTO,
    METHODS,
    RISE_DIVISOR,
    CurveReading,
    Landmarks,
    SuggestionError,
    auto_method,
    default_skips,
    find_landmarks,
    median_curve,
    median_half_width,
    onecycle_max_lr,
    read_curve,
    robust_curve,
    smooth,
    suggest_all,
    suggest_minimum,
    suggest_rise,
    suggest_steepest,
    suggest_valley,
    suggested_range,
)

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


def test_smoothing_matches_torch_lr_finder_formula():
    assert smooth([1.0, 3.0, 5.0], 0.5) == [1.0, 2.0, 3.5]
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_default_skips_scale_with_sweep_length():
    assert default_skips(1000) == (10, 5)
    assert default_skips(40) == (4, 2)
    assert default_skips(8) == (0, 0)


def flat_then_blowup(n=120, edge=3e-2, level=2.3, noise=0.04, seed=0, drop=0.0):
    """A sweep that barely learns: flat (falling by ``drop``) with noise, rising from ``edge``."""
    rng = np.random.default_rng(seed)
    lrs = np.logspace(-5, 1, n)
    x = np.log10(lrs / edge)
    loss = level * (1 - drop * np.clip((np.log10(lrs) + 5) / (np.log10(edge) + 5), 0, 1))
    loss = loss + np.where(x > 0, 3.0 * x, 0.0) + rng.normal(0, noise, n)
    return list(lrs), list(loss)


def test_robust_curve_is_a_centred_running_median():
    assert list(robust_curve([1, 9, 2, 3, 100, 4, 5], 1)) == [5.0, 2.0, 3.0, 3.0, 4.0, 5.0, 4.5]


def test_median_window_is_a_tenth_of_a_decade():
    assert median_half_width(np.logspace(-5, 1, 120)) == 2  # 20 points a decade
    assert median_half_width(np.logspace(-7, 1, 1000)) == 12  # 125 points a decade


def test_edge_is_where_a_flat_noisy_loss_starts_to_rise():
    lrs, loss = flat_then_blowup(edge=3e-2)
    marks = find_landmarks(lrs, loss)
    # The exponentially smoothed curve lags by (1 - f) / f = 19 points, a whole decade here.
    assert abs(math.log10(marks.edge_lr / 3e-2)) < 0.25
    assert marks.loss_drop < 0.05
    assert suggest_rise(lrs, loss) == pytest.approx(marks.edge_lr / RISE_DIVISOR)
    # A fall inside the noise has no lowest point to read: the edge is the only landmark.
    assert not marks.valley and marks.bottom_lr == pytest.approx(marks.edge_lr / 2)
    assert onecycle_max_lr(lrs, loss) == pytest.approx(marks.edge_lr)


def test_a_loss_that_never_fell_below_its_start_fell_zero():
    assert Landmarks(start_loss=2.2, min_loss=2.27, min_lr=0.03, edge_lr=0.06).loss_drop == 0.0
    assert Landmarks(start_loss=2.0, min_loss=1.5, min_lr=0.03, edge_lr=0.06).loss_drop == pytest.approx(0.25)


@pytest.mark.parametrize("seed", range(5))
def test_noise_spikes_on_the_flat_part_do_not_fake_an_edge(seed):
    lrs, loss = flat_then_blowup(edge=3e-2, seed=seed, noise=0.08)
    for i in (20, 45, 60):  # single wild batches well before the rise
        loss[i] += 4.0
    assert abs(math.log10(find_landmarks(lrs, loss).edge_lr / 3e-2)) < 0.3


def test_edge_of_a_curve_that_falls_then_rises():
    lrs, loss = flat_then_blowup(edge=3e-2, drop=0.5, noise=0.01)
    marks = find_landmarks(lrs, loss)
    assert marks.min_loss == pytest.approx(1.15, abs=0.06)  # a median of 5 points sits a little above a sharp V
    assert marks.loss_drop == pytest.approx((marks.start_loss - marks.min_loss) / marks.start_loss)
    assert 0.4 < marks.loss_drop < 0.5
    assert abs(math.log10(marks.min_lr / 3e-2)) < 0.2
    # Half-way back up from 1.15 to 2.3 on a rise of 3 per decade: about 0.19 decades past the bottom.
    assert 0.1 < math.log10(marks.edge_lr / 3e-2) < 0.35


def test_auto_reads_the_bottom_with_sgd_and_a_third_of_it_with_adamw():
    assert auto_method("sgd") == "bottom" and auto_method("adamw") == "bottom/3"


def test_one_cycle_peaks_where_a_fall_stops_and_at_the_edge_of_a_fall_inside_the_noise():
    deep_lrs, deep = flat_then_blowup(edge=3e-2, drop=0.5, noise=0.01)
    marks = find_landmarks(deep_lrs, deep)
    assert marks.valley and onecycle_max_lr(deep_lrs, deep) == marks.min_lr < marks.edge_lr
    shallow_lrs, shallow = flat_then_blowup(edge=3e-2)
    shallow_marks = find_landmarks(shallow_lrs, shallow)
    assert not shallow_marks.valley and onecycle_max_lr(shallow_lrs, shallow) == shallow_marks.edge_lr


def test_a_shallow_fall_clear_of_the_noise_is_a_valley_with_no_cliff_in_how_far_it_fell():
    # A loss that falls 5 % with little noise (as a long training's sweep can) has a lowest point to read.
    for drop in (0.05, 0.149, 0.151, 0.3):
        lrs, loss = flat_then_blowup(edge=3e-2, drop=drop, noise=0.002)
        marks = find_landmarks(lrs, loss)
        assert marks.valley and abs(math.log10(marks.min_lr / 3e-2)) < 0.25


def test_no_edge_when_the_sweep_ends_before_the_rise():
    lrs = list(np.logspace(-5, -2, 60))
    loss = list(np.linspace(2.3, 1.2, 60))
    marks = find_landmarks(lrs, loss)
    assert marks.edge_lr is None
    assert suggest_rise(lrs, loss) == pytest.approx(marks.min_lr / 10)
    assert marks.bottom_lr == pytest.approx(marks.min_lr / 10)


def test_every_reading_reads_the_running_median_of_the_raw_loss():
    lrs, loss = flat_then_blowup(edge=3e-2, drop=0.5, noise=0.01)
    result = suggest_all(lrs, loss)
    assert set(result) == {"bottom", "rise", "steepest", "valley", "minimum"}
    assert result["rise"] == suggest_rise(lrs, loss)
    # 120 points over 7 decades: a median of 5 points (2 on each side), one wild batch ignored.
    assert median_curve(LRS, [1, 9, 2, 3, 100, 4, 5] * 17 + [1])[:7] == [2.0, 2.5, 3.0, 4.0, 4.0, 4.0, 5.0]
    assert result["steepest"] != suggest_steepest(lrs, smooth(loss, 0.05))  # the lagging curve reads later
    assert result["minimum"] == pytest.approx(find_landmarks(lrs, loss).min_lr / 10)


def reading(lr=1e-3, loss_drop=0.5, edge_lr=3e-2):
    return CurveReading(
        readings={"bottom": lr}, method="bottom", lr=lr, low=lr / 4, high=lr * 8, start_loss=2.3, min_loss=1.15,
        loss_drop=loss_drop, min_loss_lr=1e-2, edge_lr=edge_lr, blow_lr=None, onecycle_max_lr=1e-2)


def test_warnings_for_very_low_and_very_high_rates():
    assert answer_warnings(1e-3, reading(), None) == ()
    low = answer_warnings(1e-7, reading(1e-7), None)
    assert len(low) == 1 and low[0].startswith("the rate 1.00e-07 is very low (under 1e-05)")
    high = answer_warnings(5.0, reading(5.0), None)
    assert len(high) == 1 and high[0].startswith("the rate 5.00e+00 is very high (over 1)")


def test_a_sweep_that_barely_learned_is_told_what_to_do():
    warnings = answer_warnings(1e-2, reading(loss_drop=0.03), None)
    assert len(warnings) == 1 and warnings[0].startswith("the loss fell only 3%: the sweep barely learned")
    for advice in ("--lr_iter", "larger batch", "--lr_verify"):
        assert advice in warnings[0]
    at_the_edge = Verification(10, 30, "val", 64, "completed", "replaced", 1.0,
                               (Trial(1, 1e-2, 1.0, 50.0, 10), Trial(1, 2e-2, 0.9, 60.0, 10)), chosen_lr=2e-2)
    edge = answer_warnings(2e-2, reading(edge_lr=None), at_the_edge)
    assert "raise --lr_end" in edge[0] and "edge of the rates it tried" in edge[1] and len(edge) == 2
    inconclusive = Verification(10, 30, "val", 64, "completed", "inconclusive", 1.0, (), None)
    assert answer_warnings(1e-3, reading(), inconclusive)[0].startswith(
        "--lr_verify's trials did not beat the curve's rate by more than the held-out noise")


def test_plot_limits_cut_a_diverging_tail():
    low, top = loss_ylim([2.0, 1.5, 1.0, 50.0])  # cut at 2.0 + 3 * (2.0 - 1.0) = 5.0, plus a margin
    assert 0.7 < low < 1.0 and 5.0 < top < 5.3
    assert loss_ylim([2.0, 1.9, 30.0])[1] == pytest.approx(3.0 + 0.05 * 1.1)  # at least 1.5x the start


def test_the_answer_is_the_reading_auto_picked_for_the_optimizer():
    lrs, loss = flat_then_blowup(edge=3e-2, drop=0.5, noise=0.01)
    for optimizer, method, divisor in (("sgd", "bottom", 1), ("adamw", "bottom/3", 3)):
        curve = read_curve(lrs, loss, optimizer)
        assert curve.method == method and curve.lr == pytest.approx(curve.readings["bottom"] / divisor)
    assert read_curve(lrs, loss, "adamw", "valley").method == "valley"  # a choice is kept


def late_dip_curve():
    """A deep fall to 1.0 near 3e-3, a climb back to 2.0 (sustained), then a lower dip to 0.8
    near 0.2 just before the blow-up: the shape where a model is already damaged by the rise."""
    x = np.log10(LRS)
    loss = 1.0 + 1.3 / (1 + np.exp((x + 3.5) / 0.15))  # 2.3 -> 1.0 around 3e-4
    loss = loss + 1.0 / (1 + np.exp(-(x + 1.8) / 0.1))  # back up to 2.0 past 1.6e-2
    loss = loss - 1.2 * np.exp(-((x + 0.7) / 0.08) ** 2)  # the late dip to 0.8 at 0.2
    return list(loss + np.where(x > -0.4, (x + 0.4) * 30, 0))  # blow-up past 0.4


def test_a_late_dip_before_the_blow_up_is_never_read():
    marks = find_landmarks(LRS, late_dip_curve())
    assert 1e-3 < marks.min_lr < 1.5e-2  # the first valley, not the late dip at 0.2
    assert 1e-2 < marks.edge_lr < 3e-2  # the first sustained rise
    suggestions = suggest_all(LRS, late_dip_curve())
    assert all(lr <= marks.edge_lr for lr in suggestions.values())
    assert suggestions["minimum"] < 2e-3  # a tenth of the first valley; 0.02 if the dip were read


def test_a_flat_noisy_loss_has_no_early_rise_from_its_own_noise():
    rng = np.random.default_rng(3)
    x = np.log10(LRS)
    loss = 2.3 + rng.normal(0, 0.05, len(LRS)) + np.where(x > -1, (x + 1) * 6, 0)
    marks = find_landmarks(LRS, list(loss))
    assert marks.edge_lr > 0.08 and marks.blow_lr >= marks.edge_lr


def test_the_range_spans_the_fit_cases_ratios_and_stops_at_the_blow_up():
    assert suggested_range(0.01, "sgd", None) == pytest.approx((0.005, 0.08))
    assert suggested_range(1e-3, "adamw", None) == pytest.approx((1e-3 / 3, 2e-3))
    assert suggested_range(0.01, "sgd", 0.03) == pytest.approx((0.005, 0.03))  # never past the blow-up
    low, high = suggested_range(0.05, "sgd", 0.02)  # an answer above the blow-up keeps a range above it
    assert low < 0.05 <= high


def test_the_cli_offers_exactly_the_readings_suggest_makes():
    from cli import get_args_parser

    action = next(a for a in get_args_parser()._actions if a.dest == "lr_suggest")
    assert tuple(action.choices) == (AUTO, *METHODS) == ("auto", "bottom", "rise", "steepest", "valley", "minimum")
