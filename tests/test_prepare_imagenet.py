"""prepare_imagenet.py on miniature downloads: official archives (streamed), an unpacked tree
with a flat val/, Kaggle's tree; checked file by file; a killed run resumed."""

import os

import pytest
from imagenet_fixtures import (
    VAL_NAMES,
    VAL_WNIDS,
    WNIDS,
    train_files,
    val_files,
    write_flat_tree,
    write_kaggle_csv,
    write_official_archives,
)

from prepare_imagenet import PARTIAL, main, prepare

from conftest import run_cli


def expected_tree() -> dict[str, bytes]:
    contents = val_files()
    return {**{f"train/{k}": v for k, v in train_files().items()},
            **{f"val/{w}/{n}": contents[n] for n, w in zip(VAL_NAMES, VAL_WNIDS)}}


def tree_contents(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


def test_official_archives_are_streamed_into_class_folders(tmp_path, capsys):
    source = write_official_archives(tmp_path / "downloads")
    assert main([str(source), "--out", str(tmp_path / "data")]) == 0
    assert tree_contents(tmp_path / "data") == expected_tree()
    out = capsys.readouterr().out
    assert "9 train and 6 val images in 3 classes" in out
    assert "differs from ImageNet-1K: train: 9 (the full set has 1,281,167)" in out
    assert "val: 6 (the full set has 50,000)" in out and "classes: 3 (the full set has 1,000)" in out


def test_unpacked_flat_tree_is_hard_linked(tmp_path):
    source = write_flat_tree(tmp_path / "src")
    write_kaggle_csv(source / "LOC_val_solution.csv")
    counts = prepare(source, tmp_path / "data")
    assert tree_contents(tmp_path / "data") == expected_tree()
    assert counts["classes"] == 3 and counts["train"] == 9 and counts["val"] == 6
    linked = tmp_path / "data" / "val" / VAL_WNIDS[0] / VAL_NAMES[0]
    assert os.path.samefile(linked, source / "val" / VAL_NAMES[0])  # a link, not a copy
    assert (source / "val" / VAL_NAMES[0]).is_file()  # originals left where they were


@pytest.mark.parametrize("flag,check", [
    ("--symlink", lambda p: p.is_symlink()),
    ("--copy", lambda p: not p.is_symlink() and os.stat(p).st_nlink == 1),
])
def test_kaggle_tree_with_symlinks_or_copies(tmp_path, flag, check):
    kaggle = tmp_path / "kaggle"
    write_flat_tree(kaggle / "ILSVRC" / "Data" / "CLS-LOC")
    write_kaggle_csv(kaggle / "LOC_val_solution.csv")
    assert main([str(kaggle), "--out", str(tmp_path / "data"), flag]) == 0
    assert tree_contents(tmp_path / "data") == expected_tree()
    assert check(tmp_path / "data" / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG")


def test_a_killed_run_is_resumed_without_redoing_complete_classes(tmp_path):
    source = write_official_archives(tmp_path / "downloads")
    out = tmp_path / "data"
    # What a kill leaves: one class complete, one half-written in .partial/, a val file mid-write.
    done = out / "train" / WNIDS[0]
    done.mkdir(parents=True)
    for name, content in train_files().items():
        if name.startswith(WNIDS[0]):
            (out / "train" / name).write_bytes(content)
    marker = (done / f"{WNIDS[0]}_0.JPEG").stat().st_ino
    half = out / PARTIAL / "train" / WNIDS[1]
    half.mkdir(parents=True)
    (half / f"{WNIDS[1]}_0.JPEG").write_bytes(b"\xff\xd8 cut short")
    (out / "val" / VAL_WNIDS[0]).mkdir(parents=True)
    (out / "val" / VAL_WNIDS[0] / (VAL_NAMES[0] + PARTIAL)).write_bytes(b"\xff\xd8 cut")

    assert main([str(source), "--out", str(out)]) == 0
    assert tree_contents(out) == expected_tree()  # no partial file or folder left, every file whole
    assert (done / f"{WNIDS[0]}_0.JPEG").stat().st_ino == marker  # the complete class was not redone


def test_prepare_errors_are_one_line_with_exit_code_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("prepare_imagenet.py", tmp_path / "empty", "--out", tmp_path / "data", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'empty'}: holds neither ILSVRC2012_img_train.tar + ILSVRC2012_img_val.tar nor an "
        "unpacked train/ + val/ (or Kaggle's ILSVRC/Data/CLS-LOC/)"]


def test_archives_without_devkit_are_refused(tmp_path, capsys):
    source = write_official_archives(tmp_path / "downloads")
    (source / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    assert main([str(source), "--out", str(tmp_path / "data")]) == 2
    assert "no ILSVRC2012_devkit_t12.tar.gz next to ILSVRC2012_img_val.tar" in capsys.readouterr().err


def test_a_run_killed_mid_class_finishes_on_the_second_run(tmp_path, monkeypatch):
    import shutil

    source = write_official_archives(tmp_path / "downloads")
    out = tmp_path / "data"
    copy, copied = shutil.copyfileobj, []

    def killed_on_the_fifth_file(src, dst, *args):
        if len(copied) == 4:
            raise KeyboardInterrupt  # the kill: class 1 complete, class 2 has one file of three
        copied.append(dst.name)
        copy(src, dst, *args)

    monkeypatch.setattr(shutil, "copyfileobj", killed_on_the_fifth_file)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, out)
    assert sorted(os.listdir(out / "train")) == [WNIDS[0]]  # no half class under its final name
    partial = out / PARTIAL / "train" / WNIDS[1]  # the second file was opened, still empty, when killed
    assert sorted(os.listdir(partial)) == [f"{WNIDS[1]}_0.JPEG", f"{WNIDS[1]}_1.JPEG"]
    assert (partial / f"{WNIDS[1]}_1.JPEG").stat().st_size == 0
    monkeypatch.setattr(shutil, "copyfileobj", copy)
    prepare(source, out)
    assert tree_contents(out) == expected_tree()
