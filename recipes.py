"""Named training recipes for ResNet-50 v1.5: each one is data, a set of flag values that
``main.py`` applies once, under the command line (a flag given explicitly wins). Where each
value comes from, and what could not be taken from its source: docs/recipes.md.

    uv run python main.py --find_lr --recipe nvidia --data_dir ./data
    uv run python main.py --recipe nvidia --lr_from ./outputs/suggested_lr.json --data_dir ./data
"""

# None for --norm_weight_decay / --bias_weight_decay: the same as --weight_decay.
RECIPES = {
    "nvidia": {
        "source": "NVIDIA DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5 "
                  "(README 'Default configuration', configs.yml resnet_params, training/*_90E.sh)",
        "lr_per_256": 0.256,  # the recipe's own rate, scaled linearly with the batch (not a flag)
        "flags": {"optimizer": "sgd", "momentum": 0.875, "nesterov": False, "weight_decay": 3.0517578125e-05,
                  "norm_weight_decay": 0.0, "bias_weight_decay": None, "label_smoothing": 0.1,
                  "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "clip_grad_norm": None, "model_ema": False,
                  "scheduler": "cosine", "warmup_epochs": 8, "epochs": 90},
    },
    "torchvision": {
        "source": "torchvision references/classification (README: ResNet trained with the defaults, "
                  "batch 32 x 8 GPUs, lr 0.1, momentum 0.9, wd 1e-4, step 30 / 0.1, 90 epochs)",
        "lr_per_256": 0.1,
        "flags": {"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
                  "norm_weight_decay": None, "bias_weight_decay": None, "label_smoothing": 0.0,
                  "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "clip_grad_norm": None, "model_ema": False,
                  "scheduler": "step", "step_size": 30, "gamma": 0.1, "warmup_epochs": 0, "epochs": 90},
    },
}

# The settings that move the rate a range test finds: recorded with every sweep, and compared by
# --lr_from with the training's.
RATE_SETTINGS = ("optimizer", "momentum", "nesterov", "weight_decay", "norm_weight_decay", "bias_weight_decay",
                 "label_smoothing", "mixup_alpha", "cutmix_alpha", "clip_grad_norm")


def describe_recipes() -> str:
    """What each recipe sets, for --help."""
    def show(flag, value):
        if value is None:
            return "= --weight_decay" if flag.endswith("weight_decay") else "off"
        return str(value)

    return "; ".join(f"{name}: " + ", ".join(f"{flag} {show(flag, value)}" for flag, value in recipe["flags"].items())
                     for name, recipe in RECIPES.items())


def check_values(args) -> None:
    """The recipe flags' ranges; ValueError with a one-line message naming the flag."""
    if not 0 <= args.label_smoothing < 1:
        raise ValueError(f"--label_smoothing {args.label_smoothing:g} must be in [0, 1)")
    for name in ("mixup_alpha", "cutmix_alpha", "weight_decay", "norm_weight_decay", "bias_weight_decay"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ValueError(f"--{name} {value:g} must be 0 or more")
    if not 0 < args.model_ema_decay < 1:
        raise ValueError(f"--model_ema_decay {args.model_ema_decay:g} must be in (0, 1), e.g. 0.9999")
    if args.clip_grad_norm is not None and not args.clip_grad_norm > 0:
        raise ValueError(f"--clip_grad_norm {args.clip_grad_norm:g} must be positive")
    if args.nesterov and args.optimizer != "sgd":
        raise ValueError(f"--nesterov applies to SGD, not --optimizer {args.optimizer}")
    if args.nesterov and not args.momentum > 0:
        raise ValueError(f"--nesterov needs a positive --momentum, not {args.momentum:g}")


def resolve_recipe(args, given: set[str]) -> None:
    """Apply ``args.recipe`` to the flags not ``given`` on the command line, record what it set in
    ``args.recipe_settings``, check the values and fill in the decays that follow --weight_decay.
    Raises ValueError (one line) for a bad value."""
    applied = {}
    if args.recipe:
        for name, value in RECIPES[args.recipe]["flags"].items():
            if name not in given:
                setattr(args, name, value)
                applied[name] = value
    args.recipe_settings = applied
    check_values(args)
    if "model_ema_decay" in given and not args.model_ema:
        raise ValueError("--model_ema_decay goes with --model_ema")
    warmup = applied.get("warmup_epochs")
    if warmup and (args.scheduler == "onecycle" or warmup >= args.epochs):
        why = "--scheduler onecycle" if args.scheduler == "onecycle" else f"--epochs {args.epochs}"
        raise ValueError(f"--recipe {args.recipe} sets --warmup_epochs {warmup}, which does not fit {why}: "
                         "pass --warmup_epochs 0 (or a shorter warm-up)")
    for name in ("norm_weight_decay", "bias_weight_decay"):
        if getattr(args, name) is None:
            setattr(args, name, args.weight_decay)


def rate_settings(args) -> dict:
    """The settings of ``args`` that move the rate (RATE_SETTINGS), for the finder's JSON."""
    return {name: getattr(args, name) for name in RATE_SETTINGS}


def recipe_lr(recipe: str | None, global_batch: int) -> float | None:
    """The recipe's own learning rate at ``global_batch`` (linear scaling from its rate per 256)."""
    return RECIPES[recipe]["lr_per_256"] * global_batch / 256 if recipe else None


def setting_differences(sweep: dict, train: dict) -> list[str]:
    """One warning line per rate-moving setting in which the sweep (``sweep``: a finder JSON's
    ``rate_settings``) and the training (``train``) differ; settings the sweep did not record are
    not compared, momentum and Nesterov only between two SGD runs."""
    lines = []
    both_sgd = sweep.get("optimizer", "sgd") == train.get("optimizer") == "sgd"
    for name in RATE_SETTINGS:
        if name not in sweep or name not in train or sweep[name] == train[name]:
            continue
        if name in ("momentum", "nesterov") and not both_sgd:
            continue
        lines.append(f"warning: the sweep used {name} {sweep[name]} and training uses {train[name]}, "
                     "so the rate may not carry over")
    return lines
