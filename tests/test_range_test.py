"""The RangeTest subclass in-process on a tiny model: stopping rules and state restore."""

import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from images import to_model_input
from lr_finder import RangeTest


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def loader(n=24, batch=4, constant=False):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 4, 4, 3), dtype=torch.uint8, generator=g)
    if constant:  # identical images with different labels: the loss cannot fall below log(3)
        images[:] = 128
    labels = torch.arange(n) % 3
    return DataLoader(TensorDataset(images, labels, torch.full((n,), -1)), batch_size=batch,
                      shuffle=True, drop_last=True, generator=g)


def make_finder(criterion=None, **kw):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    device = torch.device("cpu")
    finder = RangeTest(model, opt, criterion or nn.CrossEntropyLoss(), device,
                       input_transform=partial(to_model_input, device=device), **kw)
    return finder, model


class NanAfter(nn.Module):
    def __init__(self, calls):
        super().__init__()
        self.calls, self.inner = calls, nn.CrossEntropyLoss()

    def forward(self, out, y):
        self.calls -= 1
        loss = self.inner(out, y)
        return loss * float("nan") if self.calls < 0 else loss


def test_a_nan_loss_stops_the_sweep_at_once_and_is_excluded():
    finder, _ = make_finder(NanAfter(5))
    sweep = finder.sweep(loader(), 1e-4, 1e-1, num_iter=20, diverge_th=1e9)
    assert sweep.stop_reason == "non_finite_loss"
    assert sweep.steps_run == 5 and len(sweep.raw_losses) == 5 and sweep.stop_step == 5
    assert all(math.isfinite(x) for x in sweep.losses)
    assert sweep.stop_lr == pytest.approx(1e-4 * (1e3 ** (5 / 19)))  # the 6th step's rate


def test_a_huge_end_rate_diverges_before_the_last_step():
    finder, _ = make_finder()
    sweep = finder.sweep(loader(constant=True), 1e-4, 1e6, num_iter=60, diverge_th=3)
    assert sweep.stop_reason in ("diverged", "non_finite_loss")
    assert sweep.steps_run < 60


def test_interrupt_keeps_the_steps_done_and_restores_the_model():
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    finder, model = make_finder(stop_requested=stop_after_three)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sweep = finder.sweep(loader(), 1e-4, 1.0, num_iter=20)
    # The request is seen after the 4th step: that step is kept, the 5th never starts.
    assert sweep.stop_reason == "interrupted" and sweep.steps_run == 4 and sweep.stop_step == 4
    assert len(sweep.raw_losses) == len(sweep.lrs) == len(sweep.losses) == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_completed_sweep_restores_model_and_optimizer_and_keeps_state_on_cpu():
    finder, model = make_finder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sweep = finder.sweep(loader(), 1e-4, 1e-2, num_iter=10, diverge_th=1e9)
    assert sweep.stop_reason == "completed" and sweep.steps_run == 10
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert finder.optimizer.state_dict()["state"] == {}  # momentum buffers gone with the reset
    assert finder.optimizer.param_groups[0]["lr"] == 1e-4
    assert all(v.device.type == "cpu" for v in finder.state_cacher.retrieve("model").values())


class TwoRanks:
    """Stands in for a 2-process job: the other rank's loss turns NaN at its 4th step, and it
    asks to stop at its 6th; sums are what torch.distributed.all_reduce would give."""

    world_size = 2

    def __init__(self):
        self.calls = []

    def all_reduce_sum(self, values):
        self.calls.append(list(values))
        step = len(self.calls)
        loss, stop, bad, seen = values
        other = [float("nan") if step == 4 else 1.0, 0.0, 0.0, seen]
        return [a + b for a, b in zip(values, other)]


def test_losses_are_averaged_over_ranks_before_smoothing_and_a_nan_anywhere_stops_everyone():
    ranks = TwoRanks()
    finder, _ = make_finder(dist=ranks)
    sweep = finder.sweep(loader(), 1e-4, 1e-2, num_iter=10, diverge_th=1e9)
    local = [c[0] for c in ranks.calls]
    assert sweep.raw_losses == pytest.approx([(x + 1.0) / 2 for x in local[:3]])
    assert sweep.stop_reason == "non_finite_loss" and sweep.steps_run == 3


def test_a_stop_request_on_any_rank_stops_all_after_that_step():
    class OtherRankStops(TwoRanks):
        def all_reduce_sum(self, values):
            self.calls.append(list(values))
            return [values[0] + 1.0, values[1] + (1.0 if len(self.calls) == 2 else 0.0), values[2], values[3] * 2]

    finder, _ = make_finder(dist=OtherRankStops())
    sweep = finder.sweep(loader(), 1e-4, 1e-2, num_iter=10, diverge_th=1e9)
    assert sweep.stop_reason == "interrupted" and sweep.steps_run == 2


def test_bad_image_counts_stop_a_broken_dataset():
    from errors import UserInputError

    n = 24
    images = torch.zeros(n, 4, 4, 3, dtype=torch.uint8)
    data = TensorDataset(images, torch.arange(n) % 3, torch.arange(n))  # every sample's own file was bad
    finder, _ = make_finder(max_bad_fraction=0.01)
    with pytest.raises(UserInputError, match="unreadable images in 4 read"):
        finder.sweep(DataLoader(data, batch_size=4), 1e-4, 1e-2, num_iter=5)


def test_unwrap_reaches_the_plain_module_through_compile():
    from runtime import Distributed, unwrap, wrap_model

    model = Tiny()
    wrapped = wrap_model(model, Distributed(), compile_model=True)
    assert wrapped is not model and unwrap(wrapped) is model
    assert list(unwrap(wrapped).state_dict()) == ["fc.weight", "fc.bias"]
