"""benchmarks/suggestion_study.py: the measures it reports, the grid it trains, and a --quick run
that writes every key and resumes from its records (no accuracy is asserted: a one-epoch run on 64
images says nothing about rates)."""

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import study_cases  # noqa: E402
import suggestion_study as study  # noqa: E402

GRID = {1e-3: 40.0, 2e-3: 55.0, 4e-3: 60.0, 8e-3: 58.0, 3.2e-2: 20.0}


def test_top1_is_interpolated_on_log_lr_and_flagged_outside_the_grid():
    assert study.interpolate_top1(4e-3, GRID) == (60.0, False)
    value, outside = study.interpolate_top1(4e-3 * 2 ** 0.5, GRID)  # half-way (in log) from 4e-3 to 8e-3
    assert value == pytest.approx(59.0, abs=0.05) and not outside
    assert study.interpolate_top1(1.0, GRID) == (20.0, True)


def test_plateau_is_widened_half_way_to_the_next_grid_rate_and_collapse_is_flagged():
    assert study.plateau(GRID, 60.0, 3.0) == [4e-3, 8e-3]
    low, high = study.plateau_bounds(GRID, 60.0, 3.0)
    assert low == pytest.approx((2e-3 * 4e-3) ** 0.5) and high == pytest.approx((8e-3 * 3.2e-2) ** 0.5)
    inside = study.place(0.01, GRID, 3.0)
    assert inside["in_plateau"] and inside["log10_best_over_reading"] == pytest.approx(-0.398, abs=1e-3)
    low_rate = study.place(2e-3, GRID, 3.0)  # 5 points under the best: outside
    assert not low_rate["in_plateau"] and low_rate["gap"] == pytest.approx(5.0) and not low_rate["collapsed"]
    assert study.place(3.2e-2, GRID, 3.0)["collapsed"]  # 20 % where the best is 60 %


def test_the_grid_extends_past_an_edge_then_refines_to_x2_around_the_best():
    grid = {0.004: 10.0, 0.016: 30.0, 0.064: 40.0, 0.256: 20.0}
    assert study.next_grid_rate(grid) == pytest.approx(0.032)
    grid[0.032] = 35.0  # the best stays at 0.064: its upper neighbour is x4 away
    assert study.next_grid_rate(grid) == pytest.approx(0.128)
    grid[0.128] = 30.0
    assert study.next_grid_rate(grid) is None
    assert study.next_grid_rate({0.004: 50.0, 0.016: 30.0}) == pytest.approx(0.001)  # best at the low edge


class FakeRunner:
    """Top-1 per (rate, seed) from a table; records what was trained."""

    def __init__(self, table):
        self.table, self.trained = table, []

    def train(self, case, lr, seed, epochs=None):
        self.trained.append((lr, seed))
        return self.table.get((lr, seed), self.table.get(lr))


def test_a_best_rate_where_a_seed_collapses_is_given_up_for_a_stable_one():
    case = study_cases.Case("fake", "fit", "digits", 16, 32, 10, grid=(0.004, 0.016, 0.064, 0.256))
    table = {0.004: 63.5, 0.016: 73.8, 0.032: 85.0, 0.064: 92.5, 0.128: 81.6, 0.256: 95.5, 0.512: 62.4,
             1.024: 10.0, (0.256, 1): 13.1, (0.256, 2): 10.3, (0.064, 1): 91.0, (0.064, 2): 90.5}
    runner, result = FakeRunner(table), study.CaseResult(case={})
    study.ground_truth(case, runner, result)
    assert result.unstable == {0.256: {0: 95.5, 1: 13.1, 2: 10.3}}
    assert result.grid[0.256] == pytest.approx(39.63, abs=0.01)  # the mean of its seeds
    assert result.best_lr == 0.064 and result.seeds == {0: 92.5, 1: 91.0, 2: 90.5} and result.noise == 2.0
    assert (0.032, 0) in runner.trained  # refined again around the new best
    assert study.seed_collapsed({0: 95.5, 1: 13.1}) and not study.seed_collapsed({0: 62.5, 1: 55.5, 2: 56.0})


