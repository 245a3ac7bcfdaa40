"""The learning-rate range test: torch-lr-finder's ``LRFinder`` extended, the suggestion
math as pure functions over (lrs, losses), and the plot.

    finder = RangeTest(model, optimizer, criterion, device, **amp_options(device, torch.bfloat16),
                       input_transform=partial(to_model_input, device=device))
    sweep = finder.sweep(train_loader, start_lr=1e-7, end_lr=10, num_iter=1000)
    suggestions = suggest_all(sweep.lrs, sweep.raw_losses, smooth_f=0.05)

(``to_model_input`` is images.py's; any other model takes ``RangeTest`` as it takes ``LRFinder``.)
"""

import contextlib
import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch_lr_finder import LRFinder, TrainDataLoaderIter, ValDataLoaderIter
from torch_lr_finder.lr_finder import StateCacher

from errors import UserInputError
from runtime import Distributed, cpu_copy, unwrap

MIN_POINTS = 5
VERY_LOW_LR = 1e-5
VERY_HIGH_LR = 1.0
# Chosen with benchmarks/suggestion_study.py (see the README's tables): with SGD the default rate is
# the edge divided by RISE_DIVISOR (with AdamW a tenth of the lowest point's rate: auto_method), and a
# loss that fell less than LOW_DROP never gives more than low confidence.
RISE_DIVISOR = 2.0
NOISE_MARGIN = 4.0  # the edge must stand this many standard errors of the running median above the bottom
LOW_DROP = 0.15
HIGH_DROP = 0.30


