"""ImageNet as WebDataset tar shards (the layout of ``timm/imagenet-1k-wds`` and of
``prepare_imagenet.py --format wds``): ``<name>-train-0000.tar ...`` and
``<name>-validation-00.tar ...`` in one folder, each sample a ``.jpg`` with a ``.cls`` class
index, with an optional ``_info.json`` giving the shard sizes and the class names.

Read with ``webdataset``; decoded and augmented by the same OpenCV + albumentations code as a
class-folder tree (``images.decode_rgb_bytes`` and the same transforms). Each rank, then each
DataLoader worker, reads its own shards through a shuffle buffer; every rank takes the same
number of steps per epoch, counted from the shard sizes.

    train_ds, val_ds = build_datasets("imagenet1k", "/data/imagenet-1k-wds", input_size=224)
    loader = build_loader(train_ds, 256, True, 8, device, sampler=EpochSampler(len(train_ds), 0, True, rank, world))
"""

import copy
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from errors import UserInputError
from images import BadImageError, decode_rgb_bytes
from shard_layout import SHARD_NAME, count_samples, read_info, shard_files

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SHUFFLE_BUFFER = 1000  # samples per worker, undecoded (~110 KB each for ImageNet's JPEGs)
SHUFFLE_INITIAL = 200
SAMPLE_ID_STRIDE = 1 << 24  # a sample's id: shard index * stride + its position in the shard
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Shards:
    """One split's shard files and their sample counts, in shard-number order."""

    paths: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.sizes)


def split_shards(files: list[Path], split_info: dict | None) -> Shards:
    """The split's shards with their sizes: from the metadata when it lists them, else counted."""
    sizes = {}
    if split_info:
        sizes = dict(zip(split_info.get("filenames", []), split_info.get("shard_lengths", [])))
    if files and all(f.name in sizes for f in files):
        counts = [int(sizes[f.name]) for f in files]
    else:
        counts = [count_samples(f) for f in files]
    if split_info:
        missing = [n for n in split_info.get("filenames", []) if n not in {f.name for f in files}]
        if missing:
            raise UserInputError(f"{files[0].parent / missing[0]}: listed in the shards' metadata but missing "
                                 f"({len(missing)} missing); download it or remove it from _info.json")
    return Shards(tuple(str(f) for f in files), tuple(counts))


def class_names(info: dict, prefix: str) -> list[str]:
    """Class names from the metadata ("classes": wnids in .cls order), else numbers ("0", "1", ...)."""
    names = info.get("classes")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    count = info.get("num_classes") or (IMAGENET_CLASSES if prefix.startswith("imagenet1k") else None)
    if not count:
        raise UserInputError(f"{prefix}-*.tar: no class list in _info.json; add \"classes\": [...] "
                             "(names in .cls order) or \"num_classes\"")
    print(f"note: no class names in the shards' metadata: classes are the .cls numbers 0..{count - 1}",
          file=sys.stderr)
    return [str(k) for k in range(int(count))]


def build_shard_datasets(root: Path, train_tf, val_tf, max_samples: int | None, need_val: bool):
    """(train, val) ``ShardImages`` from the shards in ``root``; ``val`` None when not needed."""
    files = shard_files(root)
    if "train" not in files:
        found = ", ".join(p.name for p in files.get("validation", [])[:2])
        raise UserInputError(f"--data_dir {root}: no <name>-train-NNNN.tar shards (found {found} ...); "
                             "add the train shards")
    prefix = SHARD_NAME.fullmatch(files["train"][0].name)["prefix"]
    info = read_info(root)
    splits = info.get("splits", {})
    classes = class_names(info, prefix)
    train = ShardImages(split_shards(files["train"], splits.get("train")), classes, train_tf, max_samples)
    val = None
    if need_val:
        if "validation" not in files:
            raise UserInputError(f"--data_dir {root}: no {prefix}-validation-NN.tar shards; training and "
                                 "--lr_advanced read them: add them")
        val = ShardImages(split_shards(files["validation"], splits.get("validation")), classes, val_tf,
                          max_samples)
    train.layout = {"data_layout": "wds_shards", "val_labels_file": None}
    return train, val


# ----------------------------------------------------------------- who reads what


