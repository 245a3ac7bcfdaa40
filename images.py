"""Images in, model input out: decoding (OpenCV), the bad-image error, the augmentations
(albumentations) and the move to the device. Every reader (class folders, CIFAR arrays, WebDataset
shards) shares these, so a JPEG is decoded and augmented the same way wherever it was read from.

    image = decode_rgb("train/n01440764/x.JPEG")            # HxWx3 uint8 RGB
    out = build_train_transform(224, seed=0)(image=image)["image"]
    x = to_model_input(batch, device, channels_last=True)  # uint8 NHWC -> normalised float NCHW
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from input_size import is_small_input  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenCV 4.11+ decodes straight to RGB; older releases decode BGR and the channels are swapped after.
IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)

cv2.setNumThreads(1)  # one decode thread per worker; the workers are the parallelism


class BadImageError(Exception):
    pass


def is_truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG stream without its end-of-image marker near the end was cut short: OpenCV would
    still return it, with the missing part grey."""
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    tail = data[-1024:].tobytes()
    return b"\xff\xd9" not in tail


def decode_rgb(path: str) -> np.ndarray:
    """An HxWx3 uint8 RGB array from any image file OpenCV reads (grey and CMYK included)."""
    return decode_rgb_bytes(np.fromfile(path, dtype=np.uint8), path)


def decode_rgb_bytes(data: np.ndarray, name: str) -> np.ndarray:
    """``decode_rgb`` on an image file's bytes (a folder's file or a shard's sample); ``name`` is for messages."""
    if is_truncated_jpeg(data):
        raise BadImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, IMREAD_RGB if IMREAD_RGB is not None else cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise BadImageError(f"{name}: not a readable image")
    return image if IMREAD_RGB is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_size(input_size: int) -> int:
    """The resize before cropping, in ImageNet's 256 -> 224 proportion."""
    return round(input_size * 256 / 224)


def build_train_transform(input_size: int, seed: int | None = None) -> A.Compose:
    """Spec augmentations: resize, random crop, flip, colour jitter (CIFAR-style when small)."""
    if is_small_input(input_size):
        pad = input_size // 8
        steps = [
            A.Resize(input_size, input_size),
            A.PadIfNeeded(input_size + 2 * pad, input_size + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(input_size, input_size),
            A.HorizontalFlip(p=0.5),
        ]
    else:
        big = resize_size(input_size)
        steps = [
            A.Resize(big, big),
            A.RandomCrop(input_size, input_size),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
        ]
    return A.Compose(steps, seed=seed)


def build_val_transform(input_size: int) -> A.Compose:
    """Deterministic: resize then centre crop (just a resize when small)."""
    if is_small_input(input_size):
        return A.Compose([A.Resize(input_size, input_size)])
    big = resize_size(input_size)
    return A.Compose([A.Resize(big, big), A.CenterCrop(input_size, input_size)])


def to_model_input(images: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float32 NCHW on ``device`` (channels_last strides if asked)."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    if not channels_last:
        x = x.contiguous()
    mean, std = normalisation(device)
    return x.sub_(mean).div_(std)


_NORMALISATION: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std on the 0-255 scale, shaped (1, 3, 1, 1): made once per device, not
    copied to the GPU every step."""
    device = torch.device(device)
    if device not in _NORMALISATION:
        _NORMALISATION[device] = (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0,
                                  torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0)
    return _NORMALISATION[device]
