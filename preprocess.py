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
import hashlib
import os
import random
import sys
import tempfile
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
from imagenet_labels import find_labels_file, label_val_files, read_val_labels, wnid_from_name

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
    return decode_rgb_bytes(np.fromfile(path, dtype=np.uint8), path)


def decode_rgb_bytes(data: np.ndarray, name: str) -> np.ndarray:
    """``decode_rgb`` on an image file's bytes (a folder's file or a shard's sample); ``name`` is for messages."""
    if is_truncated_jpeg(data):
        raise BadImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None  # RGB straight from the decoder
    if image is None:
        raise BadImageError(f"{name}: not a readable image")
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
    ``(uint8 HWC tensor, label, bad_file)``: ``bad_file`` is the index of the sample's own file
    when it could not be read (a stand-in took its place), else -1. Each bad file is thus
    named by its own sample only, never again as someone else's stand-in."""

    def __init__(self, targets, classes: list[str], transform: A.Compose):
        self.targets = np.asarray(targets, dtype=np.int64)  # no per-item objects to copy in workers
        self.classes = list(classes)
        self.transform = transform
        self.index = np.arange(len(self.targets))
        self.warned: set[int] = set()

    def load(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def restrict(self, indices) -> None:
        """Keep only these underlying samples (e.g. a ``--max_samples`` subset)."""
        self.index = np.asarray(indices, dtype=np.int64)

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)

    @property
    def subset_targets(self) -> list[int]:
        return self.targets[self.index].tolist()

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
        bad_file, step = -1, 0
        while True:
            i = int(self.index[(position + step) % len(self.index)])
            try:
                image = self.load(i)
                break
            except BadImageError as exc:
                if step == 0:
                    bad_file = i
                if i not in self.warned:
                    self.warned.add(i)
                    print(f"warning: skipping {exc}", file=sys.stderr, flush=True)
                step += 1
                if step >= len(self.index):
                    raise UserInputError("no readable image in the dataset") from exc
        out = self.transform(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(out)), int(self.targets[i]), bad_file


class PathIndex:
    """File paths as one bytes buffer plus int64 offsets, relative to ``root``: two numpy
    arrays instead of 1.28 M str objects, so forked workers read them without copy-on-read
    (touching a Python object writes its reference count and un-shares its page)."""

    def __init__(self, root: str, buffer: np.ndarray, offsets: np.ndarray):
        self.root = os.fsencode(os.path.join(root, ""))
        self.buffer, self.offsets = buffer, offsets

    @classmethod
    def from_relative(cls, root: str, relative: list[str]) -> "PathIndex":
        encoded = [os.fsencode(p) for p in relative]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(root, np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self.root + self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes())


class FolderImages(AugmentedImages):
    def __init__(self, paths: PathIndex, targets, classes: list[str], transform: A.Compose):
        super().__init__(targets, classes, transform)
        self.paths = paths

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


INDEX_VERSION = 1


def index_cache_file(root: Path) -> Path:
    """Next to the data when that folder is writable, else in the user cache (``LR_FINDER_CACHE``)."""
    if os.access(root.parent, os.W_OK):
        return root.parent / f".lr_finder_index_{root.name}.npz"
    from demo_data import demo_cache_root

    key = hashlib.sha1(os.fsencode(root.resolve())).hexdigest()[:16]
    return demo_cache_root() / "index" / f"{root.name}-{key}.npz"


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


def _link_into(entry: os.DirEntry, real_root: str) -> bool:
    """A symbolic link whose target lies in the tree being scanned (itself included)."""
    return entry.is_symlink() and _inside(os.path.realpath(entry.path), real_root)


def _link_target(link: str, folder_real: str, resolved: dict[str, str]) -> str:
    """Where a link to a file points, with the target's folder resolved once per folder: a tree made
    of links (``prepare_imagenet.py --symlink``) costs a readlink per file, not a realpath."""
    head, tail = os.path.split(os.path.join(folder_real, os.readlink(link)))
    if head not in resolved:
        resolved[head] = os.path.realpath(head)
    return os.path.join(resolved[head], tail)


def class_folder_state(root: Path) -> tuple[list[str], np.ndarray]:
    """Sorted class folder names and their modification times (ns): what the cache is checked against.
    A link to a folder elsewhere is a class; a link into ``root`` itself is not (its images have
    their own class folder)."""
    real_root = os.path.realpath(root)
    entries = sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(root)
                     if e.is_dir() and not _link_into(e, real_root))
    return [name for name, _ in entries], np.array([m for _, m in entries], dtype=np.int64)


def class_images(root: Path, name: str, visited: set[str]) -> list[str]:
    """Image paths (relative to ``root``) under class folder ``name``, following links to folders
    elsewhere once each: a folder already scanned (``visited``, real paths) and any link back into
    ``root`` (a loop, or another class's images) are skipped with a warning, so each real file is
    counted once, under its own class."""
    real_root = os.path.realpath(root)
    files, stack, target_folders = [], [os.path.join(root, name)], {}
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            print(f"warning: skipping {folder}: a link to {real}, which is already scanned", file=sys.stderr)
            continue
        visited.add(real)
        prefix = os.path.relpath(folder, root) + os.sep  # once per folder: relpath is slow
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    if _link_into(entry, real_root):
                        print(f"warning: skipping {entry.path}: a link into {root} (its images count in their "
                              f"own class folder)", file=sys.stderr)
                    else:
                        stack.append(entry.path)
                elif _is_image(entry.name):
                    if entry.is_symlink() and _inside(_link_target(entry.path, real, target_folders), real_root):
                        continue  # a link to an image of the tree: counted where it lies
                    files.append(prefix + entry.name)
    files.sort()
    return files


