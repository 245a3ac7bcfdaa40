"""Real image sets for the suggestion study, cut from the photographs that scikit-image and
scikit-learn ship, one class per photograph:

- ``photo-patches-v1``: grey 32 px patches of ten photographs (brick, grass, gravel, the moon,
  coins, a cat, ...), 150 train and 40 val per class;
- ``colour-patches-v1``: colour 64 px patches of eight colour photographs (a Chinese temple, a
  flower, a rocket, a retina, a stained tissue, ...), 120 train and 40 val per class;
- ``scan-patches-v1``: grey 32 px patches of eight images none of the above uses (cells under a
  microscope, a clock, two scanned pages, a retina's microaneurysms, an MRI slice, two elevation
  maps), 150 train and 40 val per class;
- ``scene-patches-v1``: colour 64 px patches of five images none of the first two uses (a
  motorcycle, Grace Hopper, a product photo, two elevation maps in a terrain colour map), 120
  train and 40 val per class.

Training patches come from the left 70 % of each photograph and validation patches from the
right 30 %, so validation measures how well a model recognises regions it never saw. Each patch
has a random size, position, brightness and contrast, so neither grey level nor scale gives the
class away.

    root = ensure_patches(GREY)       # LR_FINDER_CACHE/photo-patches-v1/{train,val}/<photo>/*.png
    root = ensure_patches(SCANS)      # LR_FINDER_CACHE/scan-patches-v1/...
"""

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo_data import ensure_cached_folder  # noqa: E402

TRAIN_SHARE = 0.7  # of each photograph's width


@dataclass(frozen=True)
class PatchSet:
    version: str
    photos: tuple
    side: int
    train_per_class: int
    val_per_class: int
    colour: bool


GREY = PatchSet("photo-patches-v1", ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
                                     "hubble_deep_field", "moon"), 32, 150, 40, colour=False)
COLOUR = PatchSet("colour-patches-v1", ("china", "flower", "rocket", "retina", "immunohistochemistry", "astronaut",
                                        "coffee", "hubble_deep_field"), 64, 120, 40, colour=True)
SCANS = PatchSet("scan-patches-v1", ("cell", "clock", "page", "text", "microaneurysms", "mpl:s1045.ima.gz",
                                     "mpl:jacksboro_fault_dem.npz", "mpl:topobathy.npz"), 32, 150, 40, colour=False)
SCENES = PatchSet("scene-patches-v1", ("stereo_motorcycle", "mpl:grace_hopper.jpg", "mpl:Minduka_Present_Blue_Pack.png",
                                       "mpl:jacksboro_fault_dem.npz", "mpl:topobathy.npz"), 64, 120, 40, colour=True)
PATCH_SETS = {"patches": GREY, "colour": COLOUR, "scans": SCANS, "scenes": SCENES}  # by the study's data names


def class_name(name: str) -> str:
    """The class folder of an image: its name without the source prefix and the extension."""
    return name.removeprefix("mpl:").split(".")[0]


def to_uint8(values: np.ndarray) -> np.ndarray:
    """A measurement (elevation, MRI intensity) scaled onto 0 to 255 between its 1st and 99th percentiles."""
    low, high = np.percentile(values, (1, 99))
    return np.clip((values.astype(np.float64) - low) / max(high - low, 1e-9) * 255, 0, 255).astype(np.uint8)


def matplotlib_sample(name: str, colour: bool) -> np.ndarray:
    """One of matplotlib's sample files: a photograph, an MRI slice or an elevation map (shown in
    the terrain colour map when ``colour``)."""
    import gzip

    import matplotlib
    from matplotlib import cbook

    path = cbook.get_sample_data(name, asfileobj=False)
    if name.endswith((".jpg", ".png")):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"could not read {path}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if name.endswith(".ima.gz"):
        with gzip.open(path) as f:
            return to_uint8(np.frombuffer(f.read(), np.uint16).reshape(256, 256))
    with np.load(path) as arrays:
        grey = to_uint8(arrays["elevation"] if "elevation" in arrays else arrays["topo"])
    if not colour:
        return grey
    return (matplotlib.colormaps["terrain"](grey)[..., :3] * 255).astype(np.uint8)


def photo(name: str, colour: bool) -> np.ndarray:
    """An RGB (colour) or grey photograph by name, from scikit-learn's two samples, matplotlib's
    sample files (``mpl:FILE``) or scikit-image."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    elif name.startswith("mpl:"):
        image = matplotlib_sample(name[4:], colour)
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image  # a stereo pair: its left image
    if image.ndim == 3:
        image = image[..., :3]
        return image if colour else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if colour else image


def random_patch(region: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    h, w = region.shape[:2]
    crop = int(rng.integers(min(48, h, w), min(128, h, w) + 1))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    patch = cv2.resize(region[y:y + crop, x:x + crop], (side, side), interpolation=cv2.INTER_AREA)
    gain, offset = rng.uniform(0.6, 1.4), rng.uniform(-40, 40)
    return np.clip(patch.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def write_patches(target: Path, spec: PatchSet = GREY, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    count = 0
    for name in spec.photos:
        image = photo(name, spec.colour)
        cut = int(image.shape[1] * TRAIN_SHARE)
        for split, region, n in (("train", image[:, :cut], spec.train_per_class),
                                 ("val", image[:, cut:], spec.val_per_class)):
            folder = target / split / class_name(name)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                patch = random_patch(region, spec.side, rng)
                if spec.colour:
                    patch = cv2.cvtColor(patch, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
                if not cv2.imwrite(str(folder / f"{class_name(name)}_{i:03d}.png"), patch):
                    raise OSError(f"could not write into {folder}")
                count += 1
    return count


def ensure_patches(spec: PatchSet, cache_root: Path | None = None) -> Path:
    return ensure_cached_folder(spec.version, partial(write_patches, spec=spec), cache_root)


if __name__ == "__main__":
    print(*(ensure_patches(spec) for spec in PATCH_SETS.values()))
