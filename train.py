"""Optimizers (shared with the range test) and the training loop.

    uv run python main.py --lr 0.1 --epochs 90 --scheduler cosine --data_dir ./data
"""

import torch
from torch import nn


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.9,
                    weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """SGD with Nesterov-free momentum or AdamW; the finder and training use the same one so
    the suggested rate transfers."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def run_training(args) -> int:
    raise NotImplementedError("training is not built yet")
