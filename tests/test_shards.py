"""WebDataset shards: written by prepare_imagenet.py --format wds, read by the suite with the same
classes and images as the tree, equal steps on every rank, bad samples and truncated shards."""

import json
import os
import re
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from imagenet_fixtures import VAL_NAMES, VAL_WNIDS, WNIDS, write_official_archives
from test_distributed import torchrun

from prepare_imagenet import main as prepare_main
from preprocess import EpochSampler, build_datasets, build_loader
from shards import ShardImages, Shards, batches_skipped, rank_shards, share_out

from conftest import FAST, REPO, make_image_folder, run_cli, run_main

CPU = __import__("torch").device("cpu")


def write_shards(tree: Path, out: Path, shard_size: int, *extra) -> Path:
    """prepare_imagenet.py SOURCE --out DIR --format wds, in this process (the CLI is run below)."""
    assert prepare_main([str(tree), "--out", str(out), "--format", "wds", "--shard_size", str(shard_size),
                         *extra]) == 0
    return out


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_image_folder(tmp_path / "tree", per_class=7, val_per_class=3)  # 21 train, 9 val


def raw_samples(folder: Path, split: str) -> dict[str, tuple[int, str]]:
    """{filename in the json sidecar: (.cls, __key__)} over a split's shards."""
    found = {}
    for path in sorted(folder.glob(f"imagenet1k-{split}-*.tar")):
        for sample in wds.WebDataset(str(path), shardshuffle=False):
            found[json.loads(sample["json"])["filename"]] = (int(sample["cls"]), sample["__key__"])
    return found


def labels_read(dataset, batch_size=4, workers=0, train=False, schedule=None) -> list[int]:
    loader = build_loader(dataset, batch_size, train, workers, CPU, 0, schedule)
    return [int(y) for _, labels, _ in loader for y in labels]


def test_shards_from_a_tree_hold_its_images_with_its_class_indices(tree, tmp_path):
    out = write_shards(tree, tmp_path / "wds", 4)
    info = json.loads((out / "_info.json").read_text())
    assert info["classes"] == ["cat", "dog", "fox"]
    assert info["splits"]["train"]["shard_lengths"] == [4, 4, 4, 4, 4, 1]
    assert sorted(p.name for p in out.glob("*.tar"))[:2] == ["imagenet1k-train-0000.tar", "imagenet1k-train-0001.tar"]
    assert (out / "imagenet1k-validation-00.tar").is_file() and not list(out.glob("*.partial"))

    tree_train, tree_val = build_datasets("imagenet1k", str(tree), 32)
    for split, ds in (("train", tree_train), ("validation", tree_val)):
        expected = {os.path.relpath(ds.paths[i], tree / ("train" if split == "train" else "val")): int(ds.targets[i])
                    for i in range(len(ds))}
        assert {name: cls for name, (cls, _) in raw_samples(out, split).items()} == expected

    train, val = build_datasets("imagenet1k", str(out), 32)
    assert train.classes == tree_train.classes and len(train) == 21 and len(val) == 9
    assert train.layout["data_layout"] == "wds_shards"
    assert sorted(labels_read(val)) == sorted(tree_val.targets.tolist())  # every val image once, same labels
    assert len({key for _, key in raw_samples(out, "train").values()}) == 21  # one key per image
    order = [json.loads(s["json"])["filename"] for s in wds.WebDataset(str(out / "imagenet1k-train-0000.tar"),
                                                                      shardshuffle=False)]
    assert len({name.split("/")[0] for name in order}) > 1  # images shuffled across shards, not class by class


def test_official_archives_become_shards_with_the_devkit_labels(tmp_path):
    source = write_official_archives(tmp_path / "downloads")
    proc = run_cli("prepare_imagenet.py", source, "--out", tmp_path / "wds", "--format", "wds")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "9 train and 6 val images in 3 classes" in proc.stdout
    val = raw_samples(tmp_path / "wds", "validation")
    assert {name: WNIDS[cls] for name, (cls, _) in val.items()} == {
        f"{w}/{n}": w for n, w in zip(VAL_NAMES, VAL_WNIDS)}
    assert {key for _, key in val.values()} == {n.removesuffix(".JPEG") for n in VAL_NAMES}  # timm's keys


def test_a_killed_write_is_resumed_shard_by_shard_and_gives_the_same_shards(tree, tmp_path):
    out = write_shards(tree, tmp_path / "wds", 4)
    first = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    (out / "imagenet1k-train-0003.tar").unlink()
    (out / "imagenet1k-train-0003.tar.partial").write_bytes(b"half a shard")
    (out / "_info.json").unlink()
    write_shards(tree, out, 4)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == first
    assert not list(out.glob("*.partial"))
    clash = run_cli("prepare_imagenet.py", tree, "--out", out, "--format", "wds", "--shard_size", 4, "--seed", 1)
    assert clash.returncode == 2 and "holds shards of another job" in clash.stderr
    assert len(clash.stderr.strip().splitlines()) == 1


