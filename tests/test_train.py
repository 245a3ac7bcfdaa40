"""Training: schedules against their formulas, metrics, checkpoints, kill-and-resume, --lr_from."""

import csv
import json
import math
import sys

import pytest
import torch

from errors import UserInputError
from lr_source import describe_lr_source, lr_from_json, read_lr_from, scale_lr
from train import topk_correct
from train_setup import build_scheduler, lr_multiplier

from conftest import FAST, REPO, kill_after, make_image_folder, run_cli, run_main

TRAIN = ["--lr", "0.02", "--epochs", "2", *FAST, "--seed", "1"]


def lrs_of(scheduler_name, steps, **kw):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    sched = build_scheduler(opt, scheduler_name, 0.1, **kw)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_cosine_follows_half_cosine_per_iteration():
    got = lrs_of("cosine", 10, epochs=2, steps_per_epoch=5)
    assert got == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])


def test_linear_warmup_then_cosine():
    got = lrs_of("cosine", 8, epochs=4, steps_per_epoch=2, warmup_epochs=1)
    assert got[:2] == pytest.approx([0.05, 0.1])
    assert got[2:] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])


def test_step_decays_at_epoch_boundaries():
    got = lrs_of("step", 9, epochs=3, steps_per_epoch=3, step_size=1, gamma=0.5)
    assert got == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)
    assert lr_multiplier(7, "none", 9, 3) == 1.0


def test_onecycle_peaks_at_lr_and_anneals():
    got = lrs_of("onecycle", 20, epochs=2, steps_per_epoch=10)
    assert got[0] == pytest.approx(0.1 / 25)
    assert max(got) == pytest.approx(0.1, rel=1e-3) and got.index(max(got)) in (5, 6)  # 30% of 20 steps
    assert got[-1] < got[10] < max(got)


def test_topk_on_a_hand_made_batch():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # top-1: 1
                           [0.5, 0.1, 0.4, 0.3, 0.2, 0.0],   # 2 is 2nd
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])  # 0 is last (6th)
    assert topk_correct(logits, torch.tensor([1, 2, 0])) == [1, 2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = make_image_folder(root / "data")
    code, stdout, err = run_main("--data_dir", data, "--output_dir", root / "full", *TRAIN)
    assert code == 0, err
    return root, data, stdout


def rows(path):
    return list(csv.DictReader(path.open()))


def test_two_epochs_write_metrics_plot_config_and_checkpoints(trained):
    root, _, stdout = trained
    out = root / "full"
    metrics = rows(out / "metrics.csv")
    assert [r["epoch"] for r in metrics] == ["1", "2"]
    assert all(0 <= float(r["val_top1"]) <= float(r["val_top5"]) <= 100 for r in metrics)
    assert float(metrics[-1]["lr"]) == pytest.approx(0.0, abs=1e-9)  # cosine ends at zero
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.02 and config["num_classes"] == 3 and config["scheduler"] == "cosine"
    assert config["data_layout"] == "class_folders" and config["val_labels_file"] is None
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and last["step_in_epoch"] == 0 and len(last["lr_trace"]) == 12
    assert best["best_top1"] == max(float(r["val_top1"]) for r in metrics)
    assert "epoch 2/2: train loss" in stdout


def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(trained):
    root, data, _ = trained
    out = root / "killed"
    cmd = [sys.executable, str(REPO / "main.py"), "--data_dir", str(data), "--output_dir", str(out), *TRAIN,
           "--checkpoint_every", "1"]
    kill_after(cmd, out / "last.pt", 3, steps_per_epoch=6, timeout=120)
    killed_at = torch.load(out / "last.pt", weights_only=True)
    assert (killed_at["epoch"], killed_at["step_in_epoch"]) != (2, 0)

    code, stdout, err = run_main("--data_dir", data, "--output_dir", out, *TRAIN, "--checkpoint_every", "1",
                                 "--resume", "auto")
    assert code == 0, err
    assert "Resuming from" in stdout
    full, again = rows(root / "full" / "metrics.csv"), rows(out / "metrics.csv")
    for a, b in zip(full, again, strict=True):
        for key in ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
    w_full = torch.load(root / "full" / "last.pt", weights_only=True)["model"]
    w_again = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(w_full[k].float(), w_again[k].float(), atol=1e-5) for k in w_full)


def test_resume_refuses_other_settings_and_names_them(trained, capsys):
    import main

    root, data, _ = trained
    argv = ["--data_dir", str(data), "--output_dir", str(root / "full"), *TRAIN, "--resume", "auto"]
    argv[argv.index("0.02")] = "0.05"
    assert main.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was made with other settings (lr: checkpoint 0.02 vs now 0.05)" in err[0]


@pytest.mark.parametrize("content,message", [(None, "no such checkpoint file"),
                                             (b"not a checkpoint", "not a readable checkpoint")])