# --------------------------------------------------------------------------- math


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
    starts to rise). After a deep fall, the edge is the first sustained rise: a later dip, however
    low, is not looked at (past that rise the sweep's model is already damaged). After a shallow
    fall, it is the last crossing on the climb into the blow-up (noise cannot fake it). ``edge_lr`` is None when the sweep ended
    before the loss rose; ``blow_lr`` is the first rate at which the loss stood half as high again as
    at the start (None if it never did)."""
    start_loss: float
    min_loss: float
    min_lr: float
    edge_lr: float | None
    blow_lr: float | None = None

    @property
    def loss_drop(self) -> float:
        """How far the loss fell, as a fraction of where it started (0 when it never fell below it:
        the running median's lowest point can sit a little above the first steps' median)."""
        return max(0.0, (self.start_loss - self.min_loss) / self.start_loss) if self.start_loss > 0 else 0.0

    @property
    def rise_lr(self) -> float:
        """The ``rise`` suggestion: the edge over RISE_DIVISOR, else a tenth of the lowest point's rate."""
        return self.edge_lr / RISE_DIVISOR if self.edge_lr is not None else self.min_lr / 10

    @property
    def deep(self) -> bool:
        """Whether the loss fell far enough (LOW_DROP) for its lowest point to be a landmark."""
        return self.loss_drop >= LOW_DROP

    @property
    def onecycle_lr(self) -> float:
        """The peak for one-cycle, Smith's upper bound: the rate where the loss stops falling. On a
        curve that fell that is its lowest point (the loss can idle far past it before it blows up);
        on one that barely fell, the edge, else the lowest point's rate."""
        return self.min_lr if self.deep or self.edge_lr is None else self.edge_lr


def level_above(low: float, start: float, noise: float) -> float:
    """The loss has risen once it stands above its low by half its fall from ``start``, and clear
    of the noise of the median (NOISE_MARGIN of its standard errors)."""
    return low + max(0.5 * (start - low), NOISE_MARGIN * noise)


def first_deep_rise(curve: np.ndarray, start: float, noise: float, hold: int, end: int) -> tuple[int, int] | None:
    """(lowest point, rise) of the first valley that fell deep (LOW_DROP of ``start``) and from
    which the loss then rose (``level_above``) and stayed risen for ``hold`` points, before ``end``;
    None if there is none. A shallow dip in a flat, noisy loss is never such a valley."""
    lowest = 0
    for i in range(min(end, len(curve))):
        if curve[i] < curve[lowest]:
            lowest = i
        elif start - curve[lowest] >= LOW_DROP * start:
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
    noise = 1.4826 * float(np.median(np.abs(residuals - np.median(residuals)))) * 1.25 / math.sqrt(2 * half + 1)
    lowest, edge = first_deep_rise(curve, start, noise, half, blow) or last_crossing(curve, start, noise, blow)
    return Landmarks(start, float(curve[lowest]), float(lrs[lowest]), float(lrs[edge]) if edge is not None else None,
                     float(lrs[blow]) if blow < len(curve) else None)


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
    """One tenth of the learning rate at the lowest loss."""
    lrs, losses = _window(lrs, losses, skip_start, skip_end)
    return float(lrs[int(np.argmin(losses))] / 10)


def suggest_rise(lrs, raw_losses, skip_start=None, skip_end=None) -> float:
    """A fraction (``1 / RISE_DIVISOR``) of the edge: the rate at which the loss starts to rise
    (see ``Landmarks``); a tenth of the lowest point's rate when the sweep never reached it."""
    return find_landmarks(lrs, raw_losses, skip_start, skip_end).rise_lr


def onecycle_max_lr(lrs, raw_losses, skip_start=None, skip_end=None) -> float:
    """The peak for one-cycle (``Landmarks.onecycle_lr``)."""
    return find_landmarks(lrs, raw_losses, skip_start, skip_end).onecycle_lr


# Readings of the curve the library smooths (lagging) and the default, read from the raw loss.
CURVE_SUGGESTERS = {"steepest": suggest_steepest, "valley": suggest_valley, "minimum": suggest_minimum}
METHODS = ("rise", *CURVE_SUGGESTERS)
AUTO = "auto"  # the default: rise or minimum, by optimizer


def auto_method(optimizer: str) -> str:
    """The reading ``auto`` uses: ``minimum`` for AdamW, ``rise`` for SGD (as measured by
    benchmarks/suggestion_study.py). With SGD a from-scratch ResNet-50 barely learns in a sweep and
    blows up soon after its lowest point, so only the edge is a landmark; with AdamW the loss falls,
    then idles far past its lowest point before it blows up, so the edge is no guide."""
    return "minimum" if optimizer == "adamw" else "rise"


def trusted_readings(suggestions: dict[str, float], optimizer: str) -> list[float]:
    """The readings whose agreement the confidence weighs: with AdamW the two that read the fall
    (its edge can lie far past the good rates), with SGD those and the edge. fastai's ``valley``
    is left out: it reads the start of the longest fall, a decade or more under the others on
    most curves, so counting it made a textbook curve look as uncertain as a flat one."""
    names = ("steepest", "minimum") if auto_method(optimizer) in CURVE_SUGGESTERS else ("rise", "steepest", "minimum")
    return [suggestions[name] for name in names if name in suggestions]


# How far the best rate lay from the default answer on the fit cases (best / answer, 4-epoch
# trainings of benchmarks/suggestion_study.py and the three cases measured by hand; see
# docs/suggestion.md): 0.3 to 6.2 with SGD (the edge is no sharp landmark when the sweep barely
# learned), 0.7 to 2 with AdamW. The range spans that, not more, and never passes the blow-up.
RANGE_FACTORS = {"sgd": (4.0, 8.0), "adamw": (3.0, 4.0)}  # (below, above) the answer


def suggested_range(answer: float, optimizer: str, blow_lr: float | None) -> tuple[float, float]:
    """[low, high]: where the best rate is expected to lie around the curve's ``answer``."""
    below, above = RANGE_FACTORS["adamw" if optimizer == "adamw" else "sgd"]
    high = answer * above if blow_lr is None else min(answer * above, max(blow_lr, answer))
    return answer / below, high


def suggest_all(lrs, raw_losses, smooth_f: float) -> dict[str, float]:
    """Every method's rate: ``rise`` from the raw loss, the others from its exponential smoothing,
    each read only up to the first sustained rise of the loss (``Landmarks``)."""
    marks = find_landmarks(lrs, raw_losses)
    cut_lrs, cut_losses, skips = before_the_rise(lrs, smooth(raw_losses, smooth_f), marks.edge_lr)
    return {"rise": marks.rise_lr, **{name: fn(cut_lrs, cut_losses, **skips) for name, fn in CURVE_SUGGESTERS.items()}}


def spread_decades(values) -> float:
    values = [v for v in values if v and v > 0]
    return float(math.log10(max(values) / min(values))) if values else float("nan")


@dataclass(frozen=True)
class Evidence:
    """What a confidence level rests on."""
    loss_drop: float  # fraction the loss fell before rising (Landmarks.loss_drop)
    spread: float  # decades between the methods' rates
    edge_found: bool  # the sweep reached the rates where the loss rises
    # --lr_verify: None (not run), "inconclusive" (the trials could not tell the rates apart), else
    # whether the rate they chose was inside the rates they tried
    verified: bool | str | None = None


def confidence(e: Evidence) -> str:
    """high / medium / low, from how much the loss fell, whether the methods agree and the trials.

    - low: the loss fell less than LOW_DROP, or the sweep never reached the rise, or the methods
      disagree by more than a decade, unless ``--lr_verify`` found its best inside its trials
      (then medium);
    - high: the loss fell at least HIGH_DROP and the methods agree within half a decade, or the
      trials found their best inside and the curve itself is at least medium;
    - medium otherwise."""
    from_curve = "medium"
    if e.loss_drop < LOW_DROP or not e.edge_found or not e.spread <= 1.0:
        from_curve = "low"
    elif e.loss_drop >= HIGH_DROP and e.spread <= 0.5:
        from_curve = "high"
    if e.verified is True:
        return "high" if from_curve != "low" else "medium"
    return from_curve


def analyse(lr: float, level: str, e: Evidence) -> tuple[str, list[str]]:
    """A verdict line and warnings for a suggested learning rate."""
    warnings = []
    if lr < VERY_LOW_LR:
        warnings.append(
            f"Suggested LR {lr:.2e} is very low (< {VERY_LOW_LR:g}): the loss may not have started "
            "falling before the sweep ended; check the plot, try a lower --lr_start or more steps")
    if lr > VERY_HIGH_LR:
        warnings.append(
            f"Suggested LR {lr:.2e} is very high (> {VERY_HIGH_LR:g}): training may diverge; "
            "start lower (e.g. a tenth of it) and watch the first epoch")
    if not e.edge_found:
        warnings.append(
            "The loss never started to rise: the sweep ended before the rates where training becomes "
            "unstable, so the suggestion is only a tenth of the lowest point's rate; raise --lr_end")
    if e.loss_drop < LOW_DROP:
        warnings.append(
            f"The loss fell only {e.loss_drop:.0%} before rising: the sweep barely learned, so the curve "
            "shows little more than where training becomes unstable. For a firmer answer: more steps "
            "(--lr_iter), a larger batch, a lower --lr_start, or --lr_verify N to check the candidates "
            "with short trainings")
    if not e.spread <= 1.0:
        warnings.append(
            f"The suggestion methods disagree by {e.spread:.1f} decades: the curve has no single clear "
            "reading (noisy loss or too few steps)")
    if e.verified is False:
        warnings.append(
            "--lr_verify's best rate was at the edge of the rates it tried: the best may lie beyond; "
            "check the verification panel of the plot")
    if e.verified == "inconclusive":
        warnings.append(
            "--lr_verify's trials did not beat the curve's rate by more than the held-out noise, so the "
            "suggestion stays the curve's: longer trials (a larger N) or more held-out images would tell")
    if level == "low" and not warnings:
        warnings.append("Confidence is low; check the plot")
    verdict = ("Learning rate appears to be in a reasonable range" if not warnings
               else f"Confidence {level}: check the warnings below")
    return verdict, warnings


# ------------------------------------------------------------------- the finder


class SweepStopped(Exception):
    def __init__(self, reason: str, lr: float | None = None):
        super().__init__(reason)
        self.reason, self.lr = reason, lr


@dataclass
class Sweep:
    lrs: list[float]
    losses: list[float]  # smoothed, the curve the suggestions use
    raw_losses: list[float]  # training loss of each step
    val_losses: list[float] = field(default_factory=list)  # advanced mode
    stop_reason: str = "completed"
    stop_step: int | None = None  # the step (0-based) at which the stop was decided
    stop_lr: float | None = None
    skipped_steps: list[int] = field(default_factory=list)
    bad_images: int = 0

    @property
    def steps_run(self) -> int:
        return len(self.lrs)


class CpuStateCacher(StateCacher):
    """Keeps the initial model/optimizer state in host memory, not as a second GPU copy."""

    def __init__(self):
        super().__init__(in_memory=True)

    def store(self, key, state_dict):
        self.cached[key] = cpu_copy(state_dict)


class CountingTrainIter(TrainDataLoaderIter):
    """Cycles the loader (library behaviour) over our (images, labels, bad file) batches and counts
    the unreadable files workers skipped: the third element holds each sample's bad file index
    (-1: none), so each file counts once."""

    def __init__(self, data_loader):
        super().__init__(data_loader, auto_reset=True)
        self.bad_files: set[int] = set()
        self.seen = 0

    @property
    def bad(self) -> int:
        return len(self.bad_files)

    def inputs_labels_from_batch(self, batch_data):
        images, labels, bad_files = batch_data
        self.bad_files.update(i for i in bad_files.tolist() if i >= 0)
        self.seen += len(labels)
        return images, labels


class FixedValBatches(ValDataLoaderIter):
    """The first ``max_batches`` validation batches, held in memory and reused at every step."""

    def __init__(self, data_loader, max_batches: int):
        self.data_loader = data_loader
        self.batches = []
        for images, labels, _ in data_loader:
            if len(self.batches) == max_batches:
                break
            self.batches.append((images, labels))

    def __iter__(self):
        return iter(self.batches)


def amp_options(device, amp_dtype: torch.dtype | None) -> dict:
    """LRFinder's mixed-precision arguments for autocast in ``amp_dtype`` (fp16 with a
    GradScaler); none for full precision."""
    if amp_dtype is None:
        return {}
    device_type = torch.device(device).type
    return {"amp_backend": "torch", "amp_config": {"device_type": device_type, "dtype": amp_dtype},
            "grad_scaler": torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)}