def rank_shards(count: int, rank: int, world_size: int, order_seed: int | None) -> list[int]:
    """This rank's shard indices: a seeded order (same on every rank) dealt out by rank; a rank
    left without one (fewer shards than ranks) reads shard ``rank % count`` of that order."""
    order = list(range(count))
    if order_seed is not None:
        random.Random(order_seed).shuffle(order)
    mine = order[rank::world_size]
    return mine if mine else [order[rank % count]]


def share_out(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders first); zero weight gets zero."""
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def batches_skipped(counts: list[int], skip: int) -> list[int]:
    """How many of each worker's batches fall among the loader's first ``skip`` batches: the
    DataLoader takes batches from its workers in turn, passing over those that are done."""
    skipped = [0] * len(counts)
    while skip > 0:
        for w, count in enumerate(counts):
            if skip > 0 and skipped[w] < count:
                skipped[w] += 1
                skip -= 1
        if all(s == c for s, c in zip(skipped, counts)):
            break
    return skipped


# ------------------------------------------------------------------- the dataset


class ShardImages(IterableDataset):
    """Items ``(uint8 HWC tensor, label, bad_sample)`` as ``image_folder.AugmentedImages`` gives:
    ``bad_sample`` is the id of the sample's own image when it could not be decoded (the next
    readable one took its place), else -1, so each bad image counts once."""

    def __init__(self, shards: Shards, classes: list[str], transform, max_samples: int | None = None):
        self.shards, self.classes, self.transform = shards, list(classes), transform
        self.epoch_images = min(shards.total, max_samples or shards.total)
        # Set by shard_loader / begin_pass; the copies in workers read them.
        self.batch_size, self.train, self.schedule = 1, False, None
        self.epoch, self.start, self.workers = 0, 0, 0

    def __len__(self) -> int:
        """All images of the split (the epoch's images before a loader is made), else this rank's
        images for the current pass."""
        if self.schedule is None:
            return self.epoch_images
        if self.train:  # less what a resumed epoch skips
            return sum(self.worker_quotas()) * self.batch_size - self.schedule.start
        return sum(self.worker_quotas())

    # -- plan of a pass (pure given the schedule; computed alike in the main process and the workers)

    def _rank(self) -> tuple[int, int, int, bool]:
        s = self.schedule
        return s.rank, s.world_size, s.seed, s.shuffle

    def my_shards(self) -> list[int]:
        rank, world, seed, shuffle = self._rank()
        order_seed = (seed * 1_000_003 + self.epoch) if shuffle else None
        if not self.train:  # evaluation: every image once, ranks may differ by a shard
            return list(range(len(self.shards.paths)))[rank::world]
        return rank_shards(len(self.shards.paths), rank, world, order_seed)

    def worker_shards(self) -> list[list[int]]:
        mine, workers = self.my_shards(), max(1, self.workers)
        return [mine[w::workers] for w in range(workers)]

    def worker_quotas(self) -> list[int]:
        """Per worker: batches (training) or images (evaluation) of this pass."""
        sizes = [[self.shards.sizes[i] for i in part] for part in self.worker_shards()]
        if self.train:
            _, world, _, _ = self._rank()
            steps = self.epoch_images // world // self.batch_size  # the same on every rank
            return share_out(steps, [sum(s) or 0 for s in sizes])
        rank_images = sum(sum(s) for s in sizes)
        limit = min(rank_images, -(-self.epoch_images * rank_images // max(1, self.shards.total)))
        return share_out(limit, [sum(s) for s in sizes])

    def begin_pass(self, schedule) -> None:
        self.schedule = schedule
        self.epoch, self.start = schedule.epoch, schedule.start
        if getattr(schedule, "advance_each_pass", False):
            schedule.set_epoch(schedule.epoch + 1)

    # -- reading

    def _samples(self, shard: int):
        """(sample, id) of one shard in order; a truncated or unreadable shard ends with one warning
        line naming it and what was read before it."""
        path = self.shards.paths[shard]
        failure: list[Exception] = []

        def stop(exc: Exception) -> bool:
            failure.append(exc)
            return False

        read, last = 0, None
        for sample in wds.tarfile_samples([{"url": path}], handler=stop):
            if failure:  # the part of a sample read before the failure
                break
            yield sample, shard * SAMPLE_ID_STRIDE + read
            read, last = read + 1, sample.get("__key__")
        expected = self.shards.sizes[shard]
        if failure or read < expected:
            why = f"{type(failure[0]).__name__}: {str(failure[0]).split(' @ ')[0]}" if failure else "ends early"
            after = f"after {read} of {expected} samples" + (f" (last: {last})" if last else "")
            print(f"warning: {path}: truncated or unreadable {after}; {why}; the rest of it is skipped",
                  file=sys.stderr, flush=True)

    def _stream(self, shard_ids: list[int], repeat: bool, rng: random.Random | None):
        """The worker's samples: its shards in turn (again and again when ``repeat``), each pass
        through a shuffle buffer of its own when ``rng`` is given (so a pass holds each image once)."""
        while True:
            produced = 0
            one_pass = (item for shard in shard_ids for item in self._samples(shard))
            if rng is not None:
                one_pass = wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_INITIAL, rng=rng)(one_pass)
            for item in one_pass:
                produced += 1
                yield item
            if not repeat:
                return
            if produced == 0:
                names = ", ".join(Path(self.shards.paths[s]).name for s in shard_ids[:3])
                raise UserInputError(f"no readable sample in {names}: re-download or re-write the shards")

    def _decoded(self, sample: dict):
        image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        name = f"{Path(sample.get('__url__', '?')).name}:{sample.get('__key__')}"
        if image is None or "cls" not in sample:
            raise BadImageError(f"{name}: no image or no .cls in the sample")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise BadImageError(f"{name}: .cls is not a class number") from None
        if not 0 <= label < len(self.classes):
            raise BadImageError(f"{name}: class {label} outside 0..{len(self.classes) - 1}")
        return decode_rgb_bytes(np.frombuffer(image, dtype=np.uint8), name), label

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rank, _, seed, shuffle = self._rank()
        quotas, parts = self.worker_quotas(), self.worker_shards()
        per_item = self.batch_size if self.train else 1
        skip = batches_skipped(quotas, self.start // self.batch_size)[worker] if self.train else 0
        wanted = (quotas[worker] - skip) * per_item
        if wanted <= 0:
            return
        run_seed = hash((seed, self.epoch, rank, worker)) % 2**32
        stream = self._stream(parts[worker], self.train, random.Random(run_seed) if self.train and shuffle else None)
        taken = 0
        for _ in range(skip * per_item):  # a resumed epoch: the samples already trained on, undecoded
            next(stream)
            taken += 1
        warned: set[int] = set()
        given, bad = 0, -1
        for sample, sample_id in stream:
            taken += 1
            if self.train:  # seeded by the place in the stream: a resumed epoch augments alike
                self.transform.set_random_state(np.random.default_rng((run_seed, taken)),
                                                random.Random(run_seed * 1_000_003 + taken))
            try:
                image, label = self._decoded(sample)
            except BadImageError as exc:
                if bad < 0:
                    bad = sample_id
                if sample_id not in warned:
                    warned.add(sample_id)
                    print(f"warning: skipping {exc}", file=sys.stderr, flush=True)
                continue
            out = self.transform(image=image)["image"]
            yield torch.from_numpy(np.ascontiguousarray(out)), label, bad
            given, bad = given + 1, -1
            if given == wanted:
                return

    # -- the loader

    def shard_loader(self, batch_size: int, train: bool, workers: int, device: torch.device,
                     schedule=None) -> "ShardLoader":
        part = copy.copy(self)
        part.batch_size, part.train, part.workers = batch_size, train, workers
        part.schedule = schedule or _Schedule(shuffle=train)
        if train and part.epoch_images // part.schedule.world_size < batch_size:
            per_process = " per process" if part.schedule.world_size > 1 else ""
            raise UserInputError(
                f"--batch_size {batch_size} is larger than the {part.epoch_images // part.schedule.world_size} "
                f"training images{per_process} in the shards (after --max_samples); lower --batch_size")
        return ShardLoader(part, batch_size=batch_size, drop_last=train, num_workers=workers,
                           pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


@dataclass
class _Schedule:
    """What a loader made without an ``EpochSampler`` reads: rank 0 of 1, epoch 0."""

    shuffle: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    start: int = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start


class ShardLoader(DataLoader):
    """A DataLoader whose every pass first takes the epoch (and resume point) from the schedule
    (the ``EpochSampler`` the workflows hold), so that workers, started per pass, read it."""

    def __iter__(self):
        self.dataset.begin_pass(self.dataset.schedule)
        return super().__iter__()

    def __len__(self) -> int:
        if self.dataset.train:
            return len(self.dataset) // self.batch_size
        return sum(-(-q // self.batch_size) for q in self.dataset.worker_quotas())
