"""The range test's curve read as numbers: pure functions over (lrs, losses), no tensors and no
files. The landmarks (where the loss is lowest, where it starts to rise), each reading of the curve
(rise, steepest, valley, minimum), the answer for an optimizer and its range.

Every reading is taken from one curve: the centred running median of the raw loss
(``robust_curve``), which neither lags nor follows a wild batch, read up to its first sustained rise.

    reading = read_curve(lrs, raw_losses, optimizer="sgd")       # .lr, .method, .low, .high, .edge_lr, ...
    suggestions = suggest_all(lrs, raw_losses)                  # {"bottom": ..., "rise": ..., ...}
    landmarks = find_landmarks(lrs, raw_losses)                  # loss_drop, edge_lr, min_loss_lr, ...
"""

import math
from dataclasses import dataclass

import numpy as np

MIN_POINTS = 5
VERY_LOW_LR = 1e-5
VERY_HIGH_LR = 1.0
# The default (auto) is the bottom, the rate at the running median's lowest point before the loss
# turns up, divided by AUTO_DIVISORS[optimizer]. Chosen on the study's 13 fit cases, trainings of 300
# to 1,540 steps (docs/suggestion_study.md, "The rule of 2026-12-06"):
# - SGD, 1 (the bottom itself): best / bottom was 0.65 to 1.5 on six of eight SGD fit cases and 6 and
#   7.6 on two; no divisor put all eight in their plateaus, 1 puts six (the edge / 2, the rule before,
#   five, and no single divisor of the edge more than five).
# - AdamW, 3: every divisor from 1.7 to 3.3 puts all five AdamW fit cases in their plateaus.
AUTO_DIVISORS = {"sgd": 1.0, "adamw": 3.0}
NO_EDGE_DIVISOR = 10.0  # the loss never turned up: the lowest point is only the sweep's end (fastai's minimum)
RISE_DIVISOR = 2.0  # the ``rise`` reading, on request: half the edge
NOISE_MARGIN = 4.0  # the edge must stand this many standard errors of the running median above the bottom
SHALLOW_FALL = 0.15  # under it the log warns that the sweep barely learned (a warning only: no answer changes)


class SuggestionError(ValueError):
    pass


def smooth(losses, smooth_f: float) -> list[float]:
    """torch-lr-finder's exponential smoothing: s_i = f * x_i + (1 - f) * s_{i-1}."""
    out: list[float] = []
    for i, x in enumerate(losses):
        out.append(x if i == 0 or smooth_f <= 0 else smooth_f * x + (1 - smooth_f) * out[-1])
    return out


