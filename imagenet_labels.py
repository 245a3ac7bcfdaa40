"""ImageNet's validation labels as users hold them: the official devkit (tar.gz, or its
unpacked ``data/meta.mat`` + ``data/ILSVRC2012_validation_ground_truth.txt``), Kaggle's
``LOC_val_solution.csv``, or wnids in the file names (``ILSVRC2012_val_00000001_n01751748.JPEG``).
The one reader that ``preprocess.py`` (a flat ``val/`` at run time) and ``prepare_imagenet.py``
(conversion) share.

    source = find_labels_file(Path("./data"))              # or Path(args.val_labels)
    wnids = read_val_labels(source)                        # {"ILSVRC2012_val_00000001": "n01751748", ...}
"""

import csv
import io
import re
import tarfile
from pathlib import Path

from errors import UserInputError

DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
META_MAT = "meta.mat"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_CSV = "LOC_val_solution.csv"
SEARCH_LEVELS = 3  # Kaggle's CSV sits three folders above ILSVRC/Data/CLS-LOC
WNID = re.compile(r"n\d{8}")
WNID_IN_NAME = re.compile(r"_(n\d{8})$")


def val_file_stem(name: str) -> str:
    """``ILSVRC2012_val_00000001.JPEG`` -> ``ILSVRC2012_val_00000001``, the key of every mapping here."""
    return name.rsplit(".", 1)[0]


def official_val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}"


def wnid_from_name(name: str) -> str | None:
    match = WNID_IN_NAME.search(val_file_stem(name))
    return match.group(1) if match else None


def labels_file_in(folder: Path) -> Path | None:
    """The devkit (tar.gz or unpacked) or Kaggle CSV directly in ``folder``, if any."""
    for candidate in (folder / DEVKIT_TAR, folder / DEVKIT_DIR, folder / "data" / META_MAT, folder / KAGGLE_CSV):
        if candidate.exists():
            return candidate.parent.parent if candidate.name == META_MAT else candidate
    return None


def find_labels_file(data_dir: Path, levels: int = SEARCH_LEVELS) -> Path | None:
    """The first labels file in ``data_dir`` or up to ``levels`` folders above it."""
    folder = data_dir.resolve()
    for _ in range(levels + 1):
        found = labels_file_in(folder)
        if found is not None:
            return found
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def read_val_labels(path: Path) -> dict[str, str]:
    """{val file stem: wnid} from a devkit (tar.gz, folder, meta.mat or ground-truth file) or Kaggle CSV."""
    if not path.exists():
        raise UserInputError(f"--val_labels {path}: not found; give the devkit tar.gz, its folder, or LOC_val_solution.csv")
    if path.suffix.lower() == ".csv":
        return read_kaggle_csv(path)
    if path.name.endswith((".tar.gz", ".tgz")):
        return read_devkit_tar(path)
    if path.is_dir():
        data = path / "data" if (path / "data" / META_MAT).exists() else path
        return read_devkit_files(data / META_MAT, data / GROUND_TRUTH)
    if path.name in (META_MAT, GROUND_TRUTH):
        return read_devkit_files(path.parent / META_MAT, path.parent / GROUND_TRUTH)
    raise UserInputError(f"{path}: not a labels file this tool reads (devkit tar.gz or folder, {GROUND_TRUTH}, "
                         f"{META_MAT}, {KAGGLE_CSV})")


def read_kaggle_csv(path: Path) -> dict[str, str]:
    labels = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header != ["ImageId", "PredictionString"]:
            raise UserInputError(f"{path}: line 1: {','.join(header or [])!r} is not the header 'ImageId,PredictionString'")
        for number, row in enumerate(rows, start=2):
            first = row[1].split()[0] if len(row) == 2 and row[1].split() else ""
            if not row[0] or not WNID.fullmatch(first):
                raise UserInputError(f"{path}: line {number}: {','.join(row)!r} is not 'ImageId,<wnid> ...'")
            labels[row[0]] = first
    if not labels:
        raise UserInputError(f"{path}: no labels in it")
    return labels


def wnids_by_ilsvrc_id(meta, source: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid for the leaf synsets (num_children == 0) of a devkit meta.mat."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(meta, squeeze_me=True)["synsets"]
        leaves = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except Exception as exc:  # scipy raises several types for a file that is not a MATLAB struct array
        raise UserInputError(f"{source}: not a readable devkit meta.mat (synsets with ILSVRC2012_ID, WNID, "
                             f"num_children): {exc}") from None
    return leaves


def labels_from_ground_truth(lines: list[str], id_to_wnid: dict[int, str], source: str) -> dict[str, str]:
    """Line k of the ground truth (an ILSVRC2012_ID) labels ILSVRC2012_val_<k, 8 digits>."""
    labels = {}
    for number, text in enumerate(lines, start=1):
        value = text.strip()
        wnid = id_to_wnid.get(int(value)) if value.isdigit() else None
        if wnid is None:
            raise UserInputError(f"{source}: line {number}: {value!r} is not an ILSVRC2012_ID of a class in meta.mat")
        labels[official_val_name(number)] = wnid
    if not labels:
        raise UserInputError(f"{source}: no labels in it")
    return labels


def read_devkit_files(meta: Path, truth: Path) -> dict[str, str]:
    for needed in (meta, truth):
        if not needed.is_file():
            raise UserInputError(f"{needed}: not found; the devkit's data/ folder holds {META_MAT} and {GROUND_TRUTH}")
    lines = truth.read_text(errors="replace").splitlines()
    return labels_from_ground_truth(lines, wnids_by_ilsvrc_id(str(meta), str(meta)), str(truth))


def read_devkit_tar(path: Path) -> dict[str, str]:
    members = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in (META_MAT, GROUND_TRUTH) and "data" in Path(member.name).parts:
                    members[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserInputError(f"{path}: not a readable tar.gz ({exc})") from None
    for needed in (META_MAT, GROUND_TRUTH):
        if needed not in members:
            raise UserInputError(f"{path}: has no data/{needed}; is it {DEVKIT_TAR}?")
    id_to_wnid = wnids_by_ilsvrc_id(io.BytesIO(members[META_MAT]), f"{path}:data/{META_MAT}")
    lines = members[GROUND_TRUTH].decode(errors="replace").splitlines()
    return labels_from_ground_truth(lines, id_to_wnid, f"{path}:data/{GROUND_TRUTH}")


def label_val_files(names: list[str], labels: dict[str, str] | None, source: str) -> list[str]:
    """The wnid of each flat val/ file name, from ``labels`` or else from the name itself."""
    wnids = []
    for name in names:
        wnid = labels.get(val_file_stem(name)) if labels is not None else wnid_from_name(name)
        if wnid is None:
            raise UserInputError(f"{name}: val image with no label in {source}")
        wnids.append(wnid)
    return wnids
