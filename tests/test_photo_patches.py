"""The study's image sets: real pictures from what scikit-image, scikit-learn and matplotlib ship."""

import sys

import cv2
import numpy as np

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import photo_patches  # noqa: E402
from photo_patches import PATCH_SETS, SCANS, SCENES, PatchSet, class_name, photo, to_uint8, write_patches  # noqa: E402


def test_measurements_are_scaled_between_their_1st_and_99th_percentiles():
    values = np.arange(101, dtype=float)  # percentiles 1 and 99 are 1 and 99
    scaled = to_uint8(values)
    assert scaled.dtype == np.uint8 and (scaled[0], scaled[1], scaled[50], scaled[99], scaled[100]) == (0, 0, 127, 255, 255)


def test_class_folders_drop_the_source_prefix_and_the_extension():
    assert class_name("mpl:jacksboro_fault_dem.npz") == "jacksboro_fault_dem" and class_name("cell") == "cell"


def test_every_new_image_loads_grey_or_colour_from_the_installed_packages():
    for name in SCANS.photos:
        image = photo(name, colour=False)
        assert image.ndim == 2 and image.dtype == np.uint8 and min(image.shape) >= 90, name  # topobathy: 91 x 120
    for name in SCENES.photos:
        image = photo(name, colour=True)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, name
    assert photo("mpl:s1045.ima.gz", colour=False).shape == (256, 256)  # the MRI slice
    # An elevation map in colour is the terrain colour map: not grey (its channels differ).
    terrain = photo("mpl:topobathy.npz", colour=True).astype(int)
    assert np.abs(terrain[..., 0] - terrain[..., 2]).mean() > 10


def test_the_study_data_names_are_the_four_sets_and_none_shares_an_image_with_the_first_two():
    assert set(PATCH_SETS) == {"patches", "colour", "scans", "scenes"}
    earlier = set(photo_patches.GREY.photos) | set(photo_patches.COLOUR.photos)
    assert not earlier & (set(SCANS.photos) | set(SCENES.photos))


def test_patches_are_written_per_class_and_split(tmp_path):
    spec = PatchSet("t", ("clock", "mpl:grace_hopper.jpg"), 16, 3, 2, colour=True)
    assert write_patches(tmp_path, spec) == 10  # 2 classes x (3 + 2)
    for split, count in (("train", 3), ("val", 2)):
        for name in ("clock", "grace_hopper"):
            files = sorted((tmp_path / split / name).glob("*.png"))
            assert len(files) == count and cv2.imread(str(files[0])).shape == (16, 16, 3)
