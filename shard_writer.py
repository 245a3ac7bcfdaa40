"""Writing ImageNet as WebDataset shards in the layout ``shards.py`` reads (timm's
``imagenet-1k-wds``): ``imagenet1k-train-0000.tar ...``, ``imagenet1k-validation-00.tar ...``,
each sample ``<key>.jpg`` + ``<key>.cls`` (class index) + ``<key>.json`` ({"filename", "label"}),
and ``_info.json`` with the shard sizes, counts and class names. Used by
``prepare_imagenet.py SOURCE --out DIR --format wds``. Written with the standard library's
``tarfile`` (as webdataset's own TarWriter does), which keeps the training stack out of this step.

Images are listed first (file paths, or byte ranges inside the official tars: no unpacking),
shuffled with a seed, and written shard by shard; a shard is written under a temporary name and
renamed when complete, so a second run after a kill writes only the shards still missing.
"""

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from errors import UserInputError
from imagenet_labels import label_val_files
from shard_layout import INFO_FILES, PREFIX, SHARD_SIZE, count_samples, shard_files, shard_name

PLAN_FILE = ".wds_plan.json"  # what a second run must match (same images, seed and shard size)
INFO_FILE = INFO_FILES[0]
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class ImageList:
    """One split's images: ``names[i]`` (``<wnid>/<file name>``) and where its bytes are: the file
    ``paths[i]``, or ``sizes[i]`` bytes at ``offsets[i]`` inside the tar ``container``."""

    names: list[str] = field(default_factory=list)
    wnids: list[str] = field(default_factory=list)
    paths: list[str] | None = None
    container: str | None = None
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def read(self, i: int, handle) -> bytes:
        if self.paths is not None:
            with open(self.paths[i], "rb") as f:
                return f.read()
        return os.pread(handle, self.sizes[i], self.offsets[i])


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def list_class_folders(split_root: Path) -> ImageList:
    images = ImageList(paths=[])
    for wnid in sorted(e.name for e in os.scandir(split_root) if e.is_dir()):
        for name in sorted(e.name for e in os.scandir(split_root / wnid) if e.is_file() and is_image(e.name)):
            images.names.append(f"{wnid}/{name}")
            images.wnids.append(wnid)
            images.paths.append(str(split_root / wnid / name))
    return images


def list_flat_val(val_root: Path, labels: dict[str, str] | None, source: str) -> ImageList:
    names = sorted(e.name for e in os.scandir(val_root) if e.is_file() and is_image(e.name))
    wnids = label_val_files(names, labels, source)
    return ImageList([f"{w}/{n}" for w, n in zip(wnids, names)], list(wnids), [str(val_root / n) for n in names])


def list_train_archive(tar_path: Path) -> ImageList:
    """Byte ranges of every image inside the per-class inner tars: headers are read, images are not."""
    images = ImageList(container=str(tar_path))
    with tarfile.open(tar_path, "r:") as outer:
        for member in tqdm(outer, unit="class", desc="index train", dynamic_ncols=True):
            if not (member.isfile() and member.name.endswith(".tar")):
                continue
            wnid = Path(member.name).name.removesuffix(".tar")
            with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                for image in inner:
                    if image.isfile():
                        images.names.append(f"{wnid}/{Path(image.name).name}")
                        images.wnids.append(wnid)
                        images.offsets.append(member.offset_data + image.offset_data)
                        images.sizes.append(image.size)
    return images


def list_val_archive(tar_path: Path, labels: dict[str, str], source: str) -> ImageList:
    with tarfile.open(tar_path, "r:") as tar:
        members = [m for m in tar if m.isfile()]
    names = [Path(m.name).name for m in members]
    wnids = label_val_files(names, labels, source)
    return ImageList([f"{w}/{n}" for w, n in zip(wnids, names)], list(wnids), None, str(tar_path),
                     [m.offset_data for m in members], [m.size for m in members])


def sample_keys(names: list[str]) -> list[str]:
    """WebDataset keys: the file stem (no dots: the first dot starts the extension), prefixed
    with the class when stems repeat across classes."""
    stems = [re.sub(r"[.\s]", "_", n.split("/", 1)[1].rsplit(".", 1)[0]) for n in names]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{n.split('/', 1)[0]}_{s}" for n, s in zip(names, stems)]


