"""Datasets, augmentation, decoding and loaders.

Workers decode with OpenCV and augment with albumentations on uint8 images; the batch
leaves the loader as uint8 NHWC and is turned into a normalised float NCHW tensor on the
device by ``to_model_input`` (a quarter of the bytes to copy, and channels_last for free).

    train_ds, val_ds = build_datasets("imagenet1k", "./data", input_size=224)
    loader = build_loader(train_ds, batch_size=256, train=True, num_workers=8, device=device, seed=0)
    for images, labels, bad in loader:
        x = to_model_input(images, device, channels_last=True)
"""

import copy
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS

from errors import UserInputError
from input_size import is_small_input

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A sample whose file cannot be decoded is replaced by the next one; past this share
# of bad files the data is considered broken and the run stops.
MAX_BAD_FRACTION = 0.01

cv2.setNumThreads(1)  # one decode thread per worker; the workers are the parallelism


class BadImageError(Exception):
    pass


def is_truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG stream without its end-of-image marker near the end was cut short: OpenCV would
    still return it, with the missing part grey."""
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    tail = data[-1024:].tobytes()
    return b"\xff\xd9" not in tail


def decode_rgb(path: str) -> np.ndarray:
    """An HxWx3 uint8 RGB array from any image file OpenCV reads (grey and CMYK included)."""
    data = np.fromfile(path, dtype=np.uint8)
    if is_truncated_jpeg(data):
        raise BadImageError(f"{path}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None  # RGB straight from the decoder
    if image is None:
        raise BadImageError(f"{path}: not a readable image")
    return image


def resize_size(input_size: int) -> int:
    """The resize before cropping, in ImageNet's 256 -> 224 proportion."""
    return round(input_size * 256 / 224)


