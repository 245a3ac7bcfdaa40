"""Training checkpoints: everything needed to continue a run exactly, written atomically,
read back with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

    save_checkpoint(path, state)            # temp file + rename: a kill never leaves half a file
    state = load_checkpoint(path)           # one-line UserInputError if missing or unreadable
"""

import random
from pathlib import Path

import numpy as np
import torch

from atomic_io import atomic_write
from errors import UserInputError
from settings import RESUME_SETTINGS


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    *internal, version = state["python"]
    random.setstate((version, tuple(internal), None))


def save_checkpoint(path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"--resume {path}: no such checkpoint file; check the path or use --resume auto")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to parse means the file is not a usable checkpoint
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"{path}: not a readable checkpoint ({reason[:160]}); "
                             "delete it to start fresh or point --resume at another file") from None


def resume_path(resume: str | None, output_dir: str) -> Path | None:
    """The checkpoint to continue from: None for a fresh run."""
    if resume is None:
        return None
    if resume == "auto":
        last = Path(output_dir) / "last.pt"
        return last if last.exists() else None
    return Path(resume)


def config_differences(saved: dict, current: dict) -> list[str]:
    """The settings in which a checkpoint's run and this one differ (the EMA decay only when both
    average)."""
    differences = []
    for k in RESUME_SETTINGS:
        before, now = saved.get(k), current.get(k)
        if k == "model_ema_decay" and not (saved.get("model_ema") and current.get("model_ema")):
            continue
        if before != now:
            differences.append(f"{k}: checkpoint {before!r} vs now {now!r}")
    return differences