def test_distribution_of_log_ratios():
    stats = study.log_ratio_stats([0.5, -0.25, 0.1])
    assert stats == {"n": 3, "mean": pytest.approx(0.117, abs=1e-3), "sd": pytest.approx(0.306, abs=1e-3),
                     "worst": 0.5}


def test_the_budget_verification_costs_at_most_its_share_of_the_sweep():
    # 4 candidates: 4 x N, then 2 x 2N = 8N steps; 2.5 sweeps of 100 steps allow N = 31 (248 steps)
    assert study.budget_steps(4, 100) == 31
    # 6 candidates: 6N + 3 x 2N + 2 x 4N = 20N; 250 / 20 = 12.5
    assert study.budget_steps(6, 100) == 12
    assert study.budget_steps(6, 150, budget=1.0) == 7 and study.budget_steps(8, 2) == 1


def test_a_verification_from_another_rule_is_recognised():
    assert study.same_range([0.0062, 0.076], [0.0062, 0.076])
    assert not study.same_range([0.0062, 0.076], [0.0072, 0.087])
    assert not study.same_range(None, [0.0062, 0.076]) and not study.same_range([0.0062, 0.076], None)


def test_summary_tables_in_markdown():
    report = {"fit": {"cases": 0}, "test": {
        "cases": 2, "range_covers_best": 1,
        "methods": {"auto": {"n": 2, "mean": -0.67, "sd": 0.18, "worst": -0.85, "in_plateau": 1, "collapsed": 0,
                             **study.gap_stats([(3.1, 0.6), (5.1, 5.0)])},
                    "lr_verify": {"n": 2, "mean": -0.5, "sd": 0.1, "worst": -0.6, "in_plateau": 0, "collapsed": 0,
                                  "median_gap": 0.4, "within_noise": 2, "sweeps": 0.83,
                                  "training_share": 0.2667}}}}
    text = study.summary_markdown(report)
    assert study.gap_stats([(3.1, 0.6), (5.1, 5.0)]) == {"median_gap": 4.1, "within_noise": 0}
    assert study.gap_stats([(0.2, 0.8), (4.0, 5.0), (9.0, 1.0)]) == {"median_gap": 4.0, "within_noise": 2}
    assert "| auto | 2 | -0.67 | 0.18 | -0.85 | 1 of 2 | 4.1 | 0 of 2 | 0 | 0.00 | 0.0% |" in text
    assert "| lr_verify | 2 | -0.50 | 0.10 | -0.60 | 0 of 2 | 0.4 | 2 of 2 | 0 | 0.83 | 26.7% |" in text
    assert study.training_share(80, 18, 17) == 0.2614 and study.training_share(80, None, 17) is None
    assert "covers the best rate on 1 of 2" in text and "fit cases" not in text


def test_verification_records_read_the_same_before_and_after_the_grouped_json():
    """The committed records hold the finder's JSON of their day: both layouts read alike."""
    trials = [{"round": 1, "lr": 0.01, "loss": 1.0, "top1": 50.0, "steps": 10}]
    flat = {"success": True, "suggested_lr": 0.02, "verification": trials, "suggested_range": [0.005, 0.08],
            "verify_total_steps": 30, "verify_outcome": "replaced"}
    grouped = {"success": True, "suggested_lr": 0.02, "schema_version": 2, "error": None,
               "answer": {"lr": 0.02, "low": 0.005, "high": 0.08},
               "verification": {"trials": trials, "total_steps": 30, "first_round_steps": 10, "outcome": "replaced"}}
    read = study.verified_answer(grouped)
    keys = ("verification", "suggested_range", "suggested_lr", "verify_total_steps", "verify_outcome")
    assert {k: read[k] for k in keys} == {k: flat[k] for k in keys}
    assert read["verify_first_round_steps"] == 10 and read["error"] is None
    assert study.verified_answer(flat) is flat


