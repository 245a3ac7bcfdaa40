"""The ImageNet-sized file index: a tree of 1000 classes x 1,281 hard links to a few real
JPEGs (1.28 M files), then scan time, index memory, a DataLoader worker's private-memory
growth after touching every entry, and time to the first range-test steps.

    uv run python benchmarks/bench.py --scale --workdir /tmp/scale --json scale.json
"""

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

from jpegs import write_jpeg_folder
from torch.utils.data import DataLoader, Dataset

SCALE_CLASSES = 1000
SCALE_PER_CLASS = 1281
REPO = Path(__file__).resolve().parent.parent


def build_link_tree(root: Path, classes: int = SCALE_CLASSES, per_class: int = SCALE_PER_CLASS,
                    sources: int = 64) -> Path:
    """``root/train/n<8 digits>/<k>.JPEG``: hard links to ``sources`` real JPEGs (reused if complete;
    64 sources keep each under ext4's 65,000 links per file)."""
    if (root / "train").is_dir() and len(os.listdir(root / "train")) == classes:
        return root
    seeds = sorted(write_jpeg_folder(root / "seed", sources, classes=1).glob("train/*/*.JPEG"))
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            target = folder / f"n{c:08d}_{k}.JPEG"
            if not target.exists():
                os.link(seeds[k % len(seeds)], target)
    return root


def private_mb() -> float:
    """This process's private memory (clean + dirty pages) in MB."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


class TouchEveryEntry(Dataset):
    """Item 0, in a worker: read every path and label of the index once; the worker's
    private-memory growth in MB."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return 1

    def __getitem__(self, _):
        before = private_mb()
        paths, targets, length = self.images.paths, self.images.targets, 0
        for i in range(len(paths)):
            length += len(paths[i]) + int(targets[i])
        return private_mb() - before


def worker_growth_mb(images) -> float:
    loader = DataLoader(TouchEveryEntry(images), batch_size=None, num_workers=1)
    return float(next(iter(loader)))


def first_step_seconds(root: Path, work: Path) -> float:
    """Seconds from starting ``main.py --find_lr`` (CPU, small steps) to its progress bar showing
    the first training step done; the child is then stopped."""
    command = [sys.executable, str(REPO / "main.py"), "--find_lr", "--data_dir", str(root), "--lr_iter", "20",
               "--batch_size", "4", "--input_size", "64", "--num_workers", "1", "--no_cuda",
               "--lr_plot", str(work / "out" / "lr.png")]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    seen = b""
    try:
        while b" 1/20 " not in seen:
            chunk = os.read(child.stderr.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"main.py --find_lr ended before its first step: {seen.decode()[-500:]}")
            seen += chunk
        return time.perf_counter() - started
    finally:
        child.kill()
        child.wait()


def measure_scale(work: Path) -> dict[str, float]:
    """The four figures of ``bench.py --scale`` on the tree built under ``work/tree``."""
    from preprocess import build_datasets

    started = time.perf_counter()
    root = build_link_tree(work / "tree")
    print(f"tree: {time.perf_counter() - started:.0f} s to build", flush=True)
    gc.collect()
    before = private_mb()
    started = time.perf_counter()
    train, _ = build_datasets("imagenet1k", str(root), 64, need_val=False)
    scan_s = time.perf_counter() - started
    gc.collect()
    index_mb = private_mb() - before
    print(f"scan: {scan_s:.1f} s, {len(train)} files, index {index_mb:.0f} MB", flush=True)
    growth = worker_growth_mb(train)
    print(f"worker growth after one pass: {growth:.1f} MB", flush=True)
    del train
    first_step = first_step_seconds(root, work)
    print(f"start to first steps: {first_step:.1f} s", flush=True)
    return {"scale_scan_s": round(scan_s, 2), "scale_index_mb": round(index_mb, 1),
            "scale_worker_growth_mb": round(growth, 1), "scale_first_step_s": round(first_step, 1)}
