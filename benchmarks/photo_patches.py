"""A second real image set for the suggestion study: grey patches of the photographs that
scikit-image ships (brick, grass, gravel, the moon, coins, a cat, ...), one class per photograph.

Training patches come from the left 70 % of each photograph and validation patches from the
right 30 %, so validation measures how well a model recognises regions it never saw. Each patch
has a random size, position, brightness and contrast, so neither grey level nor scale gives the
class away.

    root = ensure_photo_patches()     # LR_FINDER_CACHE/photo-patches-v1/{train,val}/<photo>/*.png
"""

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo_data import ensure_cached_folder  # noqa: E402

VERSION = "photo-patches-v1"
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "moon")
PATCH_SIDE = 32
TRAIN_PER_CLASS, VAL_PER_CLASS = 150, 40
TRAIN_SHARE = 0.7  # of each photograph's width


def grey_photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    return image


def random_patch(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = region.shape
    side = int(rng.integers(min(48, h, w), min(128, h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    patch = cv2.resize(region[y:y + side, x:x + side], (PATCH_SIDE, PATCH_SIDE), interpolation=cv2.INTER_AREA)
    gain, offset = rng.uniform(0.6, 1.4), rng.uniform(-40, 40)
    return np.clip(patch.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def write_photo_patches(target: Path, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    count = 0
    for name in PHOTOS:
        photo = grey_photo(name)
        cut = int(photo.shape[1] * TRAIN_SHARE)
        for split, region, n in (("train", photo[:, :cut], TRAIN_PER_CLASS), ("val", photo[:, cut:], VAL_PER_CLASS)):
            folder = target / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if not cv2.imwrite(str(folder / f"{name}_{i:03d}.png"), random_patch(region, rng)):
                    raise OSError(f"could not write into {folder}")
                count += 1
    return count


def ensure_photo_patches(cache_root: Path | None = None) -> Path:
    return ensure_cached_folder(VERSION, write_photo_patches, cache_root)


if __name__ == "__main__":
    print(ensure_photo_patches())
