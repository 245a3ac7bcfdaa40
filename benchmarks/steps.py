"""Model-side measurements: one training step on pre-made tensors, the range test against a
plain hand-written loop doing the same steps, and ``main.py --find_lr`` as a child process
(its reported img/s and its peak resident memory).

    runner = StepRunner(Setup(torch.device("cpu"), batch_size=8, input_size=224, amp_dtype=torch.bfloat16))
    runner.warm_up(1)
    images_per_second = runner.measure(steps=3)
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from images import to_model_input
from lr_finder import RangeTest, amp_options
from model_resnet50 import create_model
from train_setup import build_optimizer

LR_START, LR_END = 1e-5, 1e-2  # low enough that no short sweep diverges and stops early


@dataclass(frozen=True)
class Setup:
    """What a step depends on: device, batch, image side, autocast dtype, memory format."""
    device: torch.device
    batch_size: int
    input_size: int
    amp_dtype: torch.dtype | None
    channels_last: bool = True
    num_classes: int = 1000
    seed: int = 0


def build_model_and_optimizer(setup: Setup) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(setup.seed)
    model = create_model(setup.num_classes, setup.input_size, setup.device, setup.channels_last)
    return model, build_optimizer(model, "sgd", LR_START, momentum=0.9, weight_decay=1e-4)


def uint8_batches(setup: Setup, count: int) -> TensorDataset:
    """``count`` batches' worth of random uint8 NHWC images, labels and no bad file (-1),
    shaped like what ``preprocess.build_loader`` yields."""
    generator = torch.Generator().manual_seed(setup.seed)
    n = count * setup.batch_size
    images = torch.randint(0, 256, (n, setup.input_size, setup.input_size, 3), dtype=torch.uint8,
                           generator=generator)
    labels = torch.randint(0, setup.num_classes, (n,), generator=generator)
    return TensorDataset(images, labels, torch.full((n,), -1))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, criterion, scaler, images, labels, setup: Setup) -> float:
    """One optimisation step the way the range test takes it; the loss as a float."""
    x = to_model_input(images, setup.device, setup.channels_last)
    y = labels.to(setup.device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None):
        loss = criterion(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def exp_lrs(start: float, end: float, steps: int) -> list[float]:
    return [start * (end / start) ** (i / max(steps - 1, 1)) for i in range(steps)]


def new_scaler(setup: Setup) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(setup.device.type, enabled=setup.amp_dtype == torch.float16)


class StepRunner:
    """A model, its optimizer and one pre-made batch: images per second of repeated steps."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.model, self.optimizer = build_model_and_optimizer(setup)
        self.criterion = nn.CrossEntropyLoss()
        self.scaler = new_scaler(setup)
        images, labels, _ = uint8_batches(setup, 1).tensors
        self.images = images.pin_memory() if setup.device.type == "cuda" else images
        self.labels = labels

    def _steps(self, steps: int) -> None:
        for _ in range(steps):
            train_step(self.model, self.optimizer, self.criterion, self.scaler, self.images, self.labels, self.setup)
        synchronize(self.setup.device)

    def warm_up(self, steps: int) -> None:
        """The first steps pay for kernel selection and allocation; leave them out."""
        self._steps(steps)

    def measure(self, steps: int) -> float:
        started = time.perf_counter()
        self._steps(steps)
        return steps * self.setup.batch_size / (time.perf_counter() - started)


def cycle_batches(loader):
    """The loader's batches, starting over at the end (as the range test does)."""
    while True:
        yield from loader


class FinderAgainstPlainLoop:
    """``RangeTest.sweep`` and a plain loop taking the same steps on the same model from the
    same initial state (the finder's cache restores it after either) over the same pre-made
    uint8 batches; both report steps per second."""

    def __init__(self, setup: Setup, distinct_batches: int = 2):
        self.setup = setup
        self.loader = DataLoader(uint8_batches(setup, distinct_batches), batch_size=setup.batch_size,
                                 shuffle=False, drop_last=True, num_workers=0)
        self.model, self.optimizer = build_model_and_optimizer(setup)
        self.criterion = nn.CrossEntropyLoss()
        self.finder = RangeTest(self.model, self.optimizer, self.criterion, setup.device,
                                **amp_options(setup.device, setup.amp_dtype),
                                input_transform=partial(to_model_input, device=setup.device,
                                                        channels_last=setup.channels_last))
        self.scaler = new_scaler(setup)

    def finder_steps_per_second(self, steps: int) -> float:
        """A whole sweep: iterator set-up, the steps, and restoring the initial state at the end."""
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # the library's progress bar
            sweep = self.finder.sweep(self.loader, LR_START, LR_END, steps, diverge_th=1e9)
        synchronize(self.setup.device)
        return sweep.steps_run / (time.perf_counter() - started)

    def plain_steps_per_second(self, steps: int) -> float:
        """zero_grad, autocast forward, loss, backward, step, lr update; the loss kept per step."""
        started = time.perf_counter()
        batches = cycle_batches(self.loader)
        losses = []
        for lr in exp_lrs(LR_START, LR_END, steps):
            images, labels, _ = next(batches)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses.append(train_step(self.model, self.optimizer, self.criterion, self.scaler, images, labels,
                                     self.setup))
        synchronize(self.setup.device)
        elapsed = time.perf_counter() - started
        self.finder.reset()  # untimed: the next round starts where the sweep does
        return steps / elapsed


@dataclass
class ChildRun:
    returncode: int
    output: str
    peak_rss_mb: float
    result: dict | None  # suggested_lr.json, when the run wrote one


def run_find_lr_child(repo: Path, data_dir: Path, out_dir: Path, batch_size: int, input_size: int, lr_iter: int,
                      num_workers: int, device: torch.device) -> ChildRun:
    """``main.py --find_lr`` as users run it, in a child process whose peak RSS (of it and
    any workers it waited for, whichever was largest) comes from ``wait4``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_file = out_dir / "suggested_lr.json"
    json_file.unlink(missing_ok=True)
    command = [
        sys.executable, str(repo / "main.py"), "--find_lr",
        "--data_dir", str(data_dir), "--lr_plot", str(out_dir / "lr_finder.png"),
        "--batch_size", str(batch_size), "--input_size", str(input_size), "--lr_iter", str(lr_iter),
        "--num_workers", str(num_workers), "--lr_start", str(LR_START), "--lr_end", str(LR_END),
        "--lr_diverge_th", "1e9", "--seed", "0",
    ]
    if device.type != "cuda":
        command.append("--no_cuda")
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=repo)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    result = json.loads(json_file.read_text()) if json_file.exists() else None
    return ChildRun(child.returncode, output, usage.ru_maxrss / 1024, result)  # ru_maxrss is in KiB on Linux
