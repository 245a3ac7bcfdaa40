"""Named training recipes for ResNet-50 v1.5: each one is data, a set of flag values that
``cli.py`` layers under the command line (a flag given explicitly wins). Where each
value comes from, and what could not be taken from its source: docs/recipes.md.

    uv run python main.py --find_lr --recipe nvidia --data_dir ./data
    uv run python main.py --recipe nvidia --lr_from ./outputs/suggested_lr.json --data_dir ./data
"""

from settings import RATE_SETTINGS

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


def describe_recipes() -> str:
    """What each recipe sets, for --help."""
    def show(flag, value):
        if value is None:
            return "= --weight_decay" if flag.endswith("weight_decay") else "off"
        return str(value)

    return "; ".join(f"{name}: " + ", ".join(f"{flag} {show(flag, value)}" for flag, value in recipe["flags"].items())
                     for name, recipe in RECIPES.items())


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