def build_train_transform(input_size: int, seed: int | None = None) -> A.Compose:
    """Spec augmentations: resize, random crop, flip, colour jitter (CIFAR-style when small)."""
    if is_small_input(input_size):
        pad = input_size // 8
        steps = [
            A.Resize(input_size, input_size),
            A.PadIfNeeded(input_size + 2 * pad, input_size + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(input_size, input_size),
            A.HorizontalFlip(p=0.5),
        ]
    else:
        big = resize_size(input_size)
        steps = [
            A.Resize(big, big),
            A.RandomCrop(input_size, input_size),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
        ]
    return A.Compose(steps, seed=seed)


def build_val_transform(input_size: int) -> A.Compose:
    """Deterministic: resize then centre crop (just a resize when small)."""
    if is_small_input(input_size):
        return A.Compose([A.Resize(input_size, input_size)])
    big = resize_size(input_size)
    return A.Compose([A.Resize(big, big), A.CenterCrop(input_size, input_size)])


def to_model_input(images: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float32 NCHW on ``device`` (channels_last strides if asked)."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    if not channels_last:
        x = x.contiguous()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    return x.sub_(mean).div_(std)


class AugmentedImages(Dataset):
    """Base: ``load(i)`` gives an RGB array, the transform augments it, items are
    ``(uint8 HWC tensor, label, bad_files_skipped)``."""

    def __init__(self, targets: list[int], classes: list[str], transform: A.Compose):
        self.targets = list(targets)
        self.classes = list(classes)
        self.transform = transform
        self.index = np.arange(len(self.targets))

    def load(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def restrict(self, indices) -> None:
        """Keep only these underlying samples (e.g. a ``--max_samples`` subset)."""
        self.index = np.asarray(indices, dtype=np.int64)

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)

    @property
    def subset_targets(self) -> list[int]:
        return [self.targets[i] for i in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        """``key`` is a position, or (position, augmentation seed) from ``EpochSampler``: seeding
        per sample makes the augmentations independent of which worker runs them."""
        position = key
        if isinstance(key, tuple):
            position, seed = key
            # One generator pair shared by all transforms: a fifth of set_random_seed's cost
            # (one pair per transform) and still a pure function of the seed.
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        skipped = 0
        while True:
            i = int(self.index[(position + skipped) % len(self.index)])
            try:
                image = self.load(i)
                break
            except BadImageError as exc:
                skipped += 1
                print(f"warning: skipping {exc}", file=sys.stderr, flush=True)
                if skipped >= len(self.index):
                    raise UserInputError("no readable image in the dataset") from exc
        out = self.transform(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(out)), self.targets[i], skipped


class FolderImages(AugmentedImages):
    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: A.Compose):
        super().__init__([t for _, t in samples], classes, transform)
        self.paths = [p for p, _ in samples]

    def load(self, i: int) -> np.ndarray:
        return decode_rgb(self.paths[i])


class ArrayImages(AugmentedImages):
    def __init__(self, images: np.ndarray, targets: list[int], classes: list[str], transform: A.Compose):
        super().__init__(targets, classes, transform)
        self.images = images

    def load(self, i: int) -> np.ndarray:
        return self.images[i]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted folder names) and (path, class index) samples under ``root``."""
    if not root.is_dir():
        raise UserInputError(f"{root}: folder not found; expected one sub-folder of images per class")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise UserInputError(f"{root}: has no class folders; put each class's images in {root}/<class>/")
    samples, empty = [], []
    for label, name in enumerate(classes):
        files = sorted(
            os.path.join(dirpath, f)
            for dirpath, _, names in os.walk(root / name, followlinks=True)
            for f in names
            if _is_image(f)
        )
        if not files:
            empty.append(name)
        samples.extend((f, label) for f in files)
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise UserInputError(f"{root}: class folder(s) with no images: {shown}; add images or remove the folder(s)")
    return classes, samples


def check_same_classes(train_classes: list[str], val_classes: list[str], val_root: Path) -> None:
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    parts = []
    if only_train:
        parts.append("missing in val/: " + ", ".join(only_train[:5]) + (" ..." if len(only_train) > 5 else ""))
    if only_val:
        parts.append("only in val/: " + ", ".join(only_val[:5]) + (" ..." if len(only_val) > 5 else ""))
    raise UserInputError(f"{val_root}: classes differ from train/ ({'; '.join(parts)}); both must hold the same class folders")


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
                   seed: int = 0, need_val: bool = True):
    """(train, val) datasets; ``val`` is None when not needed and ``val/`` is absent."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserInputError(f"--data_dir {data_dir}: folder not found; it must contain train/ and val/")
    train_tf, val_tf = build_train_transform(input_size, seed), build_val_transform(input_size)
    if dataset == "cifar100":
        train = _load_cifar100(root, True, train_tf)
        val = _load_cifar100(root, False, val_tf) if need_val else None
    else:
        classes, samples = scan_image_folder(root / "train")
        train = FolderImages(samples, classes, train_tf)
        val = None
        if need_val or (root / "val").is_dir():
            val_classes, val_samples = scan_image_folder(root / "val")
            check_same_classes(classes, val_classes, root / "val")
            val = FolderImages(val_samples, val_classes, val_tf)
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


def default_num_workers(requested: int) -> int:
    """``requested`` capped at the CPUs this process may use."""
    return max(0, min(requested, len(os.sched_getaffinity(0))))


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


def build_loader(dataset: AugmentedImages, batch_size: int, train: bool, num_workers: int,
                 device: torch.device, seed: int = 0, sampler=None) -> DataLoader:
    """Shuffled, drop_last loader for training; ordered, complete loader for evaluation."""
    available = len(sampler) if sampler is not None else len(dataset)
    if train and batch_size > available:
        per_process = " per process" if getattr(sampler, "world_size", 1) > 1 else ""
        raise UserInputError(
            f"--batch_size {batch_size} is larger than the {available} training images{per_process} "
            "(after --max_samples); lower --batch_size or use more data"
        )
    workers = default_num_workers(num_workers)
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
