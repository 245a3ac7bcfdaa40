"""main.py --find_lr as users run it: the files it writes and what is in them."""

import csv
import json
import shutil

import pytest

from report import study_line

from conftest import FAST, REPO, run_cli

SPEC_FIELDS = {"suggested_lr", "dataset", "batch_size", "lr_finder_epochs", "plot_file", "log_file", "timestamp"}
OUR_FIELDS = {"success", "lr_start", "lr_end", "lr_iter", "steps_run", "diverged", "device", "seed", "study_record"}


def find_lr(data, out, *extra):
    return run_cli("main.py", "--find_lr", "--data_dir", data, "--lr_plot", out / "plot.png", *FAST, *extra)


def test_find_lr_writes_plot_log_json_and_history(image_folder, tmp_path):
    out = tmp_path / "results" / "nested"  # created on demand
    shutil.rmtree(image_folder / "val")  # a flat val/ with no labels anywhere: the range test does not read it
    (image_folder / "val").mkdir()
    shutil.copy(image_folder / "train" / "cat" / "cat_000.JPEG", image_folder / "val" / "ILSVRC2012_val_00000001.JPEG")
    proc = find_lr(image_folder, out, "--lr_iter", "12", "--lr_start", "1e-4", "--lr_end", "1", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "suggested_lr.json").read_text())
    assert SPEC_FIELDS | OUR_FIELDS <= set(result)
    assert result["success"] is True and result["dataset"] == "imagenet1k" and result["batch_size"] == 4
    study = result["study_record"]  # the study's counts for this answer's confidence and optimizer
    committed = json.loads((REPO / "suggestion_study_record.json").read_text())["cases"]
    same = [c for c in committed if c["confidence"] == result["confidence"] and c["optimizer"] == "sgd"]
    assert study["curve_confidence"] == result["confidence"] and study["optimizer"] == "sgd"
    assert study["same_confidence_and_optimizer"]["cases"] == len(same) and study["test_cases"] == len(committed)
    assert study_line(study) in proc.stdout
    assert "Suggestion study (docs/suggestion_study.md, record of " in (out / "lr_finder_log.txt").read_text()
    assert result["lr_start"] == 1e-4 and result["lr_end"] == 1 and result["lr_iter"] == 12 and result["seed"] == 3
    assert result["device"] == "cpu" and result["plot_file"] == str(out / "plot.png")
    assert result["data_layout"] == "train_only" and result["val_labels_file"] is None
    assert 1e-4 <= result["suggested_lr"] <= 1
    assert result["stop_reason"] in ("completed", "diverged") and 2 <= result["steps_run"] <= 12
    assert result["diverged"] == (result["stop_reason"] == "diverged")
    # 24 images at batch 4: 6 batches per epoch, so 12 steps cycle the loader twice.
    assert result["lr_finder_epochs"] == pytest.approx(result["steps_run"] / 6, abs=1e-3)

    rows = list(csv.DictReader((out / "lr_finder_history.csv").open()))
    assert len(rows) == result["steps_run"]
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss"]
    assert float(rows[0]["lr"]) == pytest.approx(1e-4) and float(rows[0]["loss"]) == float(rows[0]["smoothed_loss"])
    assert float(rows[1]["lr"]) == pytest.approx(1e-4 * (1e4 ** (1 / 11)))  # exponential steps
    from suggest import auto_method, find_landmarks, suggest_all

    lrs, raw = [float(r["lr"]) for r in rows], [float(r["loss"]) for r in rows]
    method = auto_method("sgd")  # the default, auto, with the default optimizer: rise
    assert result["suggestion_method"] == method and result["suggested_lr"] == result["suggestions"][method]
    assert result["suggestions"] == pytest.approx(suggest_all(lrs, raw, 0.05))
    assert result["loss_drop"] == pytest.approx(find_landmarks(lrs, raw).loss_drop, abs=1e-4)

    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "lr_finder_log.txt").read_text()
    for section in ("CONFIGURATION", "COMMAND", "OUTPUT", "RESULTS", "ANALYSIS", "Recommended next steps"):
        assert section in log
    assert f"Use learning rate: {result['suggested_lr']:.2e}" in log
    assert f"Suggested learning rate: {result['suggested_lr']:.2e}" in proc.stdout