def test_schedule_helpers():
    assert share_out(5, [9, 0, 3]) == [4, 0, 1]
    assert share_out(0, [1, 1]) == [0, 0] and share_out(3, [0, 0]) == [0, 0]
    assert batches_skipped([3, 1, 2], 4) == [2, 1, 1]  # turns: w0 w1 w2 w0 | w2 w0
    assert batches_skipped([3, 1, 2], 6) == [3, 1, 2]
    assert sorted(rank_shards(5, 0, 2, 7) + rank_shards(5, 1, 2, 7)) == [0, 1, 2, 3, 4]
    assert rank_shards(1, 1, 2, 7) == [0]  # fewer shards than ranks: every rank still reads one


@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_takes_the_same_steps_on_uneven_shards(tree, tmp_path, workers):
    out = write_shards(tree, tmp_path / "wds", 9)  # shards of 9, 9 and 3 images
    train, _ = build_datasets("imagenet1k", str(out), 32, need_val=False)
    assert train.shards.sizes == (9, 9, 3)
    for epoch in range(3):  # the shard order, hence each rank's share of images, changes every epoch
        steps = []
        for rank in range(2):
            sampler = EpochSampler(len(train), 0, True, rank, 2)
            sampler.set_epoch(epoch)
            loader = build_loader(train, 2, True, workers, CPU, 0, sampler)
            labels = labels_read(train, 2, workers, True, sampler)
            assert len(labels) == 2 * len(loader)
            steps.append(len(loader))
        assert steps == [5, 5]  # 21 images // 2 ranks // batch 2


def test_a_resumed_epoch_reads_the_rest_of_the_same_stream(tree, tmp_path):
    out = write_shards(tree, tmp_path / "wds", 4)
    train, _ = build_datasets("imagenet1k", str(out), 32, need_val=False)
    sampler = EpochSampler(len(train), 3, True, 0, 1)
    loader = build_loader(train, 2, True, 2, CPU, 0, sampler)
    whole = [(tuple(y.tolist()), x.sum().item()) for x, y, _ in loader]
    sampler.set_epoch(0, start=2 * 3)  # resume after 3 steps
    assert len(loader) == len(whole) - 3
    rest = [(tuple(y.tolist()), x.sum().item()) for x, y, _ in loader]
    assert sorted(rest) == sorted(whole[3:])


def test_a_corrupt_image_is_skipped_and_counted_once(tree, tmp_path, capsys):
    (tree / "train" / "dog" / "dog_002.JPEG").write_bytes(b"not a jpeg at all")
    out = write_shards(tree, tmp_path / "wds", 4)
    train, _ = build_datasets("imagenet1k", str(out), 32, need_val=False)
    sampler = EpochSampler(len(train), 0, True, 0, 1)
    loader = build_loader(train, 3, True, 0, CPU, 0, sampler)
    bad, images = set(), 0
    for _ in range(2):  # two epochs: the same sample, the same id
        for x, y, skipped in loader:
            images += len(y)
            bad.update(i for i in skipped.tolist() if i >= 0)
    assert len(bad) == 1 and images == 2 * 21 // 3 * 3  # a stand-in took its place: batches stay full
    assert re.search(r"warning: skipping imagenet1k-train-\d{4}\.tar:dog_002: not a readable image",
                     capsys.readouterr().err)


def test_a_truncated_shard_is_named_with_what_was_read_before_it(tree, tmp_path, capsys):
    out = write_shards(tree, tmp_path / "wds", 5)  # validation shards of 5 and 4 images
    shard = out / "imagenet1k-validation-00.tar"
    with tarfile.open(shard) as tar:
        third_jpg = [m for m in tar if m.name.endswith(".jpg")][2]
    os.truncate(shard, third_jpg.offset_data + 100)  # cut inside the third sample's image
    _, val = build_datasets("imagenet1k", str(out), 32)
    labels = labels_read(val)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "truncated or unreadable" in line]
    assert len(lines) == 1
    assert re.fullmatch(rf"warning: {re.escape(str(shard))}: truncated or unreadable after 2 of 5 samples "
                        r"\(last: \w+\); ReadError: .*; the rest of it is skipped", lines[0])
    assert len(labels) == 4 + 2  # the other shard, and the two samples before the cut