def add_sample(tar: tarfile.TarFile, key: str, files: dict[str, bytes]) -> None:
    """One sample as WebDataset stores it: ``<key>.<extension>`` members, one after another."""
    for extension, content in files.items():
        info = tarfile.TarInfo(f"{key}.{extension}")
        info.size, info.mode, info.mtime = len(content), 0o444, 0  # mtime 0: a rerun writes the same bytes
        tar.addfile(info, io.BytesIO(content))


def check_plan(out: Path, plan: dict) -> None:
    """A resumed run must continue the same job (same images, seed and shard size)."""
    path = out / PLAN_FILE
    if path.is_file():
        if json.loads(path.read_text()) != plan:
            raise UserInputError(f"{out}: holds shards of another job (other source, --seed or --shard_size); "
                                 "use another --out or empty it")
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, path)


def write_split(images: ImageList, split: str, out: Path, classes: dict[str, int], seed: int,
                shard_size: int) -> tuple[list[str], list[int]]:
    """The split's shards in a seeded order; shards already complete are kept. Returns (names, sizes)."""
    order = np.random.default_rng(seed).permutation(len(images.names))
    keys = sample_keys(images.names)
    count = -(-len(order) // shard_size)
    names = [shard_name(split, k, count) for k in range(count)]
    sizes = [len(order[k * shard_size:(k + 1) * shard_size]) for k in range(count)]
    handle = os.open(images.container, os.O_RDONLY) if images.container else None
    try:
        with tqdm(total=len(order), unit="img", desc=split, dynamic_ncols=True) as bar:
            for k, name in enumerate(names):
                final = out / name
                if not final.is_file():
                    tmp = out / (name + ".partial")
                    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                        for i in order[k * shard_size:(k + 1) * shard_size]:
                            label = classes[images.wnids[i]]
                            meta = json.dumps({"filename": images.names[i], "label": label}).encode()
                            add_sample(tar, keys[i], {"cls": str(label).encode(), "jpg": images.read(i, handle),
                                                      "json": meta})
                    os.replace(tmp, final)
                bar.update(sizes[k])
    finally:
        if handle is not None:
            os.close(handle)
    return names, sizes


def write_shards(train: ImageList, val: ImageList, out: Path, seed: int, shard_size: int = SHARD_SIZE) -> dict:
    """Both splits as shards plus ``_info.json``; returns the counts ``prepare_imagenet`` checks."""
    classes = sorted(set(train.wnids))
    if not classes:
        raise UserInputError(f"{out}: no training images found in the source; nothing to write")
    index = {w: k for k, w in enumerate(classes)}
    unknown = sorted(set(val.wnids) - set(classes))
    if unknown:
        raise UserInputError(f"val images of classes not in train: {', '.join(unknown[:5])}; check the source")
    out.mkdir(parents=True, exist_ok=True)
    check_plan(out, {"seed": seed, "shard_size": shard_size, "train": len(train.names), "val": len(val.names),
                     "classes": classes})
    splits = {}
    for split, images in (("train", train), ("validation", val)):
        if images.names:
            names, sizes = write_split(images, split, out, index, seed, shard_size)
            splits[split] = {"name": split, "num_samples": sum(sizes), "filenames": names, "shard_lengths": sizes}
    info = {"name": PREFIX, "num_classes": len(classes), "classes": classes, "seed": seed, "shard_size": shard_size,
            "splits": splits}
    tmp = out / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, out / INFO_FILE)
    return {**shard_counts(out), "train_without_val": sorted(set(classes) - set(val.wnids))}


def shard_counts(out: Path) -> dict:
    """Counts as ``prepare_imagenet.count_tree`` gives them, read back from the shards' tar headers."""
    info = json.loads((out / INFO_FILE).read_text())
    files = shard_files(out)
    train = sum(count_samples(p) for p in files.get("train", []))
    val = sum(count_samples(p) for p in files.get("validation", []))
    listed = {s: info["splits"].get(s, {}).get("num_samples", 0) for s in ("train", "validation")}
    if (train, val) != (listed["train"], listed["validation"]):
        raise UserInputError(f"{out}: the shards hold {train:,} train and {val:,} val images but {INFO_FILE} "
                             f"lists {listed['train']:,} and {listed['validation']:,}; empty {out} and run again")
    return {"classes": info["num_classes"], "train": train, "val": val, "val_only": [], "train_without_val": []}