def test_epoch_sweep_in_linear_mode_with_the_advanced_validation_curve(image_folder, tmp_path):
    proc = find_lr(image_folder, tmp_path, "--lr_iter", "epoch", "--epochs", "2", "--max_samples", "12",
                   "--lr_advanced", "--lr_step_mode", "linear", "--lr_end", "0.1", "--lr_val_batches", "1",
                   "--lr_diverge_th", "1000")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "suggested_lr.json").read_text())
    assert result["lr_iter"] == 6 and result["steps_run"] == 6  # 12 images / batch 4 = 3 steps, x 2 epochs
    assert result["lr_finder_epochs"] == 2.0 and result["data_layout"] == "class_folders"
    assert "study_record" not in result  # the study measured the training curve's default reading only
    assert result["curve"] == "validation" and set(result["suggestions_training_curve"]) == {
        "rise", "steepest", "valley", "minimum"}
    rows = list(csv.DictReader((tmp_path / "lr_finder_history.csv").open()))
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss", "val_loss"]
    lrs = [float(r["lr"]) for r in rows]
    from suggest import suggest_all

    val_losses = [float(r["val_loss"]) for r in rows]  # suggestions come from the val curve
    assert result["suggestions"] == pytest.approx(suggest_all(lrs, val_losses, 0.05))
    assert lrs[2] - lrs[1] == pytest.approx(lrs[1] - lrs[0])  # linear steps


@pytest.mark.parametrize("flags,message", [
    (["--lr_start", "1", "--lr_end", "0.1"], "--lr_start 1 must be smaller than --lr_end 0.1"),
    (["--lr_start", "-1"], "learning rates must be positive"),
    (["--lr_smooth_f", "1.0"], "--lr_smooth_f 1 must be in [0, 1)"),
    (["--lr_iter", "1"], "the range test needs at least 2"),
    (["--lr_iter", "lots"], "'lots' is neither an integer nor 'epoch'"),
    (["--lr_step_mode", "cubic"], "invalid choice: 'cubic'"),
    (["--batch_size", "0"], "--batch_size 0 must be at least 1"),
])
def test_bad_flags_fail_in_one_line_with_exit_code_2(image_folder, tmp_path, flags, message):
    proc = find_lr(image_folder, tmp_path, *flags)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.glob("*.json"))


def test_missing_data_dir_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    # In-process; test_runner.py checks the same line from a real main.py child process.
    import main

    out = tmp_path / "out"
    argv = ["--find_lr", "--data_dir", str(tmp_path / "nowhere"), "--lr_plot", str(out / "p.png"), *FAST]
    assert main.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --data_dir {tmp_path / 'nowhere'}: folder not found; it must contain train/ and val/"]
    assert not (out / "suggested_lr.json").exists()


@pytest.mark.parametrize("extra,message", [
    (["--batch_size", "64"], "--batch_size 64 is larger than the 24 training images"),
    (["--precision", "fp16"], "--precision fp16 needs a CUDA device"),
])
def test_runtime_input_errors_are_one_line_and_write_nothing(image_folder, tmp_path, capsys, extra, message):
    import main

    out = tmp_path / "out"
    argv = ["--find_lr", "--data_dir", str(image_folder), "--lr_plot", str(out / "p.png"), *FAST, *extra]
    assert main.main(argv) == 2  # a repeated flag's last value wins, so extra overrides FAST
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (out / "suggested_lr.json").exists()


def test_unwritable_output_folder_is_refused_before_any_work(image_folder, tmp_path, capsys):
    import main

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["--find_lr", "--data_dir", str(image_folder), "--lr_plot", str(blocker / "sub" / "p.png"), *FAST]
    assert main.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {blocker / 'sub'}: cannot write results there (Not a directory); "
                   "choose another --lr_plot folder"]


def test_out_of_memory_names_the_batch_size_and_suggests_half(image_folder, tmp_path, capsys, monkeypatch):
    import torch

    import find_lr
    import main

    def exhausted(args, dist):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(find_lr, "run_find_lr", exhausted)
    argv = ["--find_lr", "--data_dir", str(image_folder), "--lr_plot", str(tmp_path / "p.png"), *FAST]
    argv[argv.index("--batch_size") + 1] = "256"
    assert main.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: out of memory on cpu at --batch_size 256; try --batch_size 128"]
