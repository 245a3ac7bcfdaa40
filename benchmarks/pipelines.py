"""The per-worker input pipelines the benchmark compares, each as "one pass over these
files, return images per second", run in this process the way one DataLoader worker
would run them (one thread, ``dataset[i]`` one after another).

    passes = pipeline_passes(root, input_size=224, seed=0)
    images_per_second = passes["ours"]()
"""

import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torchvision import datasets, transforms

from image_folder import FolderImages, scan_image_folder
from images import IMAGENET_MEAN, IMAGENET_STD, build_train_transform, resize_size
from preprocess import EpochSampler


def torchvision_train_transform(input_size: int) -> transforms.Compose:
    """The idiomatic torchvision version of our training augmentations, ending in a
    normalised float tensor as a torchvision user's worker would deliver it."""
    big = resize_size(input_size)
    return transforms.Compose([
        transforms.Resize((big, big)),
        transforms.RandomCrop(input_size),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def opencv_decode(path: str) -> np.ndarray:
    """The floor: OpenCV's JPEG decode of the file, nothing else."""
    return cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)


def images_per_second(items: Callable[[int], object], count: int) -> float:
    """Fetch items 0..count-1 one after another; images per second."""
    started = time.perf_counter()
    for i in range(count):
        items(i)
    return count / (time.perf_counter() - started)


def pipeline_passes(root: Path, input_size: int, seed: int) -> dict[str, Callable[[], float]]:
    """One-pass measurements over the JPEGs under ``root/train``: ours (``FolderImages``
    with the training transform, fed by ``EpochSampler`` keys as in training: OpenCV decode
    + albumentations, uint8 out), torchvision (ImageFolder + PIL + torchvision.transforms,
    float out) and the OpenCV decode floor."""
    classes, paths, targets = scan_image_folder(root / "train")
    ours = FolderImages(paths, targets, classes, build_train_transform(input_size, seed))
    # The training loaders' sampler: (position, augmentation seed) keys, reseeding per sample.
    keys = list(EpochSampler(len(ours), seed))
    torch.manual_seed(seed)  # torchvision's random transforms draw from torch's generator
    theirs = datasets.ImageFolder(str(root / "train"), transform=torchvision_train_transform(input_size))
    count = len(paths)
    return {
        "ours": lambda: images_per_second(lambda i: ours[keys[i]], count),
        "torchvision": lambda: images_per_second(theirs.__getitem__, count),
        "decode": lambda: images_per_second(lambda i: opencv_decode(paths[i]), count),
    }
