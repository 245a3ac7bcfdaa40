"""The map-style readers: a class-folder tree (``train/<class>/*.JPEG``, a flat ``val/`` labelled
from ImageNet's label files) and in-memory arrays (CIFAR-100). Each item is decoded and augmented
by ``images.py``. The file index of a tree is cached next to it while its class folders are unchanged.

    classes, paths, targets = scan_image_folder(Path("./data/train"))
    train = FolderImages(paths, targets, classes, build_train_transform(224))
"""

import hashlib
import os
import random
import sys
import tempfile
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from errors import UserInputError
from imagenet_labels import find_labels_file, label_val_files, read_val_labels, wnid_from_name
from images import BadImageError, decode_rgb


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
