"""Turn the ImageNet-1K downloads into the class-folder tree the suite reads, once:
``DATA_DIR/train/<wnid>/`` and ``DATA_DIR/val/<wnid>/``.

SOURCE is a folder holding either the official archives (``ILSVRC2012_img_train.tar`` with its
per-class inner tars, ``ILSVRC2012_img_val.tar``, ``ILSVRC2012_devkit_t12.tar.gz``), streamed
with no second copy on disk, or an unpacked tree with a flat ``val/`` (official, or Kaggle's
``ILSVRC/Data/CLS-LOC`` with ``LOC_val_solution.csv``), linked without moving the originals.

    uv run python prepare_imagenet.py ~/Downloads/imagenet --out ./data
    uv run python prepare_imagenet.py ~/kaggle/imagenet-object-localization-challenge --out ./data --symlink

A second run after a kill finishes the job: finished class folders are kept, unfinished ones
are rebuilt in ``DATA_DIR/.partial/`` and renamed into place only when complete.

``--format wds`` writes WebDataset shards instead (timm's imagenet-1k-wds layout; see
``shard_writer.py`` and docs/shards.md), from any of these sources or a class-folder tree:

    uv run python prepare_imagenet.py ~/Downloads/imagenet --out ./shards --format wds
"""

import argparse
import os
import shutil
import sys
import tarfile
from pathlib import Path

from tqdm import tqdm

from cli import DefaultsOnceFormatter, OneLineErrorParser
from errors import EXIT_USAGE, UserInputError
from imagenet_labels import find_labels_file, label_val_files, read_val_labels
from shard_layout import SHARD_SIZE

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
KAGGLE_TREE = Path("ILSVRC") / "Data" / "CLS-LOC"
PARTIAL = ".partial"  # under DATA_DIR: work in progress, never read as data
FULL_SET = {"classes": 1000, "train": 1_281_167, "val": 50_000}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0], add_help=add_help, allow_abbrev=False,
                                formatter_class=DefaultsOnceFormatter)
    parser.add_argument("source", metavar="SOURCE",
                        help="folder with the official archives, or an unpacked tree (train/ + flat val/, or Kaggle's)")
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="where train/<wnid>/ and val/<wnid>/ go")
    parser.add_argument("--val_labels", default=None, metavar="PATH",
                        help="labels of the flat val/ (devkit tar.gz or folder, LOC_val_solution.csv); "
                             "default: searched in SOURCE and up to 3 folders above val/")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--symlink", action="store_true", help="unpacked tree: symbolic links (across file systems)")
    how.add_argument("--copy", action="store_true", help="unpacked tree: copy the files")
    shards = parser.add_argument_group("WebDataset shards")
    shards.add_argument("--format", choices=("tree", "wds"), default="tree",
                        help="tree: class folders; wds: tar shards (imagenet1k-train-NNNN.tar ...) with _info.json")
    shards.add_argument("--seed", type=int, default=0, help="wds: the shuffle of images across shards")
    shards.add_argument("--shard_size", type=int, default=SHARD_SIZE, help="wds: images per shard")
    return parser


def place(src: Path, dst: Path, mode: str) -> None:
    """``dst`` as a hard link, symlink or copy of ``src``, under a temp name first."""
    tmp = dst.with_name(dst.name + PARTIAL)
    tmp.unlink(missing_ok=True)
    if mode == "copy":
        shutil.copy2(src, tmp)
    elif mode == "symlink":
        os.symlink(src.resolve(), tmp)
    else:
        os.link(src, tmp)
    os.replace(tmp, dst)


def fresh_partial(out: Path, split: str, name: str) -> Path:
    folder = out / PARTIAL / split / name
    shutil.rmtree(folder, ignore_errors=True)  # what a killed run left: redone from scratch
    folder.mkdir(parents=True)
    return folder


