"""RangeTest in place of torch-lr-finder's LRFinder on small non-image models: the same
arguments give the same histories and the same restored state."""

import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from lr_finder import CpuStateCacher, RangeTest

matplotlib.use("Agg")


class MLP(nn.Module):
    def __init__(self, features=2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


class TwoInputs(nn.Module):
    """Takes a tuple or list of two tensors, as many text/tabular models do."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 3), nn.Linear(4, 3)

    def forward(self, inputs):
        x, z = inputs
        return self.a(x) + self.b(z)


class PairsDataset(torch.utils.data.Dataset):
    def __init__(self, n=48):
        g = torch.Generator().manual_seed(1)
        self.x, self.z = torch.randn(n, 2, generator=g), torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.z[:, 0] > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i], self.z[i]), self.y[i]  # collated into [[x, z], y]: lists of tensors


def blobs(n=64, features=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, features, generator=g) + y[:, None].float()
    return TensorDataset(x, y)


def run(finder_class, model_class=MLP, dataset=None, val=False, finder_kwargs=None, **range_test_kwargs):
    torch.manual_seed(0)
    model = model_class()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dataset = dataset or blobs()
    train = DataLoader(dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(blobs(24, seed=1), batch_size=8) if val else None
    finder = finder_class(model, optimizer, nn.CrossEntropyLoss(), "cpu", **(finder_kwargs or {}))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    finder.range_test(train, val_loader=val_loader, **{"end_lr": 1.0, "num_iter": 12, **range_test_kwargs})
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    finder.reset()
    return finder, model, initial, trained


def assert_same_run(kwargs_for_run):
    ours, our_model, our_initial, our_trained = run(RangeTest, **kwargs_for_run)
    theirs, their_model, _, their_trained = run(LRFinder, **kwargs_for_run)
    assert len(ours.history["lr"]) == len(theirs.history["lr"]) > 0
    assert np.allclose(ours.history["lr"], theirs.history["lr"])
    assert np.allclose(ours.history["loss"], theirs.history["loss"])
    for key, value in our_trained.items():  # the same steps were taken ...
        assert torch.allclose(value, their_trained[key])
    for key, value in our_model.state_dict().items():  # ... and both reset to the start
        assert torch.equal(value, our_initial[key]) and torch.equal(value, their_model.state_dict()[key])
    assert ours.optimizer.state_dict() == theirs.optimizer.state_dict()
    return ours


@pytest.mark.parametrize("kwargs_for_run", [
    {"step_mode": "exp"},
    {"step_mode": "linear", "end_lr": 0.5},
    {"val": True, "step_mode": "linear", "smooth_f": 0.0},
    {"accumulation_steps": 3},
    {"model_class": TwoInputs, "dataset": PairsDataset()},
    {"finder_kwargs": {"memory_cache": False}},
], ids=["exp", "linear", "val_loader", "accumulation", "tuple_list_batches", "file_cache"])
def test_rangetest_gives_lrfinders_history_and_restores_the_same_state(kwargs_for_run):
    ours = assert_same_run(kwargs_for_run)
    assert ours.last_sweep.stop_reason == "completed" and len(ours.last_sweep.raw_losses) == 12


def test_file_cache_goes_to_cache_dir_and_memory_cache_stays_on_the_cpu(tmp_path):
    finder, *_ = run(RangeTest, finder_kwargs={"memory_cache": False, "cache_dir": str(tmp_path)})
    assert sorted(p.name.split("_")[1] for p in tmp_path.glob("state_*.pt")) == ["model", "optimizer"]
    finder, *_ = run(RangeTest)
    assert isinstance(finder.state_cacher, CpuStateCacher)


def test_a_custom_train_iterator_and_the_plot_work_as_with_lrfinder():
    class DictBatches(TrainDataLoaderIter):
        def inputs_labels_from_batch(self, batch):
            return batch["x"], batch["y"]

    data = [{"x": x, "y": y} for x, y in blobs()]
    results = []
    for finder_class in (RangeTest, LRFinder):
        torch.manual_seed(0)
        model = MLP()
        finder = finder_class(model, torch.optim.Adam(model.parameters(), lr=1e-4), nn.CrossEntropyLoss())
        loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
        finder.range_test(DictBatches(loader), end_lr=1.0, num_iter=20)
        ax, suggested = finder.plot(ax=matplotlib.pyplot.figure().gca(), skip_start=2, skip_end=2)
        results.append((finder.history["loss"], suggested, len(ax.lines)))
    assert np.allclose(results[0][0], results[1][0])
    assert results[0][1:] == pytest.approx(results[1][1:])


def test_a_nan_loss_ends_range_test_cleanly_where_lrfinder_would_carry_on():
    class NanFromStep4(nn.Module):
        calls = 0

        def forward(self, out, y):
            self.calls += 1
            loss = nn.functional.cross_entropy(out, y)
            return loss * float("nan") if self.calls >= 4 else loss

    torch.manual_seed(0)
    model = MLP()
    finder = RangeTest(model, torch.optim.SGD(model.parameters(), lr=1e-3), NanFromStep4())
    finder.range_test(DataLoader(blobs(), batch_size=8), end_lr=1.0, num_iter=10)
    assert len(finder.history["loss"]) == 3 and all(math.isfinite(x) for x in finder.history["loss"])
    assert finder.last_sweep.stop_reason == "non_finite_loss" and finder.last_sweep.stop_step == 3
