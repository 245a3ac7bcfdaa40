"""``--lr_from``: the learning rate of a finder's ``suggested_lr.json``, scaled to the training's
global batch (linearly for SGD, by the square root for AdamW), with a warning for each setting
that moves the rate and differs between the sweep and the training.

    lr, source = lr_from_json("./outputs/suggested_lr.json", global_batch=512, optimizer="sgd",
                              no_scaling=False, settings=rate_settings(args))
"""

import json
import math
from pathlib import Path

from errors import UserInputError
from finder_result import SCHEMA_VERSION
from recipes import setting_differences


def read_lr_from(path: str) -> dict:
    """A finder JSON with a usable ``suggested_lr``, refusing failed or incomplete sweeps."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserInputError(f"--lr_from {path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise UserInputError(f"--lr_from {path}: not valid JSON; point it at a suggested_lr.json") from None
    if not isinstance(record, dict) or record.get("success") is not True:
        error = record.get("error", "no error recorded") if isinstance(record, dict) else "not an object"
        raise UserInputError(f"--lr_from {path}: that sweep did not succeed ({error}); rerun the finder or pass --lr")
    lr = record.get("suggested_lr")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise UserInputError(f"--lr_from {path}: has no positive suggested_lr; rerun the finder or pass --lr")
    if record.get("schema_version") != SCHEMA_VERSION or not isinstance(record.get("answer"), dict):
        raise UserInputError(f"--lr_from {path}: written by an older version of the finder (no schema_version "
                             f"{SCHEMA_VERSION}); rerun the finder, or pass --lr {lr:.3g}")
    return record


def scale_lr(lr: float, from_batch: int, to_batch: int, optimizer: str) -> tuple[float, str]:
    """Carry a rate found at one global batch to another (Goyal et al. 2017): linear for SGD,
    square root for AdamW. Returns (rate, rule)."""
    if from_batch == to_batch:
        return lr, "none"
    if optimizer == "adamw":
        return lr * math.sqrt(to_batch / from_batch), "sqrt"
    return lr * to_batch / from_batch, "linear"


def lr_from_json(path: str, global_batch: int, optimizer: str, no_scaling: bool,
                 settings: dict | None = None) -> tuple[float, dict]:
    """The training rate taken from a finder JSON, scaled to this run's global batch unless
    ``no_scaling``; also what was done, for config.json, with a warning per rate-moving setting in
    which the sweep differs from the training's ``settings`` (settings.RATE_SETTINGS)."""
    record = read_lr_from(path)
    answer = record["answer"]
    found, from_batch = float(record["suggested_lr"]), answer.get("global_batch_size")
    if not isinstance(from_batch, int) or from_batch < 1 or no_scaling:
        lr, rule = found, "none"
    else:
        lr, rule = scale_lr(found, from_batch, global_batch, optimizer)
    swept_with = answer.get("optimizer")
    swept = answer.get("rate_settings") or ({"optimizer": swept_with} if swept_with else {})
    warnings = setting_differences(swept, {**(settings or {}), "optimizer": optimizer})
    return lr, {"file": path, "suggested_lr": found, "suggestion_method": answer.get("method"),
                "sweep_global_batch": from_batch, "sweep_optimizer": swept_with, "train_optimizer": optimizer,
                "train_global_batch": global_batch, "scaling": rule, "lr": lr, "sweep_recipe": answer.get("recipe"),
                "setting_warnings": warnings}


def describe_lr_source(source: dict) -> str:
    found, lr = source["suggested_lr"], source["lr"]
    text = f"--lr_from {source['file']}: suggested {found:.3g} at global batch {source['sweep_global_batch']}"
    if source["scaling"] == "none":
        same = source["sweep_global_batch"] == source["train_global_batch"]
        text += "; training with it as it is" + ("" if same else " (--no_lr_scaling)")
    else:
        rule = "linear (SGD)" if source["scaling"] == "linear" else "square root (AdamW)"
        text += (f"; scaled to global batch {source['train_global_batch']} by the {rule} rule: {lr:.3g} "
                 "(--no_lr_scaling keeps the found rate)")
    return "\n".join([text, *source.get("setting_warnings", [])])
