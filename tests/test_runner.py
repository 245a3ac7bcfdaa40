"""run_lr_finder.py: child process, full log, JSON, failures and signals."""

import json
import signal
import subprocess
import sys
import time

from cli import DEMO_SETTINGS, parse_args, parse_layered
from run_lr_finder import collapse_carriage_returns, forwarded_argv, get_runner_parser

from conftest import FAST, REPO, run_cli


def test_runner_writes_named_plot_full_log_and_json(image_folder, tmp_path):
    out = tmp_path / "outputs"
    no_input_size = [flag for flag in FAST if flag not in ("--input_size", "32")]
    proc = run_cli("run_lr_finder.py", "--dataset", "digits", "--data_dir", image_folder, "--output_dir", out,
                   *no_input_size, "--lr_iter", "10", "--lr_end", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Range test: digits" in proc.stdout  # the child's output is shown live
    result = json.loads((out / "suggested_lr.json").read_text())
    assert result["success"] is True and result["schema_version"] == 2
    assert result["plot_file"] == str(out / "lr_finder_digits.png")
    assert result["log_file"] == str(out / "lr_finder_log.txt")
    assert (out / "lr_finder_digits.png").read_bytes()[:4] == b"\x89PNG"
    log = (out / "lr_finder_log.txt").read_text()
    # CONFIGURATION is what the child ran with, as its JSON records it: input_size derived for
    # digits (the runner's parser has None), lr_plot set by the runner (its parser has the default)
    config = log_config(log)
    assert config["input_size"] == "32" and config["batch_size"] == "4" and config["lr_iter"] == "10"
    assert config["dataset"] == "digits" and config["data_dir"] == str(image_folder)
    assert config["lr_plot"] == str(out / "lr_finder_digits.png") and "(note)" not in config
    assert result["configuration"]["input_size"] == 32 and result["configuration"]["data_dir"] == str(image_folder)
    command = log.split("COMMAND\n")[1].split("\n")[1]
    assert "main.py --find_lr" in command and "--batch_size 4" in command and "--lr_end 1.0" in command
    output = log.split("OUTPUT (stdout and stderr)\n")[1]
    assert "Range test: digits, resnet18, 24 training images in 3 classes" in output
    assert "10/10" in output  # the progress bar's final state, stderr captured too
    assert "\r" not in log
    rate = f"Learning rate: {result['suggested_lr']:.2e} (SGD, global batch 4); best expected between"
    assert log.splitlines()[5].startswith(rate)  # the answer opens the log, as the console said it
    assert sum(line.startswith(rate) for line in proc.stdout.splitlines()) == 1
    assert f"Outputs in {out}: lr_finder_digits.png, lr_finder_log.txt, suggested_lr.json" in proc.stdout


def test_failing_child_still_gives_log_and_unsuccessful_json(tmp_path):
    out = tmp_path / "outputs"
    proc = run_cli("run_lr_finder.py", "--data_dir", tmp_path / "missing", "--output_dir", out, *FAST)
    assert proc.returncode == 2
    result = json.loads((out / "suggested_lr.json").read_text())
    expected = f"error: --data_dir {tmp_path / 'missing'}: folder not found; it must contain train/ and val/"
    assert result["success"] is False and result["error"] == expected and result["suggested_lr"] is None
    assert result["plot_file"] is None and result["schema_version"] == 2
    log = (out / "lr_finder_log.txt").read_text()
    assert expected in log and "No learning rate could be suggested" in log
    config = log_config(log)
    assert config["(note)"].startswith("main.py recorded no configuration")
    assert config["data_dir"] == str(tmp_path / "missing") and config["input_size"] == "32"


def log_config(log: str) -> dict:
    section = log.split("CONFIGURATION\n")[1].split("=" * 80 + "\n")[1].split("\n" + "=" * 80)[0]
    return {key.strip(): value for key, value in (line.split(" : ", 1) for line in section.strip().splitlines())}


def test_sigint_to_the_runner_stops_the_sweep_and_keeps_partial_results(image_folder, tmp_path):
    out = tmp_path / "outputs"
    proc = subprocess.Popen([sys.executable, str(REPO / "run_lr_finder.py"), "--data_dir", str(image_folder),
                             "--output_dir", str(out), *FAST, "--lr_iter", "400", "--lr_end", "0.01",
                             "--lr_diverge_th", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        for line in proc.stdout:
            if line.startswith("Device:"):
                break
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        proc.stdout.read()
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    result = json.loads((out / "suggested_lr.json").read_text())
    sweep = result["sweep"]
    assert sweep["stop_reason"] == "interrupted" and 0 < sweep["steps_run"] < 400
    history = (out / "lr_finder_history.csv").read_text().strip().splitlines()
    assert len(history) == sweep["steps_run"] + 1
    assert "SIGINT received" in (out / "lr_finder_log.txt").read_text()


def test_only_changed_flags_are_forwarded():
    parser = get_runner_parser()
    args = parse_layered(parser, ["--batch_size", "8", "--no_cuda", "--lr_end", "1", "--output_dir", "x",
                                  "--lr_iter", "epoch"])
    words = forwarded_argv(args, parser)
    pairs = " ".join(words)
    assert "--batch_size 8" in pairs and "--lr_end 1.0" in pairs and "--lr_iter epoch" in pairs
    assert "--no_cuda" in words and len(words) == 7
    assert "--output_dir" not in words and "--find_lr" not in words


def test_flags_given_explicitly_are_forwarded_even_at_their_default():
    parser = get_runner_parser()
    argv = ["--demo", "--optimizer", "sgd", "--lr_iter", "100"]
    words = forwarded_argv(parse_layered(parser, argv), parser)
    assert " ".join(words) == "--demo --lr_iter 100 --optimizer sgd"
    argv = ["--recipe", "nvidia", "--momentum", "0.9", "--epochs", "90"]  # 90: the recipe's own value
    words = forwarded_argv(parse_layered(parser, argv), parser)
    assert " ".join(words) == "--momentum 0.9 --recipe nvidia"


def test_demo_settings_fill_only_the_flags_not_given(monkeypatch, tmp_path):
    monkeypatch.setattr("demo_data.ensure_digits_imagefolder", lambda: tmp_path)
    args = parse_args(["--find_lr", "--demo"])
    assert {name: getattr(args, name) for name in DEMO_SETTINGS} == DEMO_SETTINGS
    assert args.optimizer == "adamw" and args.data_dir == str(tmp_path)
    args = parse_args(["--find_lr", "--demo", "--optimizer", "sgd", "--batch_size", "32", "--lr_end", "10"])
    assert (args.optimizer, args.batch_size, args.lr_end, args.lr_iter) == ("sgd", 32, 10.0, 150)


def test_progress_bar_redraws_collapse_to_their_final_state():
    assert collapse_carriage_returns("a\r b\r c\nnext\n") == " c\nnext\n"
