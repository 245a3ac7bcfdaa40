"""What a training step is made of, shared by the range test and the training: the optimizer
(parameter groups with their own weight decay, Nesterov, gradient clipping), the loss (label
smoothing, MixUp/CutMix), the weight average (EMA) and the learning-rate schedules.

    optimizer = optimizer_from_args(model, args, lr=0.1)
    criterion = loss_from_args(args, num_classes=1000)
"""

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from runtime import unwrap

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
               nn.LocalResponseNorm)


PARAMETER_KINDS = ("weight", "norm", "bias")


def split_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters by kind, with their names: ``norm`` every parameter of a normalisation
    layer (batch-norm gamma and beta), ``bias`` the other layers' biases, ``weight`` the rest."""
    kinds = {kind: [] for kind in PARAMETER_KINDS}
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            kind = "norm" if isinstance(module, NORM_LAYERS) else "bias" if name == "bias" else "weight"
            kinds[kind].append((f"{module_name}.{name}" if module_name else name, param))
    return kinds


def parameter_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None = None,
                     bias_weight_decay: float | None = None) -> list[dict]:
    """Optimizer parameter groups, one per distinct decay (a single group when all three are equal);
    each lists the ``kinds`` it holds. The ``weight`` kind's group comes first."""
    decays = {"weight": weight_decay,
              "norm": weight_decay if norm_weight_decay is None else norm_weight_decay,
              "bias": weight_decay if bias_weight_decay is None else bias_weight_decay}
    groups: dict[float, dict] = {}
    for kind, named in split_parameters(model).items():
        if named:
            group = groups.setdefault(decays[kind], {"params": [], "weight_decay": decays[kind], "kinds": []})
            group["params"] += [param for _, param in named]
            group["kinds"].append(kind)
    return list(groups.values())


def clip_before_step(max_norm: float):
    """An optimizer step pre-hook clipping the global gradient norm. As a hook it also clips the
    steps torch-lr-finder and the --lr_verify trials take. GradScaler unscales the gradients before
    it calls a (non-fused) optimizer's step, so the hook sees them unscaled."""
    def hook(optimizer, args, kwargs):
        grads = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        nn.utils.clip_grad_norm_(grads, max_norm)
    return hook


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4, *,
                    nesterov: bool = False, norm_weight_decay: float | None = None,
                    bias_weight_decay: float | None = None, clip_grad_norm: float | None = None
                    ) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over ``parameter_groups``; the finder and training share it so the
    suggested rate transfers."""
    groups = parameter_groups(model, weight_decay, norm_weight_decay, bias_weight_decay)
    # One fused kernel over all parameters instead of a loop of small ops per tensor; not with
    # clipping: a fused step unscales fp16 gradients itself, after the clipping hook has run.
    fused = clip_grad_norm is None and all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                    fused=fused)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if clip_grad_norm is not None:
        optimizer.register_step_pre_hook(clip_before_step(clip_grad_norm))
    return optimizer


def optimizer_from_args(model: nn.Module, args, lr: float) -> torch.optim.Optimizer:
    return build_optimizer(model, args.optimizer, lr, args.momentum, args.weight_decay, nesterov=args.nesterov,
                           norm_weight_decay=args.norm_weight_decay, bias_weight_decay=args.bias_weight_decay,
                           clip_grad_norm=args.clip_grad_norm)


class TrainingLoss(nn.CrossEntropyLoss):
    """Cross-entropy with label smoothing, on class indices or on soft targets. ``mix`` (None when
    both alphas are 0) turns a training batch into mixed images and soft targets: torchvision's
    MixUp or CutMix, one of the two picked per batch when both are set. Evaluation calls the loss
    on unmixed batches."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0):
        super().__init__(label_smoothing=label_smoothing)
        mixes = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) + \
                ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])
        self.mix = v2.RandomChoice(mixes) if len(mixes) > 1 else mixes[0] if mixes else None


def loss_from_args(args, num_classes: int) -> TrainingLoss:
    return TrainingLoss(num_classes, args.label_smoothing, args.mixup_alpha, args.cutmix_alpha)


def mix_batch(criterion, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as the loss trains on it: mixed, with soft targets, when ``criterion`` mixes."""
    mix = getattr(criterion, "mix", None)
    return mix(x, y) if mix is not None else (x, y)


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """torch.optim.swa_utils' exponential moving average of the weights and buffers (batch-norm
    statistics too), starting from the model's current weights: after k updates it holds
    decay^k * w_0 + (1 - decay) * sum_i decay^(k-i) * w_i."""
    plain = unwrap(model)
    ema = AveragedModel(plain, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(plain)  # the first update copies: w_0
    return ema


def lr_multiplier(step: int, scheduler: str, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0,
                  step_size: int = 30, gamma: float = 0.1) -> float:
    """Factor on the base rate for iteration ``step`` (0-based) of cosine/step/none with
    optional linear warm-up. Step decay happens at epoch boundaries: every ``step_size`` epochs."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if scheduler == "step":
        return gamma ** ((step // steps_per_epoch) // step_size)
    return 1.0


def build_scheduler(optimizer, scheduler: str, lr: float, epochs: int, steps_per_epoch: int,
                    warmup_epochs: int = 0, step_size: int = 30, gamma: float = 0.1):
    """A scheduler stepped once per iteration: torch's OneCycleLR (``lr`` is its peak) or a
    LambdaLR over ``lr_multiplier``."""
    total = epochs * steps_per_epoch
    if scheduler == "onecycle":
        return OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    warmup = warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        return lr_multiplier(step, scheduler, total, steps_per_epoch, warmup, step_size, gamma)

    return LambdaLR(optimizer, factor)
