"""The built-in demo data: scikit-learn's 1,797 handwritten digits written once as a small
ImageFolder (train/ and val/, 10 classes, 32x32 PNG) in the user's cache folder.

    root = ensure_digits_imagefolder()      # ~/.cache/imagenet1k-lr-finder/digits-v1
"""

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

DEMO_VERSION = "digits-v1"
IMAGE_SIZE = 32
VAL_FRACTION = 0.2


def demo_cache_root() -> Path:
    base = os.environ.get("LR_FINDER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imagenet1k-lr-finder")
    return Path(base)


def write_digits_imagefolder(target: Path, seed: int = 0) -> int:
    """Write the digits as ``target/{train,val}/<digit>/<n>.png``; returns the image count."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    count = 0
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = round(len(idx) * VAL_FRACTION)
        for split, members in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = target / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                big = cv2.resize(pixels, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)
                if not cv2.imwrite(str(folder / f"{i:04d}.png"), big):
                    raise OSError(f"could not write {folder / f'{i:04d}.png'}")
                count += 1
    return count


def ensure_cached_folder(name: str, write, cache_root: Path | None = None) -> Path:
    """``cache_root/name``, built on first use by ``write(folder)`` into a temp folder and
    renamed into place, so a half-built folder is never mistaken for a complete one."""
    root = (cache_root or demo_cache_root()) / name
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root.parent))
    try:
        write(tmp)
        os.replace(tmp, root)
    except OSError:
        if not (root / "train").is_dir():  # a concurrent builder did not win the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_digits_imagefolder(cache_root: Path | None = None) -> Path:
    """The demo ImageFolder (``~/.cache/imagenet1k-lr-finder/digits-v1`` by default)."""
    return ensure_cached_folder(DEMO_VERSION, write_digits_imagefolder, cache_root)
