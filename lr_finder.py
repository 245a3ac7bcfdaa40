"""The learning-rate range test: torch-lr-finder's ``LRFinder`` extended, the suggestion
math as pure functions over (lrs, losses), and the plot.

    finder = RangeTest(model, optimizer, criterion, device, amp_dtype=torch.bfloat16)
    sweep = finder.sweep(train_loader, start_lr=1e-7, end_lr=10, num_iter=1000)
    suggestions = suggest_all(sweep.lrs, sweep.losses)
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
from preprocess import MAX_BAD_FRACTION, to_model_input
from runtime import Distributed, unwrap

MIN_POINTS = 5
VERY_LOW_LR = 1e-5
VERY_HIGH_LR = 1.0


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


def onecycle_max_lr(lrs, losses, skip_start=None, skip_end=None) -> float:
    """The learning rate at the lowest loss: where it stops falling (Smith's upper bound)."""
    return suggest_minimum(lrs, losses, skip_start, skip_end) * 10


SUGGESTERS = {"steepest": suggest_steepest, "valley": suggest_valley, "minimum": suggest_minimum}


def suggest_all(lrs, losses) -> dict[str, float]:
    return {name: fn(lrs, losses) for name, fn in SUGGESTERS.items()}


def spread_decades(values) -> float:
    values = [v for v in values if v and v > 0]
    return float(math.log10(max(values) / min(values))) if values else float("nan")


def confidence(spread: float) -> str:
    """high: methods agree within half a decade; medium: within one; low: beyond."""
    if spread <= 0.5:
        return "high"
    return "medium" if spread <= 1.0 else "low"


def analyse(lr: float, confidence_level: str, spread: float) -> tuple[str, list[str]]:
    """A verdict line and warnings for a suggested learning rate."""
    warnings = []
    if lr < VERY_LOW_LR:
        warnings.append(
            f"Suggested LR {lr:.2e} is very low (< {VERY_LOW_LR:g}): the loss may not have started "
            "falling before the sweep ended; check the plot, try a lower --lr_start or more steps"
        )
    if lr > VERY_HIGH_LR:
        warnings.append(
            f"Suggested LR {lr:.2e} is very high (> {VERY_HIGH_LR:g}): training may diverge; "
            "start lower (e.g. a tenth of it) and watch the first epoch"
        )
    if confidence_level == "low":
        warnings.append(
            f"The suggestion methods disagree by {spread:.1f} decades: the curve has no single clear "
            "descent (noisy loss or too few steps); more --lr_iter, a larger batch or more "
            "--lr_smooth_f usually help"
        )
    verdict = "Learning rate appears to be in a reasonable range" if not warnings else "Check the warnings below"
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


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class CpuStateCacher(StateCacher):
    """Keeps the initial model/optimizer state in host memory, not as a second GPU copy."""

    def __init__(self):
        super().__init__(in_memory=True)

    def store(self, key, state_dict):
        self.cached[key] = _to_cpu(state_dict)


class CountingTrainIter(TrainDataLoaderIter):
    """Cycles the loader (library behaviour) and counts the unreadable files workers skipped:
    the batch's third element holds each sample's bad file index (-1: none); each file counts once."""

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


class RangeTest(LRFinder):
    """LRFinder with mixed precision, channels_last uint8 batches, raw-loss history,
    NaN-safe stopping, interruption and a CPU-side cache of the initial state."""

    def __init__(self, model, optimizer, criterion, device, amp_dtype=None, channels_last=True,
                 stop_requested=lambda: False, dist: Distributed | None = None):
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        amp_config = {"device_type": device.type, "dtype": amp_dtype, "enabled": amp_dtype is not None}
        super().__init__(model, optimizer, criterion, device=device, memory_cache=True,
                         amp_backend="torch", amp_config=amp_config, grad_scaler=scaler)
        self.state_cacher = CpuStateCacher()
        self.state_cacher.store("model", self.model.state_dict())
        self.state_cacher.store("optimizer", self.optimizer.state_dict())
        self.channels_last = channels_last
        self.stop_requested = stop_requested
        self.dist = dist or Distributed(device=device)
        self._sweep: Sweep | None = None
        self._stop_next = False

    def reset(self):
        super().reset()
        self.model.to(self.device)

    def _move_to_device(self, inputs, labels, non_blocking=True):
        return (to_model_input(inputs, self.device, self.channels_last),
                labels.to(self.device, non_blocking=non_blocking))

    def _current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _train_batch(self, train_iter, accumulation_steps, non_blocking_transfer=True):
        if self._stop_next:
            raise SweepStopped("interrupted")
        scale = self.grad_scaler.get_scale() if self.grad_scaler.is_enabled() else None
        local = super()._train_batch(train_iter, accumulation_steps, non_blocking_transfer)
        # One all-reduce carries the loss, any rank's stop request and the bad-file counts:
        # the loss is averaged *before* smoothing, so every rank records the same curve and
        # takes every decision below at the same step; no rank is left waiting for another.
        loss_sum, stops, bad, seen = self.dist.all_reduce_sum(
            [local, float(self.stop_requested()), train_iter.bad, train_iter.seen])
        loss = loss_sum / self.dist.world_size
        self._sweep.raw_losses.append(loss)
        self._sweep.bad_images = int(bad)
        if bad > MAX_BAD_FRACTION * max(seen, len(train_iter.dataset)):
            raise UserInputError(
                f"{int(bad)} unreadable images in {int(seen)} read (over {MAX_BAD_FRACTION:.0%}): "
                "the data looks broken; see the warnings above for the files")
        if scale is not None and self.grad_scaler.get_scale() < scale:
            self._sweep.skipped_steps.append(len(self._sweep.raw_losses) - 1)
        if not math.isfinite(loss):
            raise SweepStopped("non_finite_loss", self._current_lr())
        if stops:
            self._stop_next = True  # this step counts; the sweep ends before the next one
        return loss

    def _validate(self, val_iter, non_blocking_transfer=True):
        total, count = 0.0, 0
        model = unwrap(self.model)  # no DDP collectives: ranks may hold different batch counts
        model.eval()
        with torch.no_grad(), torch.amp.autocast(**self.amp_config):
            for inputs, labels in val_iter:
                inputs, labels = self._move_to_device(inputs, labels, non_blocking_transfer)
                total += self.criterion(model(inputs), labels).item() * len(labels)
                count += len(labels)
        total, count = self.dist.all_reduce_sum([total, count])
        loss = total / count
        self._sweep.val_losses.append(loss)
        if not math.isfinite(loss):
            raise SweepStopped("non_finite_loss", self._current_lr())
        return loss

    def sweep(self, train_loader, start_lr, end_lr, num_iter, step_mode="exp", smooth_f=0.05,
              diverge_th=5.0, val_loader=None, val_batches=2) -> Sweep:
        """Run the range test, then restore the initial model and optimizer state."""
        self._sweep = result = Sweep(lrs=[], losses=[], raw_losses=[])
        self._stop_next = False
        train_iter = CountingTrainIter(train_loader)
        val_iter = FixedValBatches(val_loader, val_batches) if val_loader is not None else None
        library_output = io.StringIO()
        try:
            with contextlib.redirect_stdout(library_output):
                self.range_test(train_iter, val_loader=val_iter, start_lr=start_lr, end_lr=end_lr,
                                num_iter=num_iter, step_mode=step_mode, smooth_f=smooth_f,
                                diverge_th=diverge_th)
            if len(self.history["lr"]) < num_iter:
                result.stop_reason = "diverged"
                result.stop_step, result.stop_lr = len(self.history["lr"]) - 1, self.history["lr"][-1]
        except SweepStopped as stop:
            result.stop_reason, result.stop_lr = stop.reason, stop.lr
            result.stop_step = len(self.history["lr"])
        finally:
            result.lrs = [float(x) for x in self.history["lr"]]
            result.losses = [float(x) for x in self.history["loss"]]
            result.raw_losses = result.raw_losses[: len(result.lrs)]
            result.val_losses = result.val_losses[: len(result.lrs)]
            self.reset()
        return result


# ------------------------------------------------------------------------- plot


def loss_ylim(curve) -> tuple[float, float]:
    """Y-limits that keep the informative part: a diverging tail is cut at 1.5 times the
    initial loss (or further when the fall is deep), so it cannot flatten the rest."""
    finite = [x for x in curve if math.isfinite(x)]
    if not finite:
        return 0.0, 1.0
    low, high, first = min(finite), max(finite), finite[0]
    top = min(high, max(first + 3 * (first - low), 1.5 * first)) if first > low else high
    margin = 0.05 * (top - low) or 0.05
    return low - margin, top + margin


def plot_sweep(path: str, sweep: Sweep, suggestions: dict[str, float], chosen: str | None, title: str,
               smooth_f: float) -> None:
    """Loss against learning rate (log x), the chosen suggestion as a red dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from report import atomic_savefig

    fig, ax = plt.subplots(figsize=(9, 5.5))
    validation = bool(sweep.val_losses)
    ax.plot(sweep.lrs, sweep.raw_losses, color="0.8", lw=0.7, label="training loss (raw)")
    train_smooth = smooth(sweep.raw_losses, smooth_f)
    ax.plot(sweep.lrs, train_smooth, color="tab:blue", lw=1.8, label="training loss (smoothed)")
    if validation:
        ax.plot(sweep.lrs, sweep.losses, color="tab:green", lw=1.8, label="validation loss (smoothed)")
    ax.set_ylim(*loss_ylim(train_smooth + (sweep.losses if validation else [])))
    markers = {"valley": ("tab:orange", ":"), "minimum": ("tab:purple", "-.")}
    for name, lr in suggestions.items():
        if name == chosen:
            ax.axvline(lr, color="red", ls="--", lw=1.6, label=f"suggested ({name}): {lr:.2e}")
        else:
            color, style = markers.get(name, ("0.4", ":"))
            ax.axvline(lr, color=color, ls=style, lw=1.0, label=f"{name}: {lr:.2e}")
    if sweep.stop_reason in ("diverged", "non_finite_loss") and sweep.stop_lr:
        ax.axvspan(sweep.stop_lr, max(sweep.lrs[-1], sweep.stop_lr) * 1.5, color="red", alpha=0.08,
                   label=f"{sweep.stop_reason.replace('_', ' ')} from {sweep.stop_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
