"""The data side's one entry: which reader a ``--data_dir`` needs (class folders, CIFAR-100 or
WebDataset shards), subsets, the epoch sampler and the loaders.

Workers decode with OpenCV and augment with albumentations on uint8 images (``images.py``); the
batch leaves the loader as uint8 NHWC and is turned into a normalised float NCHW tensor on the
device by ``images.to_model_input`` (a quarter of the bytes to copy, and channels_last for free).
The shard reader (and ``webdataset``) is imported only when ``--data_dir`` holds shards.

    train_ds, val_ds = build_datasets("imagenet1k", "./data", input_size=224)
    loader = build_loader(train_ds, batch_size=256, train=True, num_workers=8, device=device, seed=0)
    for images, labels, bad in loader:
        x = to_model_input(images, device, channels_last=True)
"""

import copy
import os
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from errors import UserInputError
from image_folder import (
    ArrayImages,
    AugmentedImages,
    FolderImages,
    check_same_classes,
    has_class_folders,
    scan_flat_val,
    scan_image_folder,
)
from images import build_train_transform, build_val_transform
from shard_layout import holds_shards

# A sample whose file cannot be decoded is replaced by the next one; past this share
# of bad files the data is considered broken and the run stops.
MAX_BAD_FRACTION = 0.01


def balanced_subset(targets: list[int], max_samples: int, seed: int) -> list[int]:
    """At most ``max_samples`` indices, spread evenly over classes, chosen with ``seed``."""
    if max_samples >= len(targets):
        return list(range(len(targets)))
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    queues = [list(rng.permutation(idx)) for _, idx in sorted(by_class.items())]
    chosen: list[int] = []
    while len(chosen) < max_samples:
        for q in queues:
            if q and len(chosen) < max_samples:
                chosen.append(int(q.pop()))
    return sorted(chosen)


def subset(dataset: AugmentedImages, positions, transform: A.Compose | None = None) -> AugmentedImages:
    """A copy of ``dataset`` holding only these positions of it (and another transform, if given)."""
    part = copy.copy(dataset)
    part.restrict(dataset.index[np.asarray(positions, dtype=np.int64)])
    if transform is not None:
        part.transform = transform
    return part


def hold_out(dataset: AugmentedImages, count: int, seed: int, input_size: int):
    """Split off ``count`` images (class-balanced, seeded) with the evaluation transform: returns
    (the rest, the held-out part). For checks that must not be scored on what they trained on."""
    held = balanced_subset(dataset.subset_targets, count, seed)
    rest = np.setdiff1d(np.arange(len(dataset)), held)
    return subset(dataset, rest), subset(dataset, held, build_val_transform(input_size))


def _load_cifar100(data_dir: Path, train: bool, transform: A.Compose) -> ArrayImages:
    from torchvision.datasets import CIFAR100

    try:
        base = CIFAR100(root=str(data_dir), train=train, download=False)
    except RuntimeError as exc:
        raise UserInputError(
            f"{data_dir / 'cifar-100-python'}: CIFAR-100 not found or corrupt; "
            "unpack cifar-100-python.tar.gz into --data_dir"
        ) from exc
    return ArrayImages(base.data, base.targets, base.classes, transform)


def build_datasets(dataset: str, data_dir: str, input_size: int, max_samples: int | None = None,
                   seed: int = 0, need_val: bool = True, val_labels: str | None = None, rescan: bool = False):
    """(train, val) datasets; ``val`` is None when not needed (``val/`` is then not looked at).
    ``train.layout`` says which layout and labels file were used (for the JSON records)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserInputError(f"--data_dir {data_dir}: folder not found; it must contain train/ and val/")
    train_tf, val_tf = build_train_transform(input_size, seed), build_val_transform(input_size)
    if dataset != "cifar100":
        if holds_shards(root):  # WebDataset tar shards instead of class folders
            from shards import build_shard_datasets

            return build_shard_datasets(root, train_tf, val_tf, max_samples, need_val)
    if dataset == "cifar100":
        train = _load_cifar100(root, True, train_tf)
        val = _load_cifar100(root, False, val_tf) if need_val else None
        train.layout = {"data_layout": "cifar100", "val_labels_file": None}
    else:
        classes, paths, targets = scan_image_folder(root / "train", rescan)
        train = FolderImages(paths, targets, classes, train_tf)
        train.layout = {"data_layout": "train_only", "val_labels_file": None}
        val = None
        if need_val:
            val_root = root / "val"
            if val_root.is_dir() and not has_class_folders(val_root):
                val_paths, val_targets, layout, labels_file = scan_flat_val(val_root, classes, val_labels, root)
                train.layout = {"data_layout": layout, "val_labels_file": labels_file}
            else:
                val_classes, val_paths, val_targets = scan_image_folder(val_root, rescan)
                check_same_classes(classes, val_classes, val_root)
                train.layout["data_layout"] = "class_folders"
            val = FolderImages(val_paths, val_targets, classes, val_tf)
    if max_samples:
        train.restrict(balanced_subset(train.targets, max_samples, seed))
        if val is not None:
            val.restrict(balanced_subset(val.targets, max_samples, seed))
    return train, val


class EpochSampler(Sampler):
    """A seeded order per epoch that can start part-way (to resume) and be sharded over
    ranks; yields (position, augmentation seed) so a resumed epoch sees the very same
    images with the very same augmentations."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 advance_each_pass: bool = False):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.advance_each_pass = advance_each_pass  # for loaders that are simply cycled (the range test)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use ``epoch``'s order, skipping its first ``start`` samples of this rank."""
        self.epoch, self.start = epoch, start

    def _positions(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
            order = order[: self.size - self.size % self.world_size]  # equal shards
        else:
            order = list(range(self.size))
        return order[self.rank::self.world_size]

    def __iter__(self):
        positions, start = self._positions(), self.start
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        if self.advance_each_pass:
            self.set_epoch(self.epoch + 1)
        for position in positions[start:]:
            yield position, (base + position) % 2**32

    def __len__(self) -> int:
        return len(self._positions()) - self.start


CPU_WORKERS = 4  # on the CPU the model step needs the cores too


def default_num_workers(requested: int | None, device: torch.device) -> int:
    """``requested`` capped at the CPUs this process may use; None picks: on CUDA every CPU but one,
    shared among this machine's processes under torchrun (a GPU starves on a few workers: one
    H100 trains ResNet-50 faster than 4 cores decode JPEGs), on the CPU at most CPU_WORKERS."""
    cpus = len(os.sched_getaffinity(0))
    if requested is None:
        if device.type != "cuda":
            return min(CPU_WORKERS, cpus)
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(1, (cpus - 1) // per_machine)
    return max(0, min(requested, cpus))


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


def build_loader(dataset: AugmentedImages, batch_size: int, train: bool, num_workers: int | None,
                 device: torch.device, seed: int = 0, sampler=None) -> DataLoader:
    """Shuffled, drop_last loader for training; ordered, complete loader for evaluation."""
    if not isinstance(dataset, AugmentedImages):  # shards.ShardImages makes its own loader
        return dataset.shard_loader(batch_size, train, default_num_workers(num_workers, device), device, sampler)
    available = len(sampler) if sampler is not None else len(dataset)
    if train and batch_size > available:
        per_process = " per process" if getattr(sampler, "world_size", 1) > 1 else ""
        raise UserInputError(
            f"--batch_size {batch_size} is larger than the {available} training images{per_process} "
            "(after --max_samples); lower --batch_size or use more data"
        )
    workers = default_num_workers(num_workers, device)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_seed_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
