"""One FinderResult, built once by hand, and every rendering of it: the console lines, the log, the
JSON (and back) and the plot carry the same rate and range; the log reads as a person reads."""

import json
from types import SimpleNamespace

import pytest

import lr_plot
from finder_result import Answer, FinderResult, SweepFacts, Trial, Verification, answer_warnings
from report import console_lines, next_steps, render_log, share_of_training
from suggest import CurveReading

CURVE = CurveReading(readings={"rise": 0.033, "steepest": 0.02, "valley": 0.004, "minimum": 0.0061}, method="rise",
                     lr=0.033, low=0.00825, high=0.264, start_loss=2.31, min_loss=1.64, loss_drop=0.29,
                     min_loss_lr=0.061, edge_lr=0.066, blow_lr=0.5, onecycle_max_lr=0.061)
SWEEP = SweepFacts(lr_start=1e-5, lr_end=10.0, lr_iter=100, lr_step_mode="exp", steps_run=87, stop_reason="diverged",
                   stop_step=86, stop_lr=0.72, world_size=2, elapsed_s=80.4, images_per_second=34.6)


def result(**changes) -> FinderResult:
    answer = Answer(lr=0.033, method="rise", low=0.00825, high=0.264, optimizer="sgd", global_batch_size=64,
                    rate_settings={"optimizer": "sgd", "momentum": 0.9})
    values = dict(success=True, dataset="imagenet1k", batch_size=32, timestamp="2026-12-06T06:00:00",
                  plot_file="out/lr_finder_imagenet1k.png", log_file="out/lr_finder_log.txt",
                  history_file="out/lr_finder_history.csv", answer=answer, curve=CURVE, sweep=SWEEP,
                  data={"data_dir": "/data/imagenet", "images": 2000, "classes": 10, "batches_per_epoch": 50,
                        "data_layout": "train_val"},
                  machine={"device": "cpu", "precision": "bf16", "channels_last": True},
                  configuration={"batch_size": 32, "lr_iter": 100})
    values.update(changes)
    return FinderResult(**values)


def test_the_console_says_the_rate_its_range_and_evidence_in_three_lines():
    lines = console_lines(result(), "out")
    assert lines == [
        "Learning rate: 3.30e-02 (SGD, global batch 64); best expected between 8.25e-03 and 2.64e-01",
        "Evidence: the loss fell 29% (from 2.31 to 1.64 at 6.10e-02) and turns up from 6.60e-02; the sweep ended "
        "where the loss blew up, at 7.20e-01 after 87 of 100 steps, as a range test does",
        "Outputs in out: lr_finder_imagenet1k.png, lr_finder_log.txt, suggested_lr.json, lr_finder_history.csv"]


def test_a_warning_gets_a_line_only_when_there_is_one_and_a_failure_is_one_error_line():
    shallow = CurveReading(**{**CURVE.__dict__, "loss_drop": 0.05, "edge_lr": None})
    warnings = answer_warnings(0.033, shallow, None)
    assert len(warnings) == 2
    assert warnings[0].startswith("the loss never turned up, so its lowest point is only where the sweep ended")
    assert warnings[1].startswith("the loss fell only 5%: the sweep barely learned")
    warned = result(answer=Answer(0.033, "rise", 0.00825, 0.264, "sgd", 64, warnings=warnings), curve=shallow)
    lines = console_lines(warned, "out")
    assert len(lines) == 5 and lines[2] == f"Warning: {warnings[0]}" and lines[3] == f"Warning: {warnings[1]}"
    assert "and never turned up" in lines[1]
    failed = result(success=False, error="no suggestion: only 3 usable points; raise --lr_iter", answer=None,
                    curve=None, plot_file=None, history_file=None)
    assert console_lines(failed, "out") == ["error: no suggestion: only 3 usable points; raise --lr_iter",
                                            "Outputs in out: lr_finder_log.txt, suggested_lr.json"]


def test_the_json_keeps_the_seed_fields_on_top_groups_the_rest_and_reads_back_the_same():
    data = result().to_json()
    assert list(data)[:7] == ["suggested_lr", "dataset", "batch_size", "lr_finder_epochs", "plot_file", "log_file",
                              "timestamp"]
    assert (data["suggested_lr"], data["dataset"], data["batch_size"], data["lr_finder_epochs"]) == (
        0.033, "imagenet1k", 32, 1.74)  # 87 steps of 50 batches per epoch
    assert data["schema_version"] == 2 and data["success"] is True
    assert {"answer", "curve", "sweep", "verification", "data", "machine", "configuration"} <= set(data)
    assert (data["answer"]["low"], data["answer"]["high"], data["answer"]["global_batch_size"]) == (0.00825, 0.264, 64)
    assert data["sweep"]["stop_reason"] == "diverged" and data["curve"]["edge_lr"] == 0.066
    again = json.loads(json.dumps(data))
    assert FinderResult.from_json(again) == result()
    with pytest.raises(ValueError, match="schema_version 2"):
        FinderResult.from_json({"suggested_lr": 0.1, "success": True})