def train_from_archive(tar_path: Path, out: Path) -> None:
    """Stream the outer tar and each inner per-class tar straight into class folders."""
    with tarfile.open(tar_path, "r|") as outer, \
            tqdm(total=tar_path.stat().st_size, unit="B", unit_scale=True, desc="train", dynamic_ncols=True) as bar:
        for member in outer:
            wnid = Path(member.name).name.removesuffix(".tar")
            if member.isfile() and not (out / "train" / wnid).is_dir():
                folder = fresh_partial(out, "train", wnid)
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                    for image in inner:
                        if image.isfile():
                            with inner.extractfile(image) as src, open(folder / Path(image.name).name, "wb") as dst:
                                shutil.copyfileobj(src, dst)
                (out / "train").mkdir(exist_ok=True)
                os.replace(folder, out / "train" / wnid)
            bar.update(member.size)


def val_from_archive(tar_path: Path, out: Path, labels: dict[str, str], source: str) -> None:
    """Stream the flat val tar into ``val/<wnid>/``, each file under a temp name until complete."""
    with tarfile.open(tar_path, "r|") as tar:
        for member in tqdm(tar, unit="file", desc="val", dynamic_ncols=True):
            if not member.isfile():
                continue
            name = Path(member.name).name
            final = out / "val" / label_val_files([name], labels, source)[0] / name
            if final.exists():
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(name + PARTIAL)
            with tar.extractfile(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, final)


def class_folders_from_tree(tree: Path, out: Path, split: str, mode: str) -> None:
    """Each class folder of ``tree/split`` built in ``.partial/`` and renamed into place when complete."""
    classes = sorted(e.name for e in os.scandir(tree / split) if e.is_dir())
    for wnid in tqdm(classes, unit="class", desc=split, dynamic_ncols=True):
        if (out / split / wnid).is_dir():
            continue
        folder = fresh_partial(out, split, wnid)
        for entry in sorted(os.scandir(tree / split / wnid), key=lambda e: e.name):
            if entry.is_file():
                place(Path(entry.path), folder / entry.name, mode)
        (out / split).mkdir(parents=True, exist_ok=True)
        os.replace(folder, out / split / wnid)


def val_from_tree(val: Path, out: Path, mode: str, labels: dict[str, str] | None, source: str) -> None:
    names = sorted(e.name for e in os.scandir(val) if e.is_file())
    for name, wnid in zip(tqdm(names, unit="file", desc="val", dynamic_ncols=True),
                          label_val_files(names, labels, source)):
        final = out / "val" / wnid / name
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            place(val / name, final, mode)


def labels_for(val_labels: str | None, near: Path) -> tuple[dict[str, str] | None, str]:
    """The val labels and where they came from: --val_labels, a file found near, or the names."""
    source = Path(val_labels) if val_labels else find_labels_file(near)
    if source is None:
        return None, "the file names"
    return read_val_labels(source), str(source)


def unpacked_tree(source: Path) -> Path | None:
    for root in (source, source / KAGGLE_TREE):
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root
    return None


def count_tree(out: Path) -> dict:
    def per_class(split):
        folder = out / split
        if not folder.is_dir():
            return {}
        return {e.name: sum(1 for f in os.scandir(e.path) if f.is_file()) for e in os.scandir(folder) if e.is_dir()}

    train, val = per_class("train"), per_class("val")
    return {"classes": len(train), "train": sum(train.values()), "val": sum(val.values()),
            "val_only": sorted(set(val) - set(train)), "train_without_val": sorted(set(train) - set(val))}


def differences(counts: dict) -> list[str]:
    """How the tree differs from the full ImageNet-1K; empty when it is the full set."""
    lines = [f"{key}: {counts[key]:,} (the full set has {FULL_SET[key]:,})"
             for key in FULL_SET if counts[key] != FULL_SET[key]]
    if counts["val_only"]:
        lines.append(f"val classes not in train/: {', '.join(counts['val_only'][:5])}")
    if counts["train_without_val"]:
        lines.append(f"train classes with no val images: {', '.join(counts['train_without_val'][:5])}")
    return lines


