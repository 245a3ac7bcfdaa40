from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from errors import UserInputError
from images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImageError,
    build_train_transform,
    build_val_transform,
    decode_rgb,
    resize_size,
    to_model_input,
)
from preprocess import balanced_subset, build_datasets, build_loader

from conftest import make_image_folder


@pytest.mark.parametrize("size", [224, 64, 32])
def test_transforms_give_uint8_images_of_the_input_size(size):
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for transform in (build_train_transform(size, seed=0), build_val_transform(size)):
        out = transform(image=image)["image"]
        assert out.shape == (size, size, 3) and out.dtype == np.uint8


def test_resize_keeps_imagenet_proportion():
    assert resize_size(224) == 256
    assert resize_size(112) == 128


def test_train_transform_contains_the_spec_augmentations():
    names = [type(t).__name__ for t in build_train_transform(224)]
    assert names == ["Resize", "RandomCrop", "HorizontalFlip", "ColorJitter"]
    assert build_train_transform(224)[0].height == 256
    assert [type(t).__name__ for t in build_val_transform(224)] == ["Resize", "CenterCrop"]
    assert [type(t).__name__ for t in build_train_transform(32)] == ["Resize", "PadIfNeeded", "RandomCrop", "HorizontalFlip"]


def test_val_transform_is_deterministic_and_train_is_seeded():
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    val = build_val_transform(224)
    assert np.array_equal(val(image=image)["image"], val(image=image)["image"])
    a = [build_train_transform(224, seed=5)(image=image)["image"] for _ in range(2)]
    assert np.array_equal(a[0], a[1])


def test_to_model_input_normalises_and_is_channels_last():
    batch = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 4, 4, 3).contiguous()
    x = to_model_input(batch, torch.device("cpu"), channels_last=True)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected), atol=1e-5)
    assert to_model_input(batch, torch.device("cpu"), channels_last=False).is_contiguous()


def test_decode_handles_grey_cmyk_and_png_named_jpeg(tmp_path):
    grey = tmp_path / "grey.JPEG"
    cv2.imwrite(str(grey), np.full((10, 12), 77, np.uint8))
    cmyk = tmp_path / "cmyk.JPEG"
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(cmyk, "JPEG", quality=95)  # pure red
    png = tmp_path / "png.JPEG"
    cv2.imwrite(str(png.with_suffix(".png")), np.zeros((10, 12, 3), np.uint8))
    png.with_suffix(".png").rename(png)
    assert decode_rgb(str(grey)).shape == (10, 12, 3)
    red = decode_rgb(str(cmyk))
    assert red.shape == (10, 12, 3) and red[5, 5, 0] > 200 and red[5, 5, 1] < 60
    assert decode_rgb(str(png)).shape == (10, 12, 3)


@pytest.mark.parametrize("opencv", ["4.11+ (IMREAD_COLOR_RGB)", "older (BGR, then swapped)"])
def test_decode_gives_rgb_on_every_opencv(opencv, tmp_path, monkeypatch):
    import images

    if opencv.startswith("older"):
        monkeypatch.setattr(images, "IMREAD_RGB", None)
    path = tmp_path / "rgb.png"
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 200  # OpenCV writes BGR: blue 10, green 20, red 200
    cv2.imwrite(str(path), bgr)
    assert images.decode_rgb(str(path))[2, 3].tolist() == [200, 20, 10]


def test_balanced_subset_is_even_and_seeded():
    targets = [0] * 50 + [1] * 30 + [2] * 20
    chosen = balanced_subset(targets, 30, seed=3)
    assert len(chosen) == 30 and len(set(chosen)) == 30
    assert sorted(Counter(targets[i] for i in chosen).values()) == [10, 10, 10]
    assert chosen == balanced_subset(targets, 30, seed=3)
    assert chosen != balanced_subset(targets, 30, seed=4)
    assert balanced_subset(targets, 500, seed=0) == list(range(100))


def test_image_folder_datasets_and_max_samples(tmp_path):
    root = make_image_folder(tmp_path, per_class=6, val_per_class=2)
    train, val = build_datasets("imagenet1k", str(root), 32, max_samples=9, seed=0)
    assert train.classes == ["cat", "dog", "fox"] and len(train) == 9 and len(val) == 6
    assert sorted(Counter(train.subset_targets).values()) == [3, 3, 3]
    image, label, bad_file = train[0]
    assert image.shape == (32, 32, 3) and image.dtype == torch.uint8 and bad_file == -1


def test_training_loader_drops_the_last_partial_batch_and_refuses_oversized_batches(tmp_path):
    root = make_image_folder(tmp_path, per_class=3, val_per_class=1)
    train, _ = build_datasets("imagenet1k", str(root), 32)
    assert len(build_loader(train, 4, True, 0, torch.device("cpu"))) == 2  # 9 images -> 2 full batches
    with pytest.raises(UserInputError, match="--batch_size 16 is larger than the 9 training images"):
        build_loader(train, 16, True, 0, torch.device("cpu"))


def test_truncated_jpeg_is_rejected(tmp_path):
    path = tmp_path / "cut.JPEG"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadImageError, match="cut.JPEG: truncated JPEG"):
        decode_rgb(str(path))


def test_unreadable_files_are_skipped_with_a_warning(tmp_path, capsys):
    root = make_image_folder(tmp_path, per_class=4, val_per_class=1)
    (root / "train" / "cat" / "cat_000.JPEG").write_text("this is not an image")
    train, _ = build_datasets("imagenet1k", str(root), 32)
    image, label, bad_file = train[0]
    assert bad_file == 0 and label == 0 and image.shape == (32, 32, 3)
    assert "cat_000.JPEG: not a readable image" in capsys.readouterr().err


@pytest.mark.parametrize("setup,message", [
    (lambda r: None, "folder not found"),
    (lambda r: (r / "train").mkdir(parents=True), "has no class folders"),
    (lambda r: ((r / "train" / "a").mkdir(parents=True), (r / "train" / "b").mkdir()), "with no images: a, b"),
])
def test_bad_trees_give_clear_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    if message != "folder not found":
        setup(root)
    with pytest.raises(UserInputError, match=message):
        build_datasets("imagenet1k", str(root), 32)


def test_val_classes_must_match_train(tmp_path):
    root = make_image_folder(tmp_path, per_class=2, val_per_class=1)
    (root / "val" / "fox").rename(root / "val" / "wolf")
    with pytest.raises(UserInputError, match="missing in val/: fox; only in val/: wolf"):
        build_datasets("imagenet1k", str(root), 32)


def test_cifar100_is_read_offline_and_missing_files_are_explained(tmp_path):
    with pytest.raises(UserInputError, match="cifar-100-python: CIFAR-100 not found"):
        build_datasets("cifar100", str(tmp_path), 32)