def test_a_share_verification_runs_main_with_the_cases_epochs_and_a_refused_share_is_left_out(tmp_path, capsys):
    from study_runs import Runner

    case = study_cases.Case("fake", "test", "scans", 24, 64, 17, optimizer="adamw", lr_end=1.0, verify_steps=10)
    argv = ["--find_lr", "--data_dir", "<data:scans>", "--dataset", "imagenet1k", "--input_size", "24",
            "--batch_size", "64", "--num_workers", "2", "--optimizer", "adamw", "--lr_start", "1e-05", "--lr_end",
            "1.0", "--lr_iter", "100", "--seed", "0", "--lr_verify_share", "5", "--epochs", "17"]
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "verify-share5.json").write_text(json.dumps({"argv": argv, "exit_code": 2, "seconds": 4.0}))
    runner = Runner(tmp_path, tmp_path / "work", dry=True)  # dry: a command line other than argv would raise
    answer, record = runner.verify(case, share=5.0)
    assert answer == {"error": "main.py exited with 2"} and record["exit_code"] == 2
    assert runner.precisions == {"fake": {"unrecorded"}}  # a record made before precisions were kept

    result = study.CaseResult(case={}, grid=dict(GRID), noise=2.0)
    study.place_verify(case, runner, result, "lr_verify_share", share=5.0)
    assert "lr_verify_share" not in result.methods and "lr_verify_share" not in result.cost
    assert capsys.readouterr().out == "[fake] lr_verify_share: the run verified nothing (main.py exited with 2)\n"


def test_the_table_says_when_a_cases_runs_trained_in_more_than_one_precision():
    result = study.CaseResult(case={"name": "fake", "role": "test"}, grid=dict(GRID), best_lr=0.064, best_top1=92.5,
                              noise=2.0, plateau=[0.032, 0.064], precisions=["bf16", "fp32"])
    assert study.table([result]).endswith("\n- fake: its runs trained in bf16, fp32")
    result.precisions = ["bf16", "unrecorded"]  # records older than the field: not a second precision
    assert "trained in" not in study.table([result])


def test_test_cases_are_apart_from_fit_cases_and_train_long_enough():
    fit = study_cases.FIT_CASES
    test = study_cases.TEST_CASES
    assert not {c.name for c in fit} & {c.name for c in test} and all(c.role == "test" for c in test)
    assert all(c.role == "fit" for c in fit) and len(fit) == 15 and len(test) == 6
    assert not {c.data for c in fit} & {c.data for c in test}  # data no fit case has seen
    sgd = [c for c in test if c.optimizer == "sgd"]
    assert len(sgd) >= 4 and sum(c.optimizer == "adamw" for c in test) >= 2
    assert sum(c.input_size >= 72 for c in sgd) >= 2 and max(c.batch_size for c in sgd) >= 128
    assert all(c.arch == "resnet50" for c in test)
    images = {"digits": 1438, "patches": 1500, "colour": 960, "scans": 1200, "scenes": 600}
    steps = {}
    for case in fit + test:
        steps[case.name] = min(images[case.data], case.max_samples or 10 ** 9) // case.batch_size * case.epochs
        assert case.epochs >= 10 and steps[case.name] >= 300, case.name
    assert steps["scans-16px-b32-long"] == 1036 and steps["scenes-16px-b32-long"] == 1044
    assert sum(steps[c.name] >= 10 * c.lr_iter for c in sgd) >= 2