class RangeTest(LRFinder):
    """A drop-in ``LRFinder`` (same arguments, same ``range_test``/``reset``/``plot``/``history``)
    that also stops cleanly on a NaN/inf loss or a stop request, records the raw loss of every
    step (``last_sweep``), keeps an in-memory initial state on the CPU, and under torchrun
    averages each step's loss over the ranks.

    Keyword-only: ``input_transform(inputs)`` puts a batch's inputs on the device in the model's
    form (default: moved as the library moves them); ``batch_transform(inputs, labels)`` then
    changes each training batch (not the validation ones) on the device, e.g. MixUp with soft
    targets; ``stop_requested()`` is asked after every step; ``max_bad_fraction`` stops a ``sweep``
    whose loader skipped more unreadable files.

    Every parameter group sweeps the same rate (the library sets them all to each step's rate),
    each keeping its own weight decay."""

    def __init__(self, model, optimizer, criterion, device=None, memory_cache=True, cache_dir=None,
                 amp_backend=None, amp_config=None, grad_scaler=None, *, input_transform=None,
                 batch_transform=None, stop_requested=lambda: False, dist: Distributed | None = None,
                 max_bad_fraction: float | None = None):
        super().__init__(model, optimizer, criterion, device=device, memory_cache=memory_cache,
                         cache_dir=cache_dir, amp_backend=amp_backend, amp_config=amp_config,
                         grad_scaler=grad_scaler)
        self.input_transform = input_transform
        self.batch_transform = batch_transform
        self.stop_requested = stop_requested
        self.dist = dist or Distributed(device=torch.device(self.device))
        self.max_bad_fraction = max_bad_fraction
        self.last_sweep: Sweep | None = None
        self._stop_next = False
        self._bad_sum, self._bad_files = 0.0, set()

    @property
    def state_cacher(self):
        return self._state_cacher

    @state_cacher.setter
    def state_cacher(self, cacher):
        # LRFinder.__init__ stores the initial state right after making its cacher: an
        # in-memory one is swapped for ours first, so no second copy is ever made on the GPU.
        self._state_cacher = CpuStateCacher() if cacher.in_memory else cacher

    def _to_device(self, inputs, labels, non_blocking=True):
        if self.input_transform is None:
            return super()._move_to_device(inputs, labels, non_blocking)
        _, labels = super()._move_to_device(None, labels, non_blocking)
        return self.input_transform(inputs), labels

    def _move_to_device(self, inputs, labels, non_blocking=True):
        """The library calls this for training batches only (``_validate`` uses ``_to_device``)."""
        inputs, labels = self._to_device(inputs, labels, non_blocking)
        return self.batch_transform(inputs, labels) if self.batch_transform is not None else (inputs, labels)

    def _current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _scaler_enabled(self) -> bool:
        return self.amp_backend == "torch" and self.grad_scaler.is_enabled()

    def _train_batch(self, train_iter, accumulation_steps, non_blocking_transfer=True):
        if self._stop_next:
            raise SweepStopped("interrupted")
        scale = self.grad_scaler.get_scale() if self._scaler_enabled() else None
        local = super()._train_batch(train_iter, accumulation_steps, non_blocking_transfer)
        # One all-reduce carries the loss, any rank's stop request and the bad-file counts:
        # the loss is averaged *before* smoothing, so every rank records the same curve and
        # takes every decision below at the same step; no rank is left waiting for another.
        loss_sum, stops, bad_sum, seen = self.dist.all_reduce_sum(
            [local, float(self.stop_requested()), getattr(train_iter, "bad", 0), getattr(train_iter, "seen", 0)])
        loss = loss_sum / self.dist.world_size
        record = self.last_sweep
        record.raw_losses.append(loss)
        bad = record.bad_images = self._bad_over_ranks(train_iter, bad_sum)
        limit = self.max_bad_fraction
        if limit is not None and bad > limit * max(seen, len(train_iter.dataset)):
            raise UserInputError(
                f"{int(bad)} unreadable images in {int(seen)} read (over {limit:.0%}): "
                "the data looks broken; see the warnings above for the files")
        if scale is not None and self.grad_scaler.get_scale() < scale:
            record.skipped_steps.append(len(record.raw_losses) - 1)
        if not math.isfinite(loss):
            raise SweepStopped("non_finite_loss", self._current_lr())
        if stops:
            self._stop_next = True  # this step counts; the sweep ends before the next one
        return loss

    def _bad_over_ranks(self, train_iter, bad_sum: float) -> int:
        """Unreadable files met by any rank, each counted once even when two ranks met it (the
        data order changes every pass). The sets are gathered only when a rank's count grew:
        the sum of the counts is the same on every rank, so all take part or none does."""
        if bad_sum != self._bad_sum:
            self._bad_sum = bad_sum
            self._bad_files = set().union(*self.dist.all_gather(getattr(train_iter, "bad_files", set())))
        return len(self._bad_files)

    def _validate(self, val_iter, non_blocking_transfer=True):
        total, count = 0.0, 0
        model = unwrap(self.model)  # no DDP collectives: ranks may hold different batch counts
        model.eval()
        autocast = torch.amp.autocast(**self.amp_config) if self.amp_backend == "torch" else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            for inputs, labels in val_iter:
                inputs, labels = self._to_device(inputs, labels, non_blocking_transfer)
                total += self.criterion(model(inputs), labels).item() * len(labels)
                count += len(labels)
        total, count = self.dist.all_reduce_sum([total, count])
        loss = total / count
        self.last_sweep.val_losses.append(loss)
        if not math.isfinite(loss):
            raise SweepStopped("non_finite_loss", self._current_lr())
        return loss

    def range_test(self, train_loader, val_loader=None, start_lr=None, end_lr=10, num_iter=100, step_mode="exp",
                   smooth_f=0.05, diverge_th=5, accumulation_steps=1, non_blocking_transfer=True):
        """``LRFinder.range_test``; a NaN/inf loss or a stop request ends it after the steps so
        far (kept in ``history``), and ``last_sweep`` records how it ended and the raw losses."""
        self.last_sweep = result = Sweep(lrs=[], losses=[], raw_losses=[])
        self._stop_next = False
        self._bad_sum, self._bad_files = 0.0, set()
        try:
            super().range_test(train_loader, val_loader, start_lr, end_lr, num_iter, step_mode, smooth_f,
                               diverge_th, accumulation_steps, non_blocking_transfer)
            if len(self.history["lr"]) < num_iter:
                result.stop_reason = "diverged"
                result.stop_step, result.stop_lr = len(self.history["lr"]) - 1, self.history["lr"][-1]
        except SweepStopped as stop:
            result.stop_reason, result.stop_lr = stop.reason, stop.lr
            result.stop_step = len(self.history["lr"])
            print(f"Stopping early: {stop.reason.replace('_', ' ')}")
        finally:
            result.lrs = [float(x) for x in self.history["lr"]]
            result.losses = [float(x) for x in self.history["loss"]]
            result.raw_losses = result.raw_losses[: len(result.lrs)]
            result.val_losses = result.val_losses[: len(result.lrs)]

    def sweep(self, train_loader, start_lr, end_lr, num_iter, step_mode="exp", smooth_f=0.05,
              diverge_th=5.0, val_loader=None, val_batches=2) -> Sweep:
        """Our image loaders' range test (batches of images, labels, skipped files), quiet on
        stdout; the initial model and optimizer state is restored at the end."""
        train_iter = CountingTrainIter(train_loader)
        val_iter = FixedValBatches(val_loader, val_batches) if val_loader is not None else None
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.range_test(train_iter, val_loader=val_iter, start_lr=start_lr, end_lr=end_lr,
                                num_iter=num_iter, step_mode=step_mode, smooth_f=smooth_f,
                                diverge_th=diverge_th)
        finally:
            self.reset()
        return self.last_sweep


