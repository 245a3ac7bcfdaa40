"""The layouts people hold ImageNet in: class folders, a flat val/ labelled by the devkit
(tar.gz or unpacked), Kaggle's CSV (next to the data or three levels up), wnids in names;
the cached file index; and one-line errors for labels that do not fit."""

import os

import numpy as np
import pytest
from imagenet_fixtures import (
    VAL_NAMES,
    VAL_WNIDS,
    WNIDS,
    write_devkit_dir,
    write_devkit_tar,
    write_flat_tree,
    write_kaggle_csv,
    write_meta_mat,
)
from torch.utils.data import DataLoader

from errors import UserInputError
from image_folder import scan_image_folder
from preprocess import build_datasets

from conftest import make_image_folder

EXPECTED_VAL = [WNIDS.index(w) for w in VAL_WNIDS]  # sorted-wnid indices, not ILSVRC2012_IDs


def val_labels_by_name(val):
    return {os.path.basename(val.paths[i]): int(val.targets[i]) for i in range(len(val))}


def assert_flat_val_labelled(train, val, layout, labels_file):
    assert train.classes == WNIDS and val.classes == WNIDS
    assert val_labels_by_name(val) == dict(zip(VAL_NAMES, EXPECTED_VAL))
    assert train.layout == {"data_layout": layout, "val_labels_file": labels_file}


def test_class_folders_layout(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1)
    train, val = build_datasets("imagenet1k", str(root), 32)
    assert train.layout == {"data_layout": "class_folders", "val_labels_file": None}
    assert len(val) == 3 and val.targets.tolist() == [0, 1, 2]


def test_flat_val_with_devkit_tar_gz(tmp_path):
    root = write_flat_tree(tmp_path / "data")
    tar = write_devkit_tar(tmp_path / "data")
    assert_flat_val_labelled(*build_datasets("imagenet1k", str(root), 32), "flat_val_devkit", str(tar))


def test_flat_val_with_unpacked_devkit_one_level_up(tmp_path):
    root = write_flat_tree(tmp_path / "imagenet" / "data")
    devkit = write_devkit_dir(tmp_path / "imagenet")
    assert_flat_val_labelled(*build_datasets("imagenet1k", str(root), 32), "flat_val_devkit", str(devkit))


def test_flat_val_with_kaggle_csv_given_by_flag(tmp_path):
    root = write_flat_tree(tmp_path / "data")
    csv = write_kaggle_csv(tmp_path / "elsewhere" / "LOC_val_solution.csv")
    train, val = build_datasets("imagenet1k", str(root), 32, val_labels=str(csv))
    assert_flat_val_labelled(train, val, "flat_val_kaggle_csv", str(csv))


def test_kaggle_tree_finds_the_csv_three_levels_up(tmp_path):
    kaggle = tmp_path / "imagenet-object-localization-challenge"
    root = write_flat_tree(kaggle / "ILSVRC" / "Data" / "CLS-LOC")
    csv = write_kaggle_csv(kaggle / "LOC_val_solution.csv")
    assert_flat_val_labelled(*build_datasets("imagenet1k", str(root), 32), "flat_val_kaggle_csv", str(csv))


def test_wnids_in_file_names(tmp_path):
    names = [f"{n.removesuffix('.JPEG')}_{w}.JPEG" for n, w in zip(VAL_NAMES, VAL_WNIDS)]
    root = write_flat_tree(tmp_path / "data", val_names=names)
    train, val = build_datasets("imagenet1k", str(root), 32)
    assert val_labels_by_name(val) == dict(zip(names, EXPECTED_VAL))
    assert train.layout == {"data_layout": "flat_val_wnid_in_name", "val_labels_file": None}


def test_range_test_reads_only_train(tmp_path):
    root = write_flat_tree(tmp_path / "data")  # flat val/ and no labels anywhere: fine without val
    train, val = build_datasets("imagenet1k", str(root), 32, need_val=False)
    assert val is None and len(train) == 9 and train.layout["data_layout"] == "train_only"
    with pytest.raises(UserInputError, match=r"val: flat val/ and no labels for it: pass --val_labels"):
        build_datasets("imagenet1k", str(root), 32)


