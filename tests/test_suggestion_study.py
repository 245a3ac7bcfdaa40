"""benchmarks/suggestion_study.py: the measures it reports, and a --quick run that writes every
key (no accuracy is asserted: a one-epoch run on 64 images says nothing about rates)."""

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import suggestion_study as study  # noqa: E402

GRID = {1e-3: 40.0, 3.16e-3: 55.0, 1e-2: 60.0, 3.16e-2: 58.0, 0.1: 30.0}


def test_top1_is_interpolated_on_log_lr_and_flagged_outside_the_grid():
    assert study.interpolate_top1(1e-2, GRID) == (60.0, False)
    value, outside = study.interpolate_top1(10 ** -1.75, GRID)  # half-way (in log) from 1e-2 to 3.16e-2
    assert value == pytest.approx(59.0, abs=0.05) and not outside
    assert study.interpolate_top1(1.0, GRID) == (30.0, True)


def test_plateau_and_placement_of_a_suggestion():
    assert study.plateau(GRID, 60.0, 3.0) == [1e-2, 3.16e-2]
    inside = study.place(0.02, GRID, 3.0)
    assert inside["in_plateau"] and inside["log10_ratio"] == pytest.approx(0.301, abs=1e-3)
    low = study.place(2e-3, GRID, 3.0)  # nearest grid rate 3.16e-3 is 5 points below the best
    assert not low["in_plateau"] and low["gap"] == pytest.approx(60.0 - low["top1"])


def test_quick_study_writes_every_key_and_reuses_its_runs(tmp_path, capsys):
    work, out, plot = tmp_path / "work", tmp_path / "study.json", tmp_path / "study.png"
    assert study.main(["--quick", "--work_dir", str(work), "--json", str(out), "--plot", str(plot)]) == 0
    (case,) = json.loads(out.read_text())["cases"]
    assert len(case["grid"]) >= 6 and len(case["seeds"]) == 2 and case["noise"] >= 0
    rates = sorted(float(r) for r in case["grid"])
    assert case["best_lr"] not in (rates[0], rates[-1]) or len(rates) == 6 + study.MAX_EXTENSIONS
    assert set(case["methods"]) == {"auto", "rise", "steepest", "valley", "minimum", "lr_verify"}
    for method in case["methods"].values():
        assert set(method) == {"lr", "log10_ratio", "top1", "gap", "extrapolated", "in_plateau"}
    assert {"edge_lr", "loss_drop", "steps_run", "history", "auto_method"} <= set(case["sweep"])
    assert case["methods"]["auto"] == case["methods"][case["sweep"]["auto_method"]]
    assert case["cost"]["sweep_steps"] == 20 and case["cost"]["verify_steps"] >= 5 * 2
    assert case["cost"]["verify_outcome"] in ("confirmed", "replaced", "inconclusive")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| quick-digits-16px-b16 | rise |" in printed and "edge / 2" in printed

    runs = sorted(work.rglob("run.json"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    assert study.main(["--quick", "--work_dir", str(work)]) == 0  # all cached: nothing runs again
    assert [p.stat().st_mtime_ns for p in sorted(work.rglob("run.json"))] == stamps
