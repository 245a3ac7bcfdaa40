"""CUDA code paths, run by benchmarks/gpu_check.sh on a GPU machine (`pytest -m cuda`); each
test skips where no CUDA device is visible."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lr_finder import RangeTest
from model_resnet50 import create_model
from images import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from preprocess import build_loader
from runtime import select_precision

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def test_auto_precision_is_bf16_on_a_bf16_gpu_and_fp16_otherwise():
    precision, why = select_precision("auto", CUDA)
    assert precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), why


def test_model_input_is_normalised_channels_last_float_on_the_gpu():
    images = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8).pin_memory()
    x = to_model_input(images, CUDA, channels_last=True)
    assert x.device.type == "cuda" and x.dtype == torch.float32 and x.shape == (2, 3, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(x[0, :, 0, 0].cpu(), expected)


def test_a_bf16_range_test_on_the_gpu_has_finite_losses_and_restores_the_model():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    torch.manual_seed(0)
    model = create_model(3, 32, CUDA, channels_last=True)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    n = 16
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
                         torch.arange(n) % 3, torch.zeros(n, dtype=torch.long))
    finder = RangeTest(model, optimizer, nn.CrossEntropyLoss(), CUDA, amp_dtype=torch.bfloat16)
    sweep = finder.sweep(DataLoader(data, batch_size=4, drop_last=True), 1e-4, 1e-2, num_iter=6, diverge_th=1e9)
    assert sweep.steps_run == 6 and all(math.isfinite(loss) for loss in sweep.raw_losses)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(model.parameters()).device.type == "cuda"


def test_loader_pins_memory_for_the_gpu():
    n = 8
    data = TensorDataset(torch.zeros(n, 4, 4, 3, dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                         torch.zeros(n, dtype=torch.long))
    loader = build_loader(data, batch_size=4, train=True, num_workers=0, device=CUDA)
    images, _, _ = next(iter(loader))
    assert loader.pin_memory and images.is_pinned()
