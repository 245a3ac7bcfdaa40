"""Every flag that takes a number, of main.py and of run_lr_finder.py, fed nan, inf, 0, negatives
and huge values: either a normal parse with a finite value, or one line naming the flag, exit 2,
no traceback. The flags are enumerated from the parsers, so a new one is covered by itself."""

import contextlib
import io
import json
import math

import pytest

import cli
import run_lr_finder

from conftest import FAST, run_cli, run_main

# (parse + validate as the script does, the words every command line starts with)
ENTRY_POINTS = {
    "main.py": (cli.get_args_parser, lambda argv: cli.parse_args(argv), ["--find_lr"]),
    "run_lr_finder.py": (run_lr_finder.get_runner_parser, lambda argv: run_lr_finder.parse_runner_args(argv)[0], []),
}
NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400"]
EDGES = ["0", "-0", "-1", "-1e-9", "1e-320", "-7", "2", "1e308", "1e30", str(10**30), str(-(10**30)), str(2**63),
         "0.5", "3"]


def numeric_flags(parser) -> list[str]:
    """Each flag whose value argparse converts (type=...): every numeric flag of the suite."""
    return sorted(a.option_strings[0] for a in parser._actions if a.option_strings and a.type not in (None, str))


CASES = [(script, flag) for script, (make, _, _) in ENTRY_POINTS.items() for flag in numeric_flags(make())]


def outcome(script: str, flag: str, value: str):
    """(None, parsed namespace) or (exit code, what went to stderr)."""
    _, parse, base = ENTRY_POINTS[script]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return None, parse([*base, flag, value])
    except SystemExit as exc:
        return exc.code, err.getvalue()


def check(script: str, flag: str, value: str) -> bool:
    """Asserts the contract; True when the value was accepted."""
    code, result = outcome(script, flag, value)
    if code is None:
        parsed = getattr(result, flag.lstrip("-"))
        assert not isinstance(parsed, float) or math.isfinite(parsed), (script, flag, value, parsed)
        return True
    lines = result.strip().splitlines()
    assert code == 2, (script, flag, value, result)
    assert len(lines) == 1 and "Traceback" not in result, (script, flag, value, result)
    assert flag in lines[0], (script, flag, value, lines[0])
    return False


def test_the_numeric_flags_are_found_in_both_parsers():
    expected = {"--lr_start", "--lr_end", "--lr_iter", "--lr_smooth_f", "--lr_diverge_th", "--lr_verify",
                "--lr_verify_share",
                "--lr_val_batches", "--momentum", "--weight_decay", "--batch_size", "--epochs", "--lr", "--gamma",
                "--step_size", "--warmup_epochs", "--checkpoint_every", "--input_size", "--max_samples",
                "--num_workers", "--seed", "--label_smoothing", "--norm_weight_decay", "--bias_weight_decay",
                "--clip_grad_norm", "--mixup_alpha", "--cutmix_alpha", "--model_ema_decay"}
    for script, (make, _, _) in ENTRY_POINTS.items():
        assert set(numeric_flags(make())) == expected, script


@pytest.mark.parametrize("script,flag", CASES)
def test_non_finite_values_are_refused_in_one_line(script, flag):
    for value in NON_FINITE:
        assert not check(script, flag, value), (script, flag, value)


@pytest.mark.parametrize("script,flag", CASES)
def test_zero_negative_and_huge_values_parse_or_are_refused_in_one_line(script, flag):
    accepted = [value for value in EDGES if check(script, flag, value)]
    assert "-1" not in accepted and str(-(10**30)) not in accepted  # no flag of the suite takes a negative


def test_bounds_that_argparse_cannot_see_name_their_flag_too():
    assert not check("main.py", "--momentum", "1")
    assert not check("main.py", "--gamma", "0") and check("main.py", "--gamma", "1")
    assert not check("main.py", "--input_size", "100000") and check("main.py", "--input_size", "1024")
    assert not check("main.py", "--seed", str(2**32)) and check("main.py", "--seed", str(2**32 - 1))
    assert not check("main.py", "--lr_start", "0") and check("main.py", "--lr_start", "1e-320")


def test_nan_lr_start_is_one_line_and_exit_2_for_a_user(tmp_path):
    proc = run_cli("main.py", "--find_lr", "--lr_start", "nan", "--lr_plot", tmp_path / "p.png", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "main.py: error: argument --lr_start: 'nan' is not a finite number (see --help)\n"
    assert not (tmp_path / "p.png").exists()


def test_inf_lr_end_through_the_runner_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("run_lr_finder.py", "--lr_end", "inf", "--output_dir", tmp_path / "out", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "run_lr_finder.py: error: argument --lr_end: 'inf' is not a finite number (see --help)\n"
    assert not (tmp_path / "out").exists()


def test_huge_accepted_values_give_a_run_not_a_traceback(image_folder, tmp_path, capsys):
    """A rate range reaching 1e300 and absurd worker/sample counts: the sweep runs, stops at
    the first non-finite loss, and ends as the JSON says, without an exception (in this process:
    one would fail the test)."""
    out = tmp_path / "out"
    code, _, err = run_main("--find_lr", "--data_dir", image_folder, "--lr_plot", out / "p.png", *FAST,
                            "--lr_end", "1e300", "--lr_iter", "12", "--num_workers", str(10**30),
                            "--max_samples", str(10**30), "--lr_val_batches", str(10**30))
    assert "Traceback" not in err, err[-2000:]
    result = json.loads((out / "suggested_lr.json").read_text())
    assert result["sweep"]["stop_reason"] == "non_finite_loss" and result["sweep"]["steps_run"] < 12
    assert code == (0 if result["success"] else 2)
