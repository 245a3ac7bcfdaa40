"""Real image sets for the suggestion study, cut from the photographs that scikit-image and
scikit-learn ship, one class per photograph:

- ``photo-patches-v1``: grey 32 px patches of ten photographs (brick, grass, gravel, the moon,
  coins, a cat, ...), 150 train and 40 val per class;
- ``colour-patches-v1``: colour 64 px patches of eight colour photographs (a Chinese temple, a
  flower, a rocket, a retina, a stained tissue, ...), 120 train and 40 val per class.

Training patches come from the left 70 % of each photograph and validation patches from the
right 30 %, so validation measures how well a model recognises regions it never saw. Each patch
has a random size, position, brightness and contrast, so neither grey level nor scale gives the
class away.

    root = ensure_photo_patches()     # LR_FINDER_CACHE/photo-patches-v1/{train,val}/<photo>/*.png
    root = ensure_colour_patches()    # LR_FINDER_CACHE/colour-patches-v1/...
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


def photo(name: str, colour: bool) -> np.ndarray:
    """An RGB (colour) or grey photograph by name, from scikit-learn's two samples or scikit-image."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        image = getattr(skimage.data, name)()
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
            folder = target / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                patch = random_patch(region, spec.side, rng)
                if spec.colour:
                    patch = cv2.cvtColor(patch, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
                if not cv2.imwrite(str(folder / f"{name}_{i:03d}.png"), patch):
                    raise OSError(f"could not write into {folder}")
                count += 1
    return count


def ensure_patches(spec: PatchSet, cache_root: Path | None = None) -> Path:
    return ensure_cached_folder(spec.version, partial(write_patches, spec=spec), cache_root)


def ensure_photo_patches(cache_root: Path | None = None) -> Path:
    return ensure_patches(GREY, cache_root)


def ensure_colour_patches(cache_root: Path | None = None) -> Path:
    return ensure_patches(COLOUR, cache_root)


if __name__ == "__main__":
    print(ensure_photo_patches(), ensure_colour_patches())