def test_lines_and_exit_code_2_for_empty_folders_and_missing_shards(tree, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_main("--find_lr", "--data_dir", empty, "--lr_plot", tmp_path / "o" / "p.png", *FAST)
    assert code == 2 and err.strip() == (
        f"error: --data_dir {empty}: the folder is empty; put train/ and val/ class folders there, "
        "or WebDataset shards named like imagenet1k-train-0000.tar")

    out = write_shards(tree, tmp_path / "wds", 4)
    (out / "imagenet1k-train-0002.tar").unlink()
    capsys.readouterr()  # the writer's progress
    code, _, err = run_main("--find_lr", "--data_dir", out, "--lr_plot", tmp_path / "o" / "p.png", *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"error: {out / 'imagenet1k-train-0002.tar'}: listed in the shards' metadata but missing" in err

    for p in out.glob("imagenet1k-train-*.tar"):
        p.unlink()
    code, _, err = run_main("--data_dir", out, "--lr", "0.1", "--output_dir", tmp_path / "t", *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no <name>-train-NNNN.tar shards (found imagenet1k-validation-00.tar" in err
    assert not (tmp_path / "o" / "suggested_lr.json").exists()


def test_range_test_then_one_training_epoch_on_shards(tree, tmp_path):
    out = write_shards(tree, tmp_path / "wds", 4)
    proc = run_cli("main.py", "--find_lr", "--train", "--data_dir", out, "--lr_plot", tmp_path / "o" / "p.png",
                   "--lr_iter", "epoch", "--lr_end", "1", "--epochs", "1", "--output_dir", tmp_path / "t", *FAST,
                   "--no_plots", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "o" / "suggested_lr.json").read_text())
    assert record["data"]["data_layout"] == "wds_shards" and record["sweep"]["lr_iter"] == 21 // 4
    assert record["sweep"]["steps_run"] == 21 // 4
    rows = (tmp_path / "t" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[7] == "9"  # every val image once
    assert "21 images in 3 classes, 1 epochs x 5 steps" in proc.stdout


def test_two_ranks_on_uneven_shards_take_equal_steps_and_finish(tree, tmp_path):
    out = write_shards(tree, tmp_path / "wds", 9)  # 9, 9 and 3 images: one rank reads 18 or 12, the other 3 or 9
    debug = tmp_path / "ranks"
    proc = torchrun("--find_lr", "--data_dir", out, "--lr_plot", tmp_path / "o" / "p.png", "--input_size", "32",
                    "--batch_size", "2", "--num_workers", "1", "--precision", "fp32", "--lr_iter", "epoch",
                    "--epochs", "2", "--lr_end", "1", env_extra={"RANK_SWEEPS_DIR": str(debug)},
                    script=REPO / "tests" / "rank_sweeps.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((debug / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["lrs"]) == len(ranks[1]["lrs"]) == 2 * (21 // 2 // 2)
    assert ranks[0]["losses"] == ranks[1]["losses"]


def test_lr_verify_on_shards_is_refused_in_one_line(tree, tmp_path, capsys):
    out = write_shards(tree, tmp_path / "wds", 4)
    capsys.readouterr()  # the writer's progress
    code, _, err = run_main("--find_lr", "--lr_verify", "5", "--data_dir", out, "--lr_plot",
                            tmp_path / "o" / "p.png", *FAST)
    assert code == 2 and err.startswith("error: --lr_verify picks held-out images by index")
    assert len(err.strip().splitlines()) == 1


def test_shard_dataset_without_metadata_counts_samples_from_tar_headers(tree, tmp_path):
    out = write_shards(tree, tmp_path / "wds", 4)
    (out / "_info.json").unlink()
    train, val = build_datasets("imagenet1k", str(out), 32)
    assert len(train) == 21 and len(val) == 9 and train.classes == [str(k) for k in range(1000)]
    assert isinstance(train, ShardImages) and isinstance(train.shards, Shards)


def test_bench_shard_read_writes_both_rates_their_ratio_and_worker_memory(tmp_path):
    out = tmp_path / "shards.json"
    proc = run_cli("benchmarks/bench.py", "--shards", "--tiny", "--json", out, "--workdir", tmp_path / "work",
                   timeout=300, env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["images"] == 16 and figures["shards"] == 8
    assert figures["shards_vs_tree"] == pytest.approx(figures["ratio_samples"][0], abs=1e-3)
    for key in ("shards_img_s", "tree_img_s"):
        assert figures[key] > 0
    assert all(figures["worker_private_mb"][k] > 0 and figures["worker_rss_mb"][k] > 0 for k in ("shards", "tree"))
    assert "shards / tree:" in proc.stdout and "| class-folder tree |" in proc.stdout
