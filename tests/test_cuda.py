"""CUDA code paths, each test run twice: on ``cpu`` in every ordinary test run (the twin: the same
code with the same arguments) and on ``cuda`` by benchmarks/gpu_check.sh on a GPU machine
(`pytest -m cuda`). The ``cuda`` runs skip where no CUDA device is visible."""

import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from images import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from lr_finder import RangeTest, amp_options
from model_resnet50 import create_model
from preprocess import build_datasets, build_loader
from runtime import cpu_has_native_bf16, select_precision

from conftest import make_image_folder

DEVICES = [
    pytest.param(torch.device("cpu"), id="cpu"),
    pytest.param(torch.device("cuda"), id="cuda", marks=[
        pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]),
]
on_each_device = pytest.mark.parametrize("device", DEVICES)


def pinned_if_cuda(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """What the GPU loader hands over (pinned host memory); the CPU loader does not pin."""
    return tensor.pin_memory() if device.type == "cuda" else tensor


@on_each_device
def test_auto_precision_is_bf16_where_supported(device):
    precision, why = select_precision("auto", device)
    if device.type == "cuda":
        assert precision == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"), why
    else:
        assert precision == ("bf16" if cpu_has_native_bf16() else "fp32"), why


@on_each_device
def test_model_input_is_normalised_channels_last_float_on_the_device(device):
    images = pinned_if_cuda(torch.full((2, 8, 8, 3), 255, dtype=torch.uint8), device)
    x = to_model_input(images, device, channels_last=True)
    assert x.device.type == device.type and x.dtype == torch.float32 and x.shape == (2, 3, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(x[0, :, 0, 0].cpu(), expected)


@on_each_device
def test_a_bf16_range_test_has_finite_losses_and_restores_the_model(device):
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    torch.manual_seed(0)
    model = create_model(3, 32, device, channels_last=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    n = 16
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
                         torch.arange(n) % 3, torch.zeros(n, dtype=torch.long))
    # as find_lr.py makes it: autocast options from amp_options, batches put in the model's form
    finder = RangeTest(model, optimizer, nn.CrossEntropyLoss(), device, **amp_options(device, torch.bfloat16),
                       input_transform=partial(to_model_input, device=device, channels_last=True))
    sweep = finder.sweep(DataLoader(data, batch_size=4, drop_last=True), 1e-4, 1e-2, num_iter=6, diverge_th=1e9)
    assert sweep.steps_run == 6 and all(math.isfinite(loss) for loss in sweep.raw_losses)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(model.parameters()).device.type == device.type


@on_each_device
def test_loader_pins_memory_for_the_gpu_only(device, tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1, size=16)
    train, _ = build_datasets("imagenet1k", str(root), 8, need_val=False)
    loader = build_loader(train, batch_size=4, train=True, num_workers=0, device=device)
    images, labels, bad = next(iter(loader))
    assert images.shape == (4, 8, 8, 3) and images.dtype == torch.uint8 and bad.tolist() == [-1] * 4
    assert loader.pin_memory is (device.type == "cuda") and images.is_pinned() is (device.type == "cuda")