def default_skips(n: int) -> tuple[int, int]:
    """Warm-up and tail points left out of every suggestion (10 and 5 on long sweeps)."""
    return min(10, n // 10), min(5, n // 20)


def _window(lrs, losses, skip_start=None, skip_end=None) -> tuple[np.ndarray, np.ndarray]:
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if lrs.shape != losses.shape:
        raise SuggestionError(f"{len(lrs)} learning rates but {len(losses)} losses")
    default_start, default_end = default_skips(len(lrs))
    start = default_start if skip_start is None else skip_start
    end = len(lrs) - (default_end if skip_end is None else skip_end)
    lrs, losses = lrs[start:end], losses[start:end]
    keep = np.isfinite(losses) & np.isfinite(lrs) & (lrs > 0)
    lrs, losses = lrs[keep], losses[keep]
    if len(lrs) < MIN_POINTS:
        raise SuggestionError(
            f"only {len(lrs)} usable points after skipping the first and last ones; "
            f"need at least {MIN_POINTS}: raise --lr_iter"
        )
    return lrs, losses


def _up_to_minimum(lrs: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The descending part of the curve: past the lowest loss, a fall is only a recovery
    from a blow-up, never a rate to train with."""
    end = max(int(np.argmin(losses)) + 1, 2)
    return lrs[:end], losses[:end]


def robust_curve(losses, half_width: int) -> np.ndarray:
    """A centred running median: it does not lag behind the loss as the library's exponential
    smoothing does (by (1 - f) / f steps, more than a decade of lr on a short sweep), and one
    wild batch cannot move it."""
    x = np.asarray(losses, dtype=float)
    return np.array([np.median(x[max(0, i - half_width):i + half_width + 1]) for i in range(len(x))])


def median_half_width(lrs) -> int:
    """Points on each side of the running median: a tenth of a decade of lr, at least 2."""
    lrs = np.asarray(lrs, dtype=float)
    decades = math.log10(lrs[-1] / lrs[0]) if len(lrs) > 1 and lrs[-1] > lrs[0] > 0 else 1.0
    return max(2, round(0.1 * len(lrs) / max(decades, 1e-9)))


@dataclass(frozen=True)
class Landmarks:
    """What a range test shows, read from the raw loss: where the loss starts, its lowest point
    before it first rises, and the edge, the rate at which the loss climbs back half-way from its
    lowest point to its starting level, clear of the noise (Smith's upper bound: where the loss
    starts to rise). The edge is the first sustained rise: a later dip, however low, is not looked
    at (past that rise the sweep's model is already damaged). When no rise holds before the blow-up,
    it is the last crossing on the climb into it. ``edge_lr`` is None when the sweep ended before
    the loss rose; ``blow_lr`` is the first rate at which the loss stood half as high again as
    at the start (None if it never did)."""
    start_loss: float
    min_loss: float
    min_lr: float
    edge_lr: float | None
    blow_lr: float | None = None
    valley: bool = True  # whether the loss fell clear of its noise before it rose (else the lowest point is noise)

    @property
    def loss_drop(self) -> float:
        """How far the loss fell, as a fraction of where it started (0 when it never fell below it:
        the running median's lowest point can sit a little above the first steps' median)."""
        return max(0.0, (self.start_loss - self.min_loss) / self.start_loss) if self.start_loss > 0 else 0.0

    @property
    def bottom_lr(self) -> float:
        """The ``bottom`` reading: the lowest point's rate, where the loss stopped falling before it
        turned up. Where the loss fell no further than its own noise there is no such point (the
        lowest is wherever the noise dipped): the edge is the only landmark, and the reading is the
        ``rise`` (edge / RISE_DIVISOR). When the loss never turned up, a tenth of the lowest point's
        rate (NO_EDGE_DIVISOR): the lowest point is then only where the sweep ended."""
        if self.edge_lr is None:
            return self.min_lr / NO_EDGE_DIVISOR
        return self.min_lr if self.valley else self.edge_lr / RISE_DIVISOR

    @property
    def rise_lr(self) -> float:
        """The ``rise`` reading: the edge over RISE_DIVISOR, else a tenth of the lowest point's rate."""
        return self.edge_lr / RISE_DIVISOR if self.edge_lr is not None else self.min_lr / NO_EDGE_DIVISOR

    @property
    def onecycle_lr(self) -> float:
        """The peak for one-cycle, Smith's upper bound: the rate where the loss stops falling (the
        loss can idle far past it before it blows up); the edge where it fell no further than its
        noise, and the lowest point's rate where it never turned up."""
        return self.min_lr if self.valley or self.edge_lr is None else self.edge_lr


def level_above(low: float, start: float, noise: float) -> float:
    """The loss has risen once it stands above its low by half its fall from ``start``, and clear
    of the noise of the median (NOISE_MARGIN of its standard errors)."""
    return low + max(0.5 * (start - low), NOISE_MARGIN * noise)


def first_rise(curve: np.ndarray, start: float, noise: float, spread: float, hold: int,
               end: int) -> tuple[int, int] | None:
    """(lowest point, rise) of the first valley from which the loss rose (``level_above``) and
    stayed risen for ``hold`` points, before ``end``; None if there is none. A valley is one whose
    fall from ``start`` stands clear of the batch-to-batch ``spread`` of the raw loss (NOISE_MARGIN
    times it): the wander of a flat, noisy loss makes none."""
    lowest = 0
    for i in range(min(end, len(curve))):
        if curve[i] < curve[lowest]:
            lowest = i
        elif start - curve[lowest] > NOISE_MARGIN * spread:
            level = level_above(curve[lowest], start, noise)
            if curve[i] > level and np.all(curve[i:min(i + hold + 1, end)] > level):
                return lowest, i
    return None


def last_crossing(curve: np.ndarray, start: float, noise: float, end: int) -> tuple[int, int | None]:
    """(lowest point before ``end``, the last crossing of ``level_above`` on the climb into
    ``end``): on a loss that fell little, noise on a flat stretch cannot fake an edge."""
    lowest = int(np.argmin(curve[:max(end, 1)]))
    level = level_above(curve[lowest], start, noise)
    for i in range(end - 1, lowest - 1, -1):
        if curve[i] <= level:
            return lowest, (i + 1 if i + 1 < len(curve) else None)
    return lowest, None


def find_landmarks(lrs, raw_losses, skip_start=None, skip_end=None) -> Landmarks:
    """The ``Landmarks`` of a sweep's raw losses (the same window as every suggestion)."""
    lrs, raw = _window(lrs, raw_losses, skip_start, skip_end)
    half = median_half_width(lrs)
    curve = robust_curve(raw, half)
    start = float(np.median(raw[:max(MIN_POINTS, len(raw) // 10)]))
    above = np.flatnonzero(curve > 1.5 * start)  # the blow-up
    blow = int(above[0]) if len(above) else len(curve)
    # On a curve that barely fell, half-way is inside the noise: the level is then set above the
    # noise of the median itself (from the spread of the raw loss around it, robustly).
    residuals = (raw - curve)[:max(blow, MIN_POINTS)]
    spread = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals))))  # a robust sd of the raw loss
    noise = spread * 1.25 / math.sqrt(2 * half + 1)  # the standard error of the median
    valley = first_rise(curve, start, noise, spread, half, blow)
    lowest, edge = valley or last_crossing(curve, start, noise, blow)
    return Landmarks(start, float(curve[lowest]), float(lrs[lowest]), float(lrs[edge]) if edge is not None else None,
                     float(lrs[blow]) if blow < len(curve) else None, valley is not None)


def before_the_rise(lrs, losses, edge_lr: float | None) -> tuple[list, list, dict]:
    """The sweep up to its first sustained rise (all of it when the loss never rose), with the
    skips that keep the window of the whole sweep: (lrs, losses, skip keywords)."""
    if edge_lr is None:
        return list(lrs), list(losses), {}
    cut = next((i + 1 for i, lr in enumerate(lrs) if lr >= edge_lr), len(lrs))
    return list(lrs[:cut]), list(losses[:cut]), {"skip_start": default_skips(len(lrs))[0], "skip_end": 0}


def suggest_steepest(lrs, losses, skip_start=None, skip_end=None) -> float:
    """The learning rate where the loss falls fastest against log10(lr), before its minimum."""
    lrs, losses = _up_to_minimum(*_window(lrs, losses, skip_start, skip_end))
    slope = np.gradient(losses, np.log10(lrs))
    # The lowest point itself is where the fall ends, not where it is steepest; its one-sided
    # slope would otherwise win whenever the last step before it dropped a lot.
    return float(lrs[int(np.argmin(slope[:-1] if len(slope) > 2 else slope))])


def suggest_valley(lrs, losses, skip_start=None, skip_end=None) -> float:
    """fastai's valley: two thirds of the way down the longest descending run of the loss
    (searched before the minimum, like ``suggest_steepest``)."""
    lrs, losses = _up_to_minimum(*_window(lrs, losses, skip_start, skip_end))
    n = len(losses)
    run = np.ones(n, dtype=int)  # run[i]: longest decreasing subsequence ending at i
    for i in range(1, n):
        earlier = losses[:i] > losses[i]
        if earlier.any():
            run[i] = run[:i][earlier].max() + 1
    end = int(np.argmax(run))
    start = end - int(run[end])  # fastai's indexing, kept so the results match theirs
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


def suggest_minimum(lrs, losses, skip_start=None, skip_end=None) -> float:
    """fastai's minimum: one tenth of the learning rate at the lowest loss."""
    lrs, losses = _window(lrs, losses, skip_start, skip_end)
    return float(lrs[int(np.argmin(losses))] / 10)


def suggest_rise(lrs, raw_losses, skip_start=None, skip_end=None) -> float:
    """A fraction (``1 / RISE_DIVISOR``) of the edge: the rate at which the loss starts to rise
    (see ``Landmarks``); the ``bottom`` reading when the sweep never reached it."""
    return find_landmarks(lrs, raw_losses, skip_start, skip_end).rise_lr


def suggest_bottom(lrs, raw_losses, skip_start=None, skip_end=None) -> float:
    """The rate at the lowest point before the loss turns up (``Landmarks.bottom_lr``)."""
    return find_landmarks(lrs, raw_losses, skip_start, skip_end).bottom_lr


def onecycle_max_lr(lrs, raw_losses, skip_start=None, skip_end=None) -> float:
    """The peak for one-cycle (``Landmarks.onecycle_lr``)."""
    return find_landmarks(lrs, raw_losses, skip_start, skip_end).onecycle_lr


# Readings of the shape of the running median, up to its first sustained rise.
CURVE_SUGGESTERS = {"steepest": suggest_steepest, "valley": suggest_valley, "minimum": suggest_minimum}
METHODS = ("bottom", "rise", *CURVE_SUGGESTERS)
AUTO = "auto"  # the default: the bottom over AUTO_DIVISORS[optimizer]


def auto_divisor(optimizer: str) -> float:
    """What ``auto`` divides the bottom by (AUTO_DIVISORS: 1 with SGD, 3 with AdamW)."""
    return AUTO_DIVISORS["adamw" if optimizer == "adamw" else "sgd"]


def auto_method(optimizer: str) -> str:
    """The name of ``auto``'s reading: ``bottom``, or ``bottom/3`` where it divides the bottom."""
    divisor = auto_divisor(optimizer)
    return "bottom" if divisor == 1 else f"bottom/{divisor:g}"


# How far the best rate lay from the default answer on the fit cases (best / answer, trainings of 300
# to 1,540 steps, docs/suggestion_study.md): 0.65 to 7.6 with SGD, 0.44 to 1.27 with AdamW. The range
# spans that, not more, and never passes the blow-up.
RANGE_FACTORS = {"sgd": (2.0, 8.0), "adamw": (3.0, 2.0)}  # (below, above) the answer


def suggested_range(answer: float, optimizer: str, blow_lr: float | None) -> tuple[float, float]:
    """[low, high]: where the best rate is expected to lie around the curve's ``answer``."""
    below, above = RANGE_FACTORS["adamw" if optimizer == "adamw" else "sgd"]
    high = answer * above if blow_lr is None else min(answer * above, max(blow_lr, answer))
    return answer / below, high


def median_curve(lrs, raw_losses) -> list[float]:
    """The running median every reading is taken from (the landmarks' own window width)."""
    return list(robust_curve(raw_losses, median_half_width(_window(lrs, raw_losses)[0])))


def suggest_all(lrs, raw_losses) -> dict[str, float]:
    """Every reading's rate, each from the running median of the raw loss and only up to its first
    sustained rise (``Landmarks``)."""
    marks = find_landmarks(lrs, raw_losses)
    cut_lrs, cut_losses, skips = before_the_rise(lrs, median_curve(lrs, raw_losses), marks.edge_lr)
    return {"bottom": marks.bottom_lr, "rise": marks.rise_lr,
            **{name: fn(cut_lrs, cut_losses, **skips) for name, fn in CURVE_SUGGESTERS.items()}}


@dataclass(frozen=True)
class CurveReading:
    """What a range test's curve says: every reading, the one the answer is, its range, and the
    landmarks behind them (``Landmarks``). Built by ``read_curve``."""
    readings: dict[str, float]  # every method's rate
    method: str  # the reading the answer is
    lr: float  # the curve's answer
    low: float  # ``suggested_range``
    high: float
    start_loss: float
    min_loss: float
    loss_drop: float  # the fraction the loss fell before it rose
    min_loss_lr: float
    edge_lr: float | None  # where the loss turns up; None when the sweep ended before
    blow_lr: float | None  # where it stood half as high again as at the start
    onecycle_max_lr: float


def read_curve(lrs, losses, optimizer: str = "sgd", method: str = AUTO) -> CurveReading:
    """The curve's answer (``method`` ``auto``: the bottom over ``auto_divisor(optimizer)``), its
    range and landmarks; SuggestionError when the curve is too short."""
    readings = suggest_all(lrs, losses)
    marks = find_landmarks(lrs, losses)
    if method == AUTO:
        name, lr = auto_method(optimizer), readings["bottom"] / auto_divisor(optimizer)
    else:
        name, lr = method, readings[method]
    low, high = suggested_range(lr, optimizer, marks.blow_lr)
    return CurveReading(readings, name, lr, low, high, marks.start_loss, marks.min_loss,
                        round(marks.loss_drop, 4), marks.min_lr, marks.edge_lr, marks.blow_lr, marks.onecycle_lr)