def prepare(source: Path, out: Path, mode: str = "link", val_labels: str | None = None) -> dict:
    """Build ``out/train`` and ``out/val`` from ``source``; returns the counts of the result."""
    if not source.is_dir():
        raise UserInputError(f"{source}: folder not found; give the folder holding the downloads")
    out.mkdir(parents=True, exist_ok=True)
    tree = unpacked_tree(source)
    if (source / TRAIN_TAR).is_file() and (source / VAL_TAR).is_file():
        labels, where = labels_for(val_labels, source)
        if labels is None:
            raise UserInputError(f"{source}: no ILSVRC2012_devkit_t12.tar.gz next to {VAL_TAR}; add it or pass --val_labels")
        train_from_archive(source / TRAIN_TAR, out)
        val_from_archive(source / VAL_TAR, out, labels, where)
    elif tree is not None:
        class_folders_from_tree(tree, out, "train", mode)
        if any(e.is_dir() for e in os.scandir(tree / "val")):
            class_folders_from_tree(tree, out, "val", mode)
        else:
            labels, where = labels_for(val_labels, tree)
            val_from_tree(tree / "val", out, mode, labels, where)
    else:
        raise UserInputError(f"{source}: holds neither {TRAIN_TAR} + {VAL_TAR} nor an unpacked train/ + val/ "
                             f"(or Kaggle's {KAGGLE_TREE}/)")
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    return count_tree(out)


def list_images(source: Path, val_labels: str | None):
    """(train, val) ``shard_writer.ImageList`` of any source ``prepare`` reads, for ``--format wds``."""
    from shard_writer import list_class_folders, list_flat_val, list_train_archive, list_val_archive

    if not source.is_dir():
        raise UserInputError(f"{source}: folder not found; give the folder holding the downloads")
    if (source / TRAIN_TAR).is_file() and (source / VAL_TAR).is_file():
        labels, where = labels_for(val_labels, source)
        if labels is None:
            raise UserInputError(f"{source}: no ILSVRC2012_devkit_t12.tar.gz next to {VAL_TAR}; add it or pass --val_labels")
        return list_train_archive(source / TRAIN_TAR), list_val_archive(source / VAL_TAR, labels, where)
    tree = unpacked_tree(source)
    if tree is None:
        raise UserInputError(f"{source}: holds neither {TRAIN_TAR} + {VAL_TAR} nor train/ + val/ "
                             f"(class folders, a flat val/, or Kaggle's {KAGGLE_TREE}/)")
    if any(e.is_dir() for e in os.scandir(tree / "val")):
        return list_class_folders(tree / "train"), list_class_folders(tree / "val")
    labels, where = labels_for(val_labels, tree)
    return list_class_folders(tree / "train"), list_flat_val(tree / "val", labels, where)


def prepare_shards(source: Path, out: Path, val_labels: str | None, seed: int, shard_size: int) -> dict:
    from shard_writer import write_shards

    train, val = list_images(source, val_labels)
    return write_shards(train, val, out, seed, shard_size)


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.shard_size < 1:
        parser.error(f"--shard_size {args.shard_size} must be at least 1")
    mode = "symlink" if args.symlink else "copy" if args.copy else "link"
    try:
        if args.format == "wds":
            counts = prepare_shards(Path(args.source), Path(args.out), args.val_labels, args.seed, args.shard_size)
        else:
            counts = prepare(Path(args.source), Path(args.out), mode, args.val_labels)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        hint = "; across file systems use --symlink or --copy" if exc.errno == 18 else ""
        print(f"error: {exc.filename}: {exc.strerror}{hint}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.out}: {counts['train']:,} train and {counts['val']:,} val images in {counts['classes']} classes")
    for line in differences(counts):
        print(f"  differs from ImageNet-1K: {line}")
    if not differences(counts):
        print("  matches ImageNet-1K (1,281,167 train, 50,000 val, 1000 classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
