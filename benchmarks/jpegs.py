"""An ImageNet-like JPEG folder made from the real photographs scikit-learn ships
(``china.jpg`` and ``flower.jpg``, 427x640): random crops resized to about 500x375 and
saved at quality 90, so decode and augmentation costs resemble ImageNet's.

    root = write_jpeg_folder(Path("/tmp/bench-data"), count=64)   # root/train/<class>/*.JPEG
"""

import importlib.util
from pathlib import Path

import cv2
import numpy as np

IMAGE_SIZE = (500, 375)  # width, height: the most common ImageNet shape
JPEG_QUALITY = 90
PHOTOGRAPHS = ("china.jpg", "flower.jpg")  # in sklearn/datasets/images, what load_sample_images() reads


def sample_photographs() -> list[np.ndarray]:
    """scikit-learn's bundled photographs as RGB uint8 arrays, read from the package's files
    (importing scikit-learn itself would add seconds to every run)."""
    package = importlib.util.find_spec("sklearn")
    folder = Path(package.submodule_search_locations[0]) / "datasets" / "images"
    photos = [cv2.imread(str(folder / name)) for name in PHOTOGRAPHS]
    if any(photo is None for photo in photos):
        raise FileNotFoundError(f"{folder}: scikit-learn's sample photographs {PHOTOGRAPHS} are missing")
    return [cv2.cvtColor(photo, cv2.COLOR_BGR2RGB) for photo in photos]


def random_view(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A crop of 55-100% of each side at a random place, mirrored half the time, resized to ``size``."""
    height, width = photo.shape[:2]
    crop_h = int(rng.integers(int(0.55 * height), height + 1))
    crop_w = int(rng.integers(int(0.55 * width), width + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    view = photo[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return cv2.resize(np.ascontiguousarray(view), size, interpolation=cv2.INTER_AREA)


def write_jpeg_folder(root: Path, count: int, classes: int = 4, seed: int = 0,
                      size: tuple[int, int] = IMAGE_SIZE, quality: int = JPEG_QUALITY) -> Path:
    """``count`` JPEGs under ``root/train/class_<k>/`` (an ImageFolder tree); returns ``root``."""
    rng = np.random.default_rng(seed)
    photos = sample_photographs()
    for k in range(classes):
        (root / "train" / f"class_{k}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rgb = random_view(photos[i % len(photos)], size, rng)
        path = root / "train" / f"class_{i % classes}" / f"{i:05d}.JPEG"
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"could not write {path}")
    return root