def load_cached_index(cache: Path, root: Path, classes: list[str], mtimes: np.ndarray):
    try:
        with np.load(cache, allow_pickle=False) as saved:
            if (int(saved["version"]) != INDEX_VERSION or saved["classes"].tolist() != classes
                    or not np.array_equal(saved["mtimes"], mtimes)):
                return None
            return PathIndex(str(root), saved["buffer"], saved["offsets"]), saved["labels"]
    except (OSError, ValueError, KeyError):
        return None  # absent, unreadable or from another version: scan again


def save_cached_index(cache: Path, classes: list[str], mtimes: np.ndarray, paths: PathIndex,
                      labels: np.ndarray) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, prefix=cache.name, suffix=".tmp", delete=False) as f:
            np.savez(f, version=INDEX_VERSION, classes=np.array(classes), mtimes=mtimes, buffer=paths.buffer,
                     offsets=paths.offsets, labels=labels)
        os.replace(f.name, cache)
    except OSError as exc:  # a cache is a convenience: say so and go on
        print(f"warning: could not cache the file index at {cache} ({exc.strerror})", file=sys.stderr)


def scan_image_folder(root: Path, rescan: bool = False) -> tuple[list[str], PathIndex, np.ndarray]:
    """Class names (sorted folder names), the image paths and their class indices under ``root``;
    reused from the index cache while the class folders' names and mtimes are unchanged."""
    if not root.is_dir():
        raise UserInputError(f"{root}: folder not found; expected one sub-folder of images per class")
    classes, mtimes = class_folder_state(root)
    if not classes:
        raise UserInputError(f"{root}: has no class folders; put each class's images in {root}/<class>/")
    cache = index_cache_file(root)
    cached = None if rescan else load_cached_index(cache, root, classes, mtimes)
    if cached is not None:
        return classes, *cached
    relative, counts, empty, visited = [], [], [], set()
    for name in classes:
        files = class_images(root, name, visited)
        if not files:
            empty.append(name)
        relative.extend(files)
        counts.append(len(files))
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise UserInputError(f"{root}: class folder(s) with no images: {shown}; add images or remove the folder(s)")
    paths = PathIndex.from_relative(str(root), relative)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    save_cached_index(cache, classes, mtimes, paths, labels)
    return classes, paths, labels


def has_class_folders(root: Path) -> bool:
    return any(e.is_dir() for e in os.scandir(root))


def scan_flat_val(root: Path, classes: list[str], val_labels: str | None, data_dir: Path):
    """Paths and class indices of a flat ``val/`` (``ILSVRC2012_val_*.JPEG``), labelled from
    ``val_labels``, a labels file found next to the data, or wnids in the file names; and the
    layout name and labels file used."""
    names = sorted(e.name for e in os.scandir(root) if e.is_file() and _is_image(e.name))
    if not names:
        raise UserInputError(f"{root}: no images and no class folders; put each class's images in {root}/<class>/")
    source = Path(val_labels) if val_labels else find_labels_file(data_dir)
    if source is not None:
        labels, layout = read_val_labels(source), "flat_val_kaggle_csv" if source.suffix == ".csv" else "flat_val_devkit"
    elif all(wnid_from_name(n) for n in names):
        labels, layout = None, "flat_val_wnid_in_name"
    else:
        raise UserInputError(
            f"{root}: flat val/ and no labels for it: pass --val_labels (ILSVRC2012_devkit_t12.tar.gz, its "
            f"unpacked folder, or Kaggle's LOC_val_solution.csv), or put one in {data_dir} or up to 3 folders above")
    where = str(source) if source is not None else "the file names"
    wnids = label_val_files(names, labels, where)
    index = {c: k for k, c in enumerate(classes)}
    for name, wnid in zip(names, wnids):
        if wnid not in index:
            raise UserInputError(f"{where}: {name} is labelled {wnid}, a class not in train/")
    targets = np.array([index[w] for w in wnids], dtype=np.int64)
    return PathIndex.from_relative(str(root), names), targets, layout, (str(source) if source else None)


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
                   seed: int = 0, need_val: bool = True, val_labels: str | None = None, rescan: bool = False):
    """(train, val) datasets; ``val`` is None when not needed (``val/`` is then not looked at).
    ``train.layout`` says which layout and labels file were used (for the JSON records)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserInputError(f"--data_dir {data_dir}: folder not found; it must contain train/ and val/")
    train_tf, val_tf = build_train_transform(input_size, seed), build_val_transform(input_size)
    if dataset != "cifar100":
        import shards  # WebDataset tar shards, when --data_dir holds them instead of class folders

        if shards.holds_shards(root):
            return shards.build_shard_datasets(root, train_tf, val_tf, max_samples, need_val)
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


def default_num_workers(requested: int) -> int:
    """``requested`` capped at the CPUs this process may use."""
    return max(0, min(requested, len(os.sched_getaffinity(0))))


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


def build_loader(dataset: AugmentedImages, batch_size: int, train: bool, num_workers: int,
                 device: torch.device, seed: int = 0, sampler=None) -> DataLoader:
    """Shuffled, drop_last loader for training; ordered, complete loader for evaluation."""
    if not isinstance(dataset, AugmentedImages) and hasattr(dataset, "shard_loader"):  # shards.ShardImages
        return dataset.shard_loader(batch_size, train, default_num_workers(num_workers), device, sampler)
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
