"""torchrun with 2 CPU processes (gloo): every rank in step, rank 0 alone writes."""

import csv
import json
import subprocess
import sys

import pytest

from conftest import FAST, REPO

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SMALL = [*FAST, "--batch_size", "2"]


def torchrun(*args, env_extra=None, timeout=300, script=REPO / "main.py"):
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([*TORCHRUN, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_two_process_range_test_records_one_curve_on_every_rank(image_folder, tmp_path):
    ranks = tmp_path / "ranks"
    out = tmp_path / "out"
    proc = torchrun("--find_lr", "--data_dir", image_folder, "--lr_plot", out / "p.png", *SMALL,
                    "--lr_iter", "8", "--lr_end", "1", env_extra={"RANK_SWEEPS_DIR": str(ranks)},
                    script=REPO / "tests" / "rank_sweeps.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "suggested_lr.json").read_text())
    assert result["batch_size"] == 2 and result["answer"]["global_batch_size"] == 4
    assert result["sweep"]["world_size"] == 2
    rank0, rank1 = (json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["losses"] == rank1["losses"] and rank0["lrs"] == rank1["lrs"]
    assert rank0["stop_reason"] == rank1["stop_reason"] == result["sweep"]["stop_reason"]
    rows = list(csv.DictReader((out / "lr_finder_history.csv").open()))
    assert [float(r["loss"]) for r in rows] == pytest.approx(rank0["raw_losses"])
    assert proc.stdout.count("Learning rate: ") == 1  # rank 0 alone reports and writes


def test_two_process_training_evaluates_every_val_image_once(tmp_path):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=4, val_per_class=3)  # 9 val images: shards of 5 and 4
    out = tmp_path / "train"
    proc = torchrun("--data_dir", data, "--output_dir", out, "--lr", "0.01", "--epochs", "1", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and rows[0]["val_images"] == "9"
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch_size"] == 4
    import torch

    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # loadable without DDP


def test_a_failing_rank_fails_the_job_instead_of_hanging(tmp_path):
    proc = torchrun("--find_lr", "--data_dir", tmp_path / "missing", "--lr_plot", tmp_path / "p.png", *SMALL,
                    timeout=180)
    assert proc.returncode != 0
    assert f"error: --data_dir {tmp_path / 'missing'}: folder not found" in proc.stderr


def test_an_unreadable_file_met_by_both_ranks_counts_once(tmp_path):
    """120 images and one text file named .JPEG; the data order changes every pass, and the seed is
    one whose first two passes give the bad file to each rank in turn: both ranks meet it (each
    warns once), and the JSON counts 1 unreadable file, not 2."""
    from preprocess import EpochSampler

    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=40, val_per_class=0, size=16)
    (data / "train" / "cat" / "cat_zz_text.JPEG").write_text("not an image")  # position 40 of 121

    def rank_of_bad_file(seed, epoch):
        for rank in (0, 1):
            sampler = EpochSampler(121, seed, True, rank, 2)
            sampler.set_epoch(epoch)
            if 40 in [position for position, _ in sampler]:
                return rank

    seed = next(s for s in range(100) if {rank_of_bad_file(s, 0), rank_of_bad_file(s, 1)} == {0, 1})
    out = tmp_path / "out"
    # batch 15: each rank's 60 images are 4 whole batches, so 8 steps are exactly passes 0 and 1
    proc = torchrun("--find_lr", "--data_dir", data, "--lr_plot", out / "p.png", *SMALL, "--input_size", "16",
                    "--batch_size", "15", "--lr_iter", "8", "--lr_end", "1", "--seed", seed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("cat_zz_text.JPEG: not a readable image") == 2  # one warning per rank
    assert json.loads((out / "suggested_lr.json").read_text())["sweep"]["bad_images"] == 1
