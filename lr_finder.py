"""The learning-rate range test: torch-lr-finder's ``LRFinder`` extended (mixed precision,
channels_last, torchrun, a stop on signals, unreadable images counted, the model restored after the
sweep). The curve's readings are in ``suggest.py``, the plot in ``lr_plot.py``.

    finder = RangeTest(model, optimizer, criterion, device, **amp_options(device, torch.bfloat16),
                       input_transform=partial(to_model_input, device=device))
    sweep = finder.sweep(train_loader, start_lr=1e-7, end_lr=10, num_iter=1000)
    suggestions = suggest_all(sweep.lrs, sweep.raw_losses)

(``to_model_input`` is images.py's; any other model takes ``RangeTest`` as it takes ``LRFinder``.)
"""

import contextlib
import io
import math
from dataclasses import dataclass, field

import torch
from torch_lr_finder import LRFinder, TrainDataLoaderIter, ValDataLoaderIter
from torch_lr_finder.lr_finder import StateCacher

from errors import UserInputError
from runtime import Distributed, cpu_copy, unwrap


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
