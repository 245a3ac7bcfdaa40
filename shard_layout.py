"""The names and metadata of ImageNet WebDataset shards, shared by the reader (``shards.py``)
and the writer (``shard_writer.py``): ``<prefix>-train-0000.tar``, ``<prefix>-validation-00.tar``
(timm's imagenet-1k-wds names) and ``_info.json``. Standard library only, so that writing shards
does not load the training stack.
"""

import json
import re
import tarfile
from pathlib import Path

from errors import UserInputError

PREFIX = "imagenet1k"
SHARD_SIZE = 1250  # images per shard: 1,281,167 train images make 1,025 shards of ~140 MB
SHARD_NAME = re.compile(r"(?P<prefix>.+)-(?P<split>train|validation)-(?P<number>\d+)\.tar")
INFO_FILES = ("_info.json", "info.json")  # the names timm's WebDataset reader looks for


def shard_name(split: str, index: int, count: int) -> str:
    """timm's names: four digits for train, two for validation (more when there are more shards)."""
    digits = max(4 if split == "train" else 2, len(str(count - 1)))
    return f"{PREFIX}-{split}-{index:0{digits}d}.tar"


def shard_files(root: Path) -> dict[str, list[Path]]:
    """{"train": [...], "validation": [...]}: the shard files of ``root`` by split, in number order."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for entry in root.iterdir():
        match = SHARD_NAME.fullmatch(entry.name)
        if match and entry.is_file():
            found.setdefault(match["split"], []).append((int(match["number"]), entry))
    return {split: [p for _, p in sorted(files)] for split, files in found.items()}


def read_info(root: Path) -> dict:
    """The shards' metadata (``_info.json`` or ``info.json``), or {} when there is none."""
    for name in INFO_FILES:
        path = root / name
        if path.is_file():
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserInputError(f"{path}: not readable JSON ({exc}); fix or remove it") from None
            if not isinstance(info, dict):
                raise UserInputError(f"{path}: not a JSON object; fix or remove it")
            return info
    return {}


def count_samples(path: Path) -> int:
    """Samples in one shard from its tar headers alone (no image is read): distinct keys."""
    keys = set()
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.isfile():
                    keys.add(member.name.split(".", 1)[0])
    except (OSError, tarfile.TarError) as exc:
        raise UserInputError(f"{path}: not a readable tar shard ({exc}); re-download or re-write it") from None
    return len(keys)


def holds_shards(root: Path) -> bool:
    """True when ``root`` holds shards (by their names); an empty ``root`` is an error naming both layouts."""
    if not any(root.iterdir()):
        raise UserInputError(f"--data_dir {root}: the folder is empty; put train/ and val/ class folders there, "
                             "or WebDataset shards named like imagenet1k-train-0000.tar")
    return bool(shard_files(root))