def test_a_verified_result_reads_back_with_its_trials():
    verified = result(answer=Answer(0.066, "verified", 0.00825, 0.264, "sgd", 64),
                      verification=Verification(10, 60, "val", 256, "completed", "replaced", 12.5,
                                                (Trial(1, 0.033, 1.2, 40.0, 10), Trial(1, 0.066, 1.1, 45.5, 10),
                                                 Trial(1, 0.132, None, 10.0, 10)), chosen_lr=0.066))
    assert FinderResult.from_json(json.loads(json.dumps(verified.to_json()))) == verified
    log = render_log(verified, "python main.py --find_lr --lr_verify 10", "")
    assert "--lr_verify: 3 short trainings, 60 steps in all (12 s)" in log
    assert "  round 1, lr 1.32e-01, 10 steps: held-out loss diverged, top-1 10.0%" in log
    assert "(SGD, global batch 64; checked by --lr_verify (replaced))" in console_lines(verified, "out")[0]


def test_the_log_opens_with_the_answer_and_reads_as_a_person_reads():
    log = render_log(result(), "python main.py --find_lr", "captured output")
    head = log.splitlines()[:12]
    assert head[3] == "Written: 2026-12-06T06:00:00"
    assert head[5] == console_lines(result(), "out")[0]
    assert log.index("RESULTS") < log.index("ANALYSIS") < log.index("CONFIGURATION") < log.index("COMMAND") < (
        log.index("OUTPUT (stdout and stderr)"))
    assert "Loss fell          : 29%, from 2.31 to 1.64" in log
    assert "Time               : 80 s, 34.6 images/s" in log
    assert "Expected best      : 8.25e-03 to 2.64e-01" in log
    assert "One-cycle peak     : 6.10e-02 (for --scheduler onecycle only: the peak, not the rate)" in log
    assert log.isascii()  # no emoji
    assert "1.74 epochs of the data" in log  # counts and times as plain numbers


def test_at_most_four_next_steps_each_naming_a_command():
    steps = next_steps(result())
    assert len(steps) == 3 and all("uv run python" in step for step in steps)
    assert steps[0] == ("Train at this rate: uv run python main.py --lr 0.033 --scheduler cosine --epochs 90 "
                        "--batch_size 32 --data_dir /data/imagenet")
    assert "--lr_from out/suggested_lr.json" in steps[1]
    assert steps[2].startswith("Or a one-cycle schedule, whose peak is a different number (the loss's lowest "
                               "point): uv run python main.py --lr 0.061 --scheduler onecycle")
    adamw = result(answer=Answer(0.001, "minimum", 0.0003, 0.004, "adamw", 64, warnings=("w",)))
    steps = next_steps(adamw)
    assert len(steps) == 4 and steps[0].startswith("Train at this rate: uv run python main.py --lr 0.001 "
                                                   "--optimizer adamw --scheduler cosine")
    assert steps[3].endswith("again with --lr_verify 30")


def test_the_plot_draws_the_same_rate_and_range(tmp_path, monkeypatch):
    drawn = {}

    def keep(fig, path):
        drawn["labels"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        drawn["title"] = fig.axes[0].get_title()

    monkeypatch.setattr("atomic_io.atomic_savefig", keep)
    lrs = [1e-5 * 10 ** (i / 20) for i in range(87)]
    losses = [2.3 - 0.01 * i if i < 70 else 2.3 for i in range(87)]
    sweep = SimpleNamespace(lrs=lrs, raw_losses=losses, losses=losses, val_losses=[])
    lr_plot.plot_sweep(str(tmp_path / "p.png"), result(), sweep, 0.05, "LR range test: imagenet, resnet50")
    assert drawn["labels"] == ["training loss", "training loss, smoothed", "expected best: 8.25e-03 to 2.64e-01",
                               "learning rate: 3.30e-02", "loss turns up: 6.60e-02"]
    lr_plot.plot_sweep(str(tmp_path / "p.png"), result(), sweep, 0.05, "t", advanced=True)
    assert drawn["labels"][5:] == ["steepest: 2.00e-02", "valley: 4.00e-03", "minimum: 6.10e-03"]


@pytest.mark.parametrize(("steps", "planned", "text"), [
    (48, 1036, "4.63% of the 1036 steps --epochs plans"),
    (60, 60, "100.00% of the 60 steps --epochs plans"),
    (190, 12, "15.8x the 12 steps --epochs plans"),  # trials longer than the training read as a multiple
])
def test_the_trials_cost_reads_as_a_share_of_the_training_or_a_multiple_of_it(steps, planned, text):
    assert share_of_training(steps, planned) == text