# ------------------------------------------------------------------------- plot


def loss_ylim(curve, also_visible=()) -> tuple[float, float]:
    """Y-limits that keep the informative part: a diverging tail is cut at 1.5 times the
    initial loss (or further when the fall is deep), so it cannot flatten the rest. The
    lowest point of ``curve`` and of ``also_visible`` (the raw loss beside its smoothed curve)
    stays in view."""
    finite = [x for x in curve if math.isfinite(x)]
    if not finite:
        return 0.0, 1.0
    low, high, first = min(finite), max(finite), finite[0]
    top = min(high, max(first + 3 * (first - low), 1.5 * first)) if first > low else high
    low = min([low] + [x for x in also_visible if math.isfinite(x)])
    margin = 0.05 * (top - low) or 0.05
    return low - margin, top + margin


def plot_sweep(path: str, sweep: Sweep, suggestions: dict[str, float], chosen: str | None, title: str,
               smooth_f: float, verification: list[dict] | None = None, shade: tuple | None = None) -> None:
    """Loss against learning rate (log x), the chosen suggestion as a red dashed line, the
    suggested range (``shade``) shaded; with ``verification`` (``--lr_verify``), a second panel with
    the trials' held-out loss and top-1, one line per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomic_io import atomic_savefig

    if verification:
        fig, (ax, ax_verify) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(9, 5.5))
    validation = bool(sweep.val_losses)
    ax.plot(sweep.lrs, sweep.raw_losses, color="0.8", lw=0.7, label="training loss (raw)")
    train_smooth = smooth(sweep.raw_losses, smooth_f)
    ax.plot(sweep.lrs, train_smooth, color="tab:blue", lw=1.8, label="training loss (smoothed)")
    if validation:
        ax.plot(sweep.lrs, sweep.losses, color="tab:green", lw=1.8, label="validation loss (smoothed)")
    ax.set_ylim(*loss_ylim(train_smooth + (sweep.losses if validation else []), sweep.raw_losses))
    markers = {"valley": ("tab:orange", ":"), "minimum": ("tab:purple", "-."), "steepest": ("tab:brown", ":")}
    for name, lr in suggestions.items():
        if name == chosen:
            ax.axvline(lr, color="red", ls="--", lw=1.6, label=f"suggested ({name}): {lr:.2e}")
        else:
            color, style = markers.get(name, ("0.4", ":"))
            ax.axvline(lr, color=color, ls=style, lw=1.0, label=f"{name}: {lr:.2e}")
    if shade:
        ax.axvspan(*shade, color="tab:green", alpha=0.1, label=f"suggested range: {shade[0]:.2e} to {shade[1]:.2e}")
    if sweep.stop_reason in ("diverged", "non_finite_loss") and sweep.stop_lr:
        ax.axvspan(sweep.stop_lr, max(sweep.lrs[-1], sweep.stop_lr) * 1.5, color="red", alpha=0.08,
                   label=f"{sweep.stop_reason.replace('_', ' ')} from {sweep.stop_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", fontsize=8)
    if verification:
        plot_verification(ax_verify, verification, suggestions.get("verified"))
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_verification(ax, verification: list[dict], best: float | None) -> None:
    """Held-out loss (left axis) and top-1 (right axis) of each ``--lr_verify`` trial."""
    import matplotlib.ticker
    top1 = ax.twinx()
    rounds = sorted({t.get("round", 1) for t in verification})
    for number in rounds:
        trials = [t for t in verification if t.get("round", 1) == number]
        lrs = [t["lr"] for t in trials]
        losses = [t["loss"] if t["loss"] is not None and math.isfinite(t["loss"]) else float("nan") for t in trials]
        shade = 0.35 + 0.65 * number / len(rounds)  # later rounds (longer trials) darker
        ax.plot(lrs, losses, "o-", color="tab:blue", alpha=shade,
                label=f"held-out loss, round {number} ({trials[0]['steps']} steps)")
        top1.plot(lrs, [t["top1"] for t in trials], "s--", color="tab:green", alpha=shade,
                  label=f"held-out top-1 (%), round {number}")
    ax.set_xscale("log")
    ax.set_yscale("log")  # a diverged trial's loss would flatten the others
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("learning rate of the trial (log scale)")
    ax.set_ylabel("held-out loss after the trial")
    top1.set_ylabel("held-out top-1 (%)")
    if best is not None:
        ax.axvline(best, color="red", ls="--", lw=1.6, label=f"verified: {best:.2e}")
    ax.set_title(f"--lr_verify: {len(verification)} trials in {len(rounds)} round(s)")
    ax.grid(True, which="both", alpha=0.25)
    lines = ax.get_legend_handles_labels()
    extra = top1.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper left", fontsize=8)
