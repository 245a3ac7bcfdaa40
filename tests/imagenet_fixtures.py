"""Miniature ImageNet downloads with the real structure: 3 classes, a devkit meta.mat written
with scipy (ILSVRC2012_IDs that differ from the sorted-wnid index, plus a non-leaf synset),
the ground truth, Kaggle's CSV, the official tars with per-class inner tars."""

import io
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
from scipy.io import savemat

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted: class indices 0, 1, 2
ILSVRC_IDS = {1: "n01484850", 2: "n01440764", 3: "n01443537"}  # id 1 is not index 0, as in the real devkit
VAL_WNIDS = ["n01443537", "n01484850", "n01440764", "n01440764", "n01484850", "n01443537"]
VAL_NAMES = [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, len(VAL_WNIDS) + 1)]
TRAIN_PER_CLASS = 3


def jpeg_bytes(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    return cv2.imencode(".JPEG", image)[1].tobytes()


def write_meta_mat(path: Path, ilsvrc_ids: dict[int, str] = ILSVRC_IDS, per_class: int = TRAIN_PER_CLASS) -> None:
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, f"class {w}", "", 0, np.zeros((1, 0)), 0, per_class) for i, w in ilsvrc_ids.items()]
    rows.append((1001, "n00001740", "entity", "", 3, np.array([1, 2, 3]), 19, 0))  # not a class: has children
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for k, row in enumerate(rows):
        synsets[k, 0] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"synsets": synsets})


def ground_truth_text() -> str:
    by_wnid = {w: i for i, w in ILSVRC_IDS.items()}
    return "".join(f"{by_wnid[w]}\n" for w in VAL_WNIDS)


def write_devkit_dir(parent: Path) -> Path:
    data = parent / "ILSVRC2012_devkit_t12" / "data"
    write_meta_mat(data / "meta.mat")
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(ground_truth_text())
    return data.parent


def write_devkit_tar(parent: Path) -> Path:
    scratch = parent / "devkit-src"
    folder = write_devkit_dir(scratch)
    path = parent / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="ILSVRC2012_devkit_t12")
    shutil.rmtree(scratch)
    return path


def write_kaggle_csv(path: Path) -> Path:
    rows = [f"{n.removesuffix('.JPEG')},{w} 10 20 30 40 {w} 1 2 3 4" for n, w in zip(VAL_NAMES, VAL_WNIDS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return path


def train_files() -> dict[str, bytes]:
    """{"<wnid>/<wnid>_<k>.JPEG": content}"""
    return {f"{w}/{w}_{k}.JPEG": jpeg_bytes(10 * c + k) for c, w in enumerate(WNIDS) for k in range(TRAIN_PER_CLASS)}


def val_files() -> dict[str, bytes]:
    return {name: jpeg_bytes(100 + k) for k, name in enumerate(VAL_NAMES)}


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)


def write_flat_tree(root: Path, val_names=None) -> Path:
    """root/train/<wnid>/*.JPEG and a flat root/val/ (optionally under other file names)."""
    write_files(root / "train", train_files())
    contents = val_files()
    names = val_names or VAL_NAMES
    write_files(root / "val", {new: contents[old] for old, new in zip(VAL_NAMES, names)})
    return root


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_official_archives(source: Path) -> Path:
    """ILSVRC2012_img_train.tar (inner <wnid>.tar each), ILSVRC2012_img_val.tar and the devkit."""
    source.mkdir(parents=True, exist_ok=True)
    inner = {}
    for relative, content in train_files().items():
        wnid, name = relative.split("/")
        inner.setdefault(f"{wnid}.tar", {})[name] = content
    (source / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes({k: tar_bytes(v) for k, v in inner.items()}))
    (source / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val_files()))
    write_devkit_tar(source)
    return source
