"""main.py --find_lr as users run it: the files it writes and what is in them."""

import csv
import json
import shutil

import pytest

from conftest import FAST, run_cli, run_main

SPEC_FIELDS = ["suggested_lr", "dataset", "batch_size", "lr_finder_epochs", "plot_file", "log_file", "timestamp"]
GROUPS = {"answer", "curve", "sweep", "verification", "data", "machine", "configuration"}


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
    assert list(result)[:7] == SPEC_FIELDS and GROUPS <= set(result) and result["schema_version"] == 2
    assert result["success"] is True and result["dataset"] == "imagenet1k" and result["batch_size"] == 4
    sweep, answer, curve = result["sweep"], result["answer"], result["curve"]
    assert sweep["lr_start"] == 1e-4 and sweep["lr_end"] == 1 and sweep["lr_iter"] == 12
    assert result["configuration"]["seed"] == 3 and result["configuration"]["arch"] == "resnet18"
    assert result["machine"]["device"] == "cpu" and result["plot_file"] == str(out / "plot.png")
    assert result["data"]["data_layout"] == "train_only" and result["data"]["val_labels_file"] is None
    assert (result["data"]["images"], result["data"]["classes"]) == (24, 3)
    assert 1e-4 <= result["suggested_lr"] <= 1
    assert sweep["stop_reason"] in ("completed", "diverged") and 2 <= sweep["steps_run"] <= 12
    # 24 images at batch 4: 6 batches per epoch, so 12 steps cycle the loader twice.
    assert result["lr_finder_epochs"] == pytest.approx(sweep["steps_run"] / 6, abs=1e-3)
    # the default (auto) with SGD is the bottom reading; the answer is the curve's, unverified
    assert answer["method"] == curve["method"] == "bottom" and result["verification"] is None
    assert result["suggested_lr"] == answer["lr"] == curve["lr"] == curve["readings"]["bottom"]
    assert answer["low"] < answer["lr"] < answer["high"] and answer["global_batch_size"] == 4
    assert set(curve["readings"]) == {"bottom", "rise", "steepest", "valley", "minimum"} and 0 <= curve["loss_drop"] <= 1

    rows = list(csv.DictReader((out / "lr_finder_history.csv").open()))
    assert len(rows) == sweep["steps_run"]
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss"]
    assert float(rows[0]["lr"]) == pytest.approx(1e-4) and float(rows[0]["loss"]) == float(rows[0]["smoothed_loss"])
    assert float(rows[1]["lr"]) == pytest.approx(1e-4 * (1e4 ** (1 / 11)))  # exponential steps
    assert float(rows[0]["lr"]) <= curve["min_loss_lr"] <= float(rows[-1]["lr"])  # a rate the sweep tried

    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "lr_finder_log.txt").read_text()
    for section in ("CONFIGURATION", "COMMAND", "OUTPUT", "RESULTS", "ANALYSIS", "Next steps:"):
        assert section in log
    rate = f"Learning rate: {result['suggested_lr']:.2e} (SGD, global batch 4); best expected between " \
           f"{answer['low']:.2e} and {answer['high']:.2e}"
    assert rate in log.splitlines()[:8] and rate in proc.stdout.splitlines()
    assert f"Train at this rate: uv run python main.py --lr {result['suggested_lr']:.3g}" in log


def test_a_run_never_reads_the_suggestion_study(image_folder, tmp_path, monkeypatch, capsys):
    """The study is documentation: a run opens none of its files, so a missing or damaged one
    cannot stop it."""
    import sys

    import main

    opened, watching = [], [True]

    def audit(event, args):
        if watching[0] and event == "open" and isinstance(args[0], str):
            opened.append(args[0])

    monkeypatch.chdir(tmp_path)
    (tmp_path / "suggestion_study_record.json").write_text("{damaged")
    sys.addaudithook(audit)  # an audit hook stays for the process: it is switched off below
    try:
        code = main.main(["--find_lr", "--data_dir", str(image_folder), "--lr_plot", str(tmp_path / "o" / "p.png"),
                          *FAST, "--lr_iter", "8"])
    finally:
        watching[0] = False
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "suggested_lr.json").read_text())["success"] is True
    assert not [path for path in opened if "suggestion_study" in path or "study_records" in path]
    assert any(path.startswith(str(image_folder)) for path in opened)  # the hook saw the run's own reads


def test_epoch_sweep_in_linear_mode_with_the_advanced_validation_curve(image_folder, tmp_path, capsys):
    code, _, err = run_main("--find_lr", "--data_dir", image_folder, "--lr_plot", tmp_path / "plot.png",
                            *FAST, "--lr_iter", "epoch", "--epochs", "2", "--max_samples", "12", "--lr_advanced",
                            "--lr_step_mode", "linear", "--lr_end", "0.1", "--lr_val_batches", "1",
                            "--lr_diverge_th", "1000")
    assert code == 0, err
    result = json.loads((tmp_path / "suggested_lr.json").read_text())
    sweep = result["sweep"]
    assert sweep["lr_iter"] == 6 and sweep["steps_run"] == 6  # 12 images / batch 4 = 3 steps, x 2 epochs
    assert result["lr_finder_epochs"] == 2.0 and result["data"]["data_layout"] == "class_folders"
    assert sweep["curve"] == "validation" and set(result["training_curve_readings"]) == {
        "bottom", "rise", "steepest", "valley", "minimum"}
    rows = list(csv.DictReader((tmp_path / "lr_finder_history.csv").open()))
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss", "val_loss"]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[2] - lrs[1] == pytest.approx(lrs[1] - lrs[0])  # linear steps
    assert all(float(r["val_loss"]) > 0 for r in rows)  # measured after every step


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