def test_missing_or_corrupt_checkpoint_is_an_error_not_a_fresh_start(tmp_path, capsys, content, message):
    import main

    data = make_image_folder(tmp_path / "data", per_class=2, val_per_class=1)
    ckpt = tmp_path / "last.pt"
    if content is not None:
        ckpt.write_bytes(content)
    assert main.main(["--data_dir", str(data), "--output_dir", str(tmp_path / "o"), *TRAIN, "--resume", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(ckpt) in err[0]
    assert not (tmp_path / "o" / "metrics.csv").exists()


def test_lr_from_reads_the_finder_json(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"success": True, "suggested_lr": 0.0123, "schema_version": 2, "answer": {}}))
    assert read_lr_from(str(good))["suggested_lr"] == 0.0123
    older = tmp_path / "older.json"  # written before the result had its groups
    older.write_text(json.dumps({"success": True, "suggested_lr": 0.0123, "global_batch_size": 256}))
    with pytest.raises(UserInputError, match=r"older\.json: written by an older version of the finder \(no "
                                             r"schema_version 2\); rerun the finder, or pass --lr 0\.0123"):
        read_lr_from(str(older))
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"success": False, "error": "error: no suggestion", "suggested_lr": None}))
    with pytest.raises(UserInputError, match=r"that sweep did not succeed \(error: no suggestion\)"):
        read_lr_from(str(failed))
    with pytest.raises(UserInputError, match="cannot read it"):
        read_lr_from(str(tmp_path / "absent.json"))


def test_lr_from_and_lr_together_is_refused():
    proc = run_cli("main.py", "--lr_from", "x.json", "--lr", "0.1")
    assert proc.returncode == 2 and "--lr_from gives the learning rate" in proc.stderr


def test_scaling_rules_for_another_global_batch():
    assert scale_lr(0.1, 32, 256, "sgd") == (pytest.approx(0.8), "linear")
    assert scale_lr(0.1, 256, 64, "sgd") == (pytest.approx(0.025), "linear")
    assert scale_lr(0.1, 32, 128, "adamw") == (pytest.approx(0.2), "sqrt")
    assert scale_lr(0.1, 64, 64, "sgd") == (0.1, "none")


def test_lr_from_scales_to_the_training_batch_unless_told_not_to(tmp_path):
    found = tmp_path / "suggested_lr.json"
    found.write_text(json.dumps({"success": True, "suggested_lr": 0.05, "schema_version": 2, "answer": {
        "method": "rise", "global_batch_size": 32, "optimizer": "sgd"}}))
    lr, record = lr_from_json(str(found), 128, "sgd", no_scaling=False)
    assert lr == pytest.approx(0.2)
    assert record == {"file": str(found), "suggested_lr": 0.05, "suggestion_method": "rise", "sweep_global_batch": 32,
                      "sweep_optimizer": "sgd", "train_optimizer": "sgd", "train_global_batch": 128,
                      "scaling": "linear", "lr": lr, "sweep_recipe": None, "setting_warnings": []}
    assert describe_lr_source(record) == (
        f"--lr_from {found}: suggested 0.05 at global batch 32; scaled to global batch 128 by the linear (SGD) "
        "rule: 0.2 (--no_lr_scaling keeps the found rate)")
    kept, record = lr_from_json(str(found), 128, "adamw", no_scaling=True)
    assert kept == 0.05 and record["scaling"] == "none"
    assert describe_lr_source(record).endswith("training with it as it is (--no_lr_scaling)\nwarning: the sweep "
                                               "used optimizer sgd and training uses adamw, so the rate may not "
                                               "carry over")


def test_training_from_a_finder_json_records_the_scaling_in_config(tmp_path, capsys):
    import main

    data = make_image_folder(tmp_path / "data", per_class=8, val_per_class=2)
    found = tmp_path / "suggested_lr.json"
    found.write_text(json.dumps({"success": True, "suggested_lr": 0.01, "schema_version": 2,
                                 "answer": {"global_batch_size": 4, "optimizer": "sgd"}}))
    flags = [f for f in TRAIN if f not in ("--lr", "0.02")]
    flags[flags.index("--batch_size") + 1] = "8"
    flags[flags.index("--epochs") + 1] = "1"
    assert main.main(["--lr_from", str(found), "--data_dir", str(data), "--output_dir", str(tmp_path / "o"),
                      *flags, "--no_plots"]) == 0
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["lr"] == pytest.approx(0.02)  # 0.01 found at batch 4, trained at 8: linear
    assert config["lr_from_record"]["scaling"] == "linear" and config["lr_from_record"]["suggested_lr"] == 0.01
    assert "scaled to global batch 8 by the linear (SGD) rule: 0.02" in capsys.readouterr().out


def test_no_lr_scaling_without_lr_from_is_refused(capsys):
    import main

    with pytest.raises(SystemExit) as stop:
        main.main(["--lr", "0.1", "--no_lr_scaling"])
    assert stop.value.code == 2 and "--no_lr_scaling goes with --lr_from" in capsys.readouterr().err
