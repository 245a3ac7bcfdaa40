"""Shared test helpers: tiny JPEG ImageFolder trees and running the CLIs as users do."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Small, bounded and quiet: 2 cores are shared by the test run and any data workers.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Under pytest-xdist every worker is one more process on the same cores: one thread each (set before
# torch is imported, and inherited by the CLIs the tests start), or the workers fight over the cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"


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


def run_main(*args) -> tuple[int, str, str]:
    """main.py in this process (its imports are paid once per test session): (exit code, stdout,
    stderr). For what users see of a real process, run_cli."""
    import contextlib
    import io

    import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main.main([str(a) for a in args])
        except SystemExit as stop:  # argparse's one-line errors
            code = stop.code
    return code, out.getvalue(), err.getvalue()


# The one set of flags that makes a range test or a training take seconds on a CPU: small images, a
# small batch, no loader processes, and ResNet-18 (about 3.5x faster a step than ResNet-50 here),
# for every test that is not about ResNet-50 itself. A flag repeated later on a command line wins.
FAST = ["--input_size", "32", "--batch_size", "4", "--num_workers", "0", "--precision", "fp32", "--arch", "resnet18"]


def kill_after(cmd: list[str], checkpoint: Path, steps: int, steps_per_epoch: int, timeout: float = 300) -> None:
    """Run ``cmd`` and SIGKILL it once ``checkpoint`` records at least ``steps`` optimizer steps
    (read only when it changed: a ResNet-50 checkpoint is hundreds of MB); assert it was killed."""
    import torch

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline, seen = time.time() + timeout, None
        while time.time() < deadline and proc.poll() is None:
            try:
                stamp = checkpoint.stat().st_mtime_ns
                if stamp != seen:
                    state = torch.load(checkpoint, weights_only=True)
                    seen = stamp  # only once read: a failed read is tried again
                    if state["epoch"] * steps_per_epoch + state["step_in_epoch"] >= steps:
                        proc.send_signal(signal.SIGKILL)
                        break
            except (FileNotFoundError, RuntimeError, EOFError):
                pass
            time.sleep(0.02)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