def test_quick_study_writes_every_key_and_resumes_from_its_records(tmp_path, capsys):
    records, work, out, plot = tmp_path / "records", tmp_path / "work", tmp_path / "study.json", tmp_path / "s.png"
    argv = ["--quick", "--records", str(records), "--work_dir", str(work)]
    assert study.main(argv + ["--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    (case,) = report["cases"]
    assert len(case["grid"]) >= 3 and len(case["seeds"]) == 3 and case["noise"] >= 0
    assert {"auto", "bottom", "rise", "steepest", "valley", "minimum", "lr_verify"} <= set(case["methods"])
    for method in case["methods"].values():
        assert set(method) == {"lr", "log10_best_over_reading", "top1", "gap", "extrapolated", "in_plateau", "collapsed"}
    assert {"loss_drop", "edge_lr", "suggested_range", "history"} <= set(case["sweep"])
    assert set(case["range"]) == {"low", "high", "covers_best"}
    verify = case["cost"]["lr_verify"]
    assert case["cost"]["sweep_steps"] == 20 and verify["first_round_steps"] == 2 and verify["steps"] >= 2
    assert verify["sweeps"] == pytest.approx(verify["steps"] / 20, abs=0.01)
    assert report["summary"]["fit"]["cases"] == 1 and "auto" in report["summary"]["fit"]["methods"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "| quick-digits-16px-b16 |" in capsys.readouterr().out

    saved = sorted(records.rglob("*.json"))
    assert saved and all("<data:digits>" in json.loads(p.read_text())["argv"] for p in saved)  # machine-free
    precisions = {json.loads(p.read_text())["precision"] for p in saved}  # auto: what this CPU runs natively
    assert precisions in ({"fp32"}, {"bf16"}) and case["precisions"] == sorted(precisions)
    stamps = [p.stat().st_mtime_ns for p in saved]
    assert study.main(argv + ["--only_records"]) == 0  # everything is in the records: nothing runs again
    assert [p.stat().st_mtime_ns for p in sorted(records.rglob("*.json"))] == stamps


def test_an_interrupted_training_resumes_from_its_checkpoint_and_a_refused_one_trains_afresh(tmp_path, monkeypatch,
                                                                                             capsys):
    import types

    from study_runs import Runner

    calls = []

    def fake_main(argv):  # main.py: refuses seed 0's checkpoint, continues seed 1's
        run_dir = tmp_path / "work" / "fake" / f"train-lr0.01-seed{argv[argv.index('--seed') + 1]}"
        calls.append((argv[argv.index("--output_dir") + 1:], (run_dir / "last.pt").exists()))
        if "seed0" in run_dir.name and (run_dir / "last.pt").exists():
            print(f"error: {run_dir / 'last.pt'}: was made with other settings (precision: checkpoint 'bf16' vs now "
                  "'fp32'); resume with the same flags or use another --output_dir")
            return 2
        (run_dir / "metrics.csv").write_text("epoch,val_top1\n1,40.5\n2,52.0\n")
        (run_dir / "config.json").write_text('{"precision": "fp32"}')
        return 0

    monkeypatch.setitem(sys.modules, "main", types.SimpleNamespace(main=fake_main))
    monkeypatch.setattr(Runner, "resolve", lambda self, argv: list(argv))
    case = study_cases.Case("fake", "test", "scans", 24, 64, 2)
    runner = Runner(tmp_path / "records", tmp_path / "work")
    for seed in (0, 1):
        run_dir = tmp_path / "work" / "fake" / f"train-lr0.01-seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "last.pt").write_bytes(b"checkpoint")
        (run_dir / "best.pt").write_bytes(b"checkpoint")

    assert runner.train(case, 0.01, seed=0) == 52.0
    refused = str(tmp_path / "work" / "fake" / "train-lr0.01-seed0")
    assert calls == [([refused, "--resume", "auto"], True), ([refused, "--resume", "auto"], False)]
    assert capsys.readouterr().out.splitlines()[0] == (
        f"[fake/train-lr0.01-seed0] error: {refused}/last.pt: was made with other settings (precision: checkpoint "
        "'bf16' vs now 'fp32'); resume with the same flags or use another --output_dir: training afresh")
    record = json.loads((tmp_path / "records" / "fake" / "train-lr0.01-seed0.json").read_text())
    assert record["exit_code"] == 0 and "resumed" not in record and "--resume" not in record["argv"]

    assert runner.train(case, 0.01, seed=1) == 52.0
    assert calls[2] == ([str(tmp_path / "work" / "fake" / "train-lr0.01-seed1"), "--resume", "auto"], True)
    record = json.loads((tmp_path / "records" / "fake" / "train-lr0.01-seed1.json").read_text())
    assert record["resumed"] is True and record["top1_per_epoch"] == [40.5, 52.0] and len(calls) == 3
    assert not list((tmp_path / "work" / "fake").rglob("*.pt"))  # the study keeps no checkpoint once recorded
