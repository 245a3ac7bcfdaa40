"""Shared test helpers: tiny JPEG ImageFolder trees and running the CLIs as users do."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Small, bounded and quiet: 2 cores are shared by the test run and any data workers.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def make_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class=8, val_per_class=3, size=40,
                      seed=0) -> Path:
    """A learnable ImageFolder: each class is a different dominant colour plus noise."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                image[..., c % 3] += 150
                cv2.imwrite(str(folder / f"{name}_{i:03d}.JPEG"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")


def run_cli(script: str, *args, timeout: float = 240, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


# Flags that make a range test take a few seconds on a CPU.
FAST = ["--input_size", "32", "--batch_size", "4", "--num_workers", "0", "--precision", "fp32"]
