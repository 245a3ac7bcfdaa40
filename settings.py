"""What a setting means beyond its flag, in one table: which settings move the rate a range test
finds, and which must match when a training resumes. Adding a flag that changes the rate takes its
line in ``cli.py`` (the flag), the code that uses it, and one line here.

    rate_settings(args)       # {"optimizer": "sgd", "momentum": 0.9, ...}: recorded with every sweep
"""

# setting -> "rate": moves the rate a range test finds (recorded with every sweep, compared by
# --lr_from with the training's, and matched on resume); "resume": shapes the model, the data or
# the schedule, so a resumed training must match it. Some are derived, not flags (num_classes,
# world_size, precision, channels_last).
SETTINGS = {
    "dataset": "resume", "input_size": "resume", "num_classes": "resume", "batch_size": "resume",
    "world_size": "resume", "max_samples": "resume", "seed": "resume",
    "optimizer": "rate", "lr": "resume", "momentum": "rate", "weight_decay": "rate",
    "scheduler": "resume", "epochs": "resume", "warmup_epochs": "resume", "step_size": "resume",
    "gamma": "resume", "precision": "resume", "channels_last": "resume", "use_pretrained": "resume",
    "nesterov": "rate", "norm_weight_decay": "rate", "bias_weight_decay": "rate", "label_smoothing": "rate",
    "mixup_alpha": "rate", "cutmix_alpha": "rate", "clip_grad_norm": "rate", "model_ema": "resume",
    "model_ema_decay": "resume",
}
RATE_SETTINGS = tuple(name for name, role in SETTINGS.items() if role == "rate")
RESUME_SETTINGS = tuple(SETTINGS)


def rate_settings(args) -> dict:
    """The settings of ``args`` that move the rate, for the finder's JSON."""
    return {name: getattr(args, name) for name in RATE_SETTINGS}