def write_text(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("make,message", [
    (lambda d: write_text(d / "LOC_val_solution.csv", "Id,Label\n"),
     r"LOC_val_solution.csv: line 1: 'Id,Label' is not the header 'ImageId,PredictionString'$"),
    (lambda d: write_text(d / "LOC_val_solution.csv", "ImageId,PredictionString\nILSVRC2012_val_00000001,dog 1 2\n"),
     r"LOC_val_solution.csv: line 2: 'ILSVRC2012_val_00000001,dog 1 2' is not 'ImageId,<wnid> ...'$"),
    (lambda d: (write_meta_mat(d / "data" / "meta.mat"),
                write_text(d / "data" / "ILSVRC2012_validation_ground_truth.txt", "2\n1\nseven\n")),
     r"ILSVRC2012_validation_ground_truth.txt: line 3: 'seven' is not an ILSVRC2012_ID of a class in meta.mat$"),
    (lambda d: (write_meta_mat(d / "data" / "meta.mat"),
                write_text(d / "data" / "ILSVRC2012_validation_ground_truth.txt", "2\n1001\n")),
     r"ground_truth.txt: line 2: '1001' is not an ILSVRC2012_ID"),  # a synset with children is no class
    (lambda d: (write_text(d / "data" / "meta.mat", "not a mat file"),
                write_text(d / "data" / "ILSVRC2012_validation_ground_truth.txt", "1\n")),
     r"meta.mat: not a readable devkit meta.mat"),
    (lambda d: write_text(d / "ILSVRC2012_devkit_t12.tar.gz", "not gzip"),
     r"ILSVRC2012_devkit_t12.tar.gz: not a readable tar.gz"),
])
def test_malformed_labels_files_fail_in_one_line_naming_file_and_entry(tmp_path, make, message):
    root = write_flat_tree(tmp_path / "data")
    make(tmp_path / "data")
    with pytest.raises(UserInputError, match=message) as caught:
        build_datasets("imagenet1k", str(root), 32)
    assert "\n" not in str(caught.value)


def test_val_image_of_a_class_not_in_train(tmp_path):
    root = write_flat_tree(tmp_path / "data")
    csv = write_kaggle_csv(tmp_path / "data" / "LOC_val_solution.csv")
    csv.write_text(csv.read_text().replace("ILSVRC2012_val_00000002,n01484850", "ILSVRC2012_val_00000002,n09999999"))
    with pytest.raises(UserInputError, match=r"LOC_val_solution.csv: ILSVRC2012_val_00000002.JPEG is labelled "
                                             r"n09999999, a class not in train/$"):
        build_datasets("imagenet1k", str(root), 32)


def test_val_image_with_no_label(tmp_path):
    root = write_flat_tree(tmp_path / "data")
    (root / "val" / "ILSVRC2012_val_00000099.JPEG").write_bytes((root / "val" / VAL_NAMES[0]).read_bytes())
    csv = write_kaggle_csv(tmp_path / "data" / "LOC_val_solution.csv")
    with pytest.raises(UserInputError, match=rf"ILSVRC2012_val_00000099.JPEG: val image with no label in {csv}$"):
        build_datasets("imagenet1k", str(root), 32)


def test_file_index_is_cached_until_a_class_folder_changes(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1)
    classes, paths, labels = scan_image_folder(root / "train")
    cache = root / ".lr_finder_index_train.npz"
    assert cache.is_file() and isinstance(paths.buffer, np.ndarray) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert paths[3] == str(root / "train" / "dog" / "dog_001.JPEG")
    (root / "train" / "dog" / "dog_000.JPEG").rename(tmp_path / "moved.JPEG")  # the cache does not know yet
    os.utime(root / "train" / "dog", ns=(1, 1))  # ... a copy keeping the old mtime would be missed; a change is seen
    assert len(scan_image_folder(root / "train")[1]) == 5
    (tmp_path / "moved.JPEG").rename(root / "train" / "dog" / "dog_000.JPEG")
    os.utime(root / "train" / "dog", ns=(1, 1))  # same names, same mtime: the stale 5-file index is reused
    assert len(scan_image_folder(root / "train")[1]) == 5
    assert len(scan_image_folder(root / "train", rescan=True)[1]) == 6


def test_links_in_class_folders_count_each_real_image_once_without_looping(tmp_path, capsys):
    """24 images in 3 classes, and links: back to train/ (a loop), to another class folder, to another
    class's image, at the top of train/ to a class; and to a folder outside train/ (3 images) that
    links back to itself and is linked twice. Each real image once, under its own class; the
    outside folder's images count (once) for the class that links to it."""
    root = make_image_folder(tmp_path / "data", per_class=8, val_per_class=0, size=16)
    train = root / "train"
    outside = make_image_folder(tmp_path / "more", classes=("extra",), per_class=3, val_per_class=0, size=16)
    extra = outside / "train" / "extra"
    os.symlink(train, train / "cat" / "loop")  # absolute
    os.symlink("..", train / "cat" / "up")  # relative: cat/up is train/
    os.symlink(train / "fox", train / "dog" / "foxes")
    os.symlink("../cat/cat_000.JPEG", train / "fox" / "a_cat.JPEG")
    os.symlink(train / "cat", train / "alias")
    os.symlink(extra, train / "cat" / "more")
    os.symlink(extra, train / "dog" / "more_again")
    os.symlink(extra, extra / "back")
    classes, paths, labels = scan_image_folder(train, rescan=True)
    assert classes == ["cat", "dog", "fox"]
    found = [(os.path.basename(paths[i]), classes[labels[i]]) for i in range(len(paths))]
    assert len(found) == 24 + 3 and len(set(found)) == 27
    assert sorted(name for name, cls in found if cls == "cat") == sorted(
        [f"cat_{i:03d}.JPEG" for i in range(8)] + [f"extra_{i:03d}.JPEG" for i in range(3)])
    assert all(name.startswith(cls) for name, cls in found if not name.startswith("extra"))
    err = capsys.readouterr().err
    assert f"skipping {train / 'cat' / 'loop'}: a link into {train}" in err
    assert f"skipping {train / 'dog' / 'foxes'}: a link into {train}" in err
    assert f"skipping {train / 'dog' / 'more_again'}: a link to {extra}, which is already scanned" in err


def test_index_cache_goes_to_the_user_cache_when_the_data_is_read_only(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class=1, val_per_class=1)
    monkeypatch.setenv("LR_FINDER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # chmod alone does not stop root
    scan_image_folder(root / "train")
    assert not (root / ".lr_finder_index_train.npz").exists()
    assert len(list((tmp_path / "cache" / "index").glob("train-*.npz"))) == 1


def test_each_unreadable_file_counts_once(tmp_path, capsys):
    """240 good JPEGs and, next to each other, a text file named .JPEG and a truncated JPEG:
    one pass reports 2 bad files, not 3 (the truncated one was also the text file's stand-in)."""
    from lr_finder import CountingTrainIter

    root = make_image_folder(tmp_path / "data", classes=("cat",), per_class=240, val_per_class=0, size=16)
    folder = root / "train" / "cat"
    (folder / "cat_a_text.JPEG").write_text("not an image")
    good = (folder / "cat_000.JPEG").read_bytes()
    (folder / "cat_b_cut.JPEG").write_bytes(good[: len(good) // 2])
    train, _ = build_datasets("imagenet1k", str(root), 16, need_val=False)
    counting = CountingTrainIter(DataLoader(train, batch_size=22, drop_last=False))
    for batch in counting.data_loader:
        counting.inputs_labels_from_batch(batch)
    assert counting.seen == 242 and counting.bad == 2
    assert sorted(os.path.basename(train.paths[i]) for i in counting.bad_files) == ["cat_a_text.JPEG", "cat_b_cut.JPEG"]
    err = capsys.readouterr().err
    assert err.count("cat_a_text.JPEG: not a readable image") == 1 and err.count("cat_b_cut.JPEG: truncated") == 1


def test_help_documents_val_labels_and_rescan():
    from cli import get_args_parser

    text = " ".join(get_args_parser().format_help().split())
    assert "--val_labels PATH labels of a flat val/: ILSVRC2012_devkit_t12.tar.gz" in text
    assert "--rescan scan the image folders again instead of reusing the cached file index" in text


def test_missing_val_labels_file_is_a_one_line_usage_error(tmp_path, capsys):
    from cli import parse_args

    with pytest.raises(SystemExit) as caught:
        parse_args(["--find_lr", "--val_labels", str(tmp_path / "nope.csv")])
    assert caught.value.code == 2
    assert capsys.readouterr().err.endswith(f": error: --val_labels {tmp_path / 'nope.csv'}: not found (see --help)\n")
