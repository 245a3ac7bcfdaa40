"""--lr_verify: candidate rates, the trial schedule, the trials themselves on a tiny model, and
the CLI's record of them."""

import json
import math

import pytest
import torch
from torch import nn

from conftest import FAST, make_image_folder, run_cli
from lr_finder import Evidence, auto_method, confidence, spread_decades, trusted_readings
from lr_verify import Trial, best_trial, candidate_rates, clearly_better, judge, next_rate, trial_schedule, verify_rates

CPU = torch.device("cpu")


def test_candidates_are_x2_apart_around_the_suggestion():
    assert candidate_rates(0.1) == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4])


def test_each_trial_warms_up_then_decays_to_zero():
    factors = [trial_schedule(step, 20) for step in range(20)]
    assert factors[:2] == pytest.approx([0.5, 1.0])  # a tenth of 20 steps of warm-up
    assert factors[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 18)) for k in range(18)])
    assert factors[-1] < 0.01


def test_the_best_trial_and_one_more_rate_beyond_an_edge():
    trials = [Trial(0.01, 0.9, 50.0, 5), Trial(0.02, 0.8, 55.0, 5), Trial(0.04, math.inf, 0.0, 2)]
    assert best_trial(trials).lr == 0.02 and next_rate(trials) is None
    at_low_edge = [Trial(0.01, 0.7, 50.0, 5), Trial(0.02, 0.8, 55.0, 5)]
    assert next_rate(at_low_edge) == pytest.approx(0.005)
    assert next_rate([Trial(0.01, 0.9, 50.0, 5), Trial(0.02, 0.8, 55.0, 5)]) == pytest.approx(0.04)
    assert best_trial([Trial(0.01, math.nan, 0.0, 1)]) is None


def test_a_top1_gain_counts_only_beyond_two_standard_errors():
    # 256 images, 20 % against 11 %: pooled p 0.155, se of the difference 3.2 points, margin 6.4
    assert clearly_better(20.0, 11.0, 256)
    assert not clearly_better(19.5, 18.75, 400)  # 0.75 points on 400 images: noise
    assert not clearly_better(15.0, 11.0, 256)  # 4 points: under 2 se
    assert clearly_better(15.0, 11.0, 25600)  # the same gain on 100x the images is real
    assert not clearly_better(11.0, 20.0, 256)  # worse is never better
    assert not clearly_better(100.0, 0.0, 0)


def test_the_trials_confirm_replace_or_leave_the_curves_rate():
    centre = 0.01
    agree = [Trial(0.005, 0.9, 30.0, 5), Trial(0.01, 0.8, 31.0, 5), Trial(0.02, 0.85, 29.0, 5)]
    assert judge(agree, centre, 256) == (agree[1], "confirmed")
    better = [Trial(0.005, 0.9, 11.0, 5), Trial(0.01, 0.8, 11.0, 5), Trial(0.02, 0.7, 20.0, 5), Trial(0.04, 0.75, 19.0, 5)]
    assert judge(better, centre, 256) == (better[2], "replaced")
    # short trials: the lowest rate has the lowest loss, but its top-1 is within noise of the centre's
    low_bias = [Trial(0.005, 2.21, 19.5, 25), Trial(0.01, 2.30, 18.75, 25), Trial(0.02, 2.35, 18.0, 25)]
    assert judge(low_bias, centre, 400) == (None, "inconclusive")
    # the centre diverged: any finite trial that learned something replaces it
    diverged = [Trial(0.005, 1.0, 40.0, 5), Trial(0.01, math.inf, 0.0, 2), Trial(0.02, math.inf, 0.0, 1)]
    assert judge(diverged, centre, 256) == (diverged[0], "replaced")
    assert judge(agree[:1], 0.005, 256) == (None, "inconclusive")  # one trial (interrupted): nothing to compare
    assert judge(agree[:1] + agree[2:], centre, 256) == (None, "inconclusive")  # the centre never ran


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8, generator=gen),
                torch.randint(0, 3, (6,), generator=gen), torch.zeros(6)) for _ in range(4)]

    def cycle():
        while True:
            yield from batches

    return model, optimizer, cycle, batches[:2]


def test_trials_restore_the_model_and_optimizer_and_report_each_rate():
    model, optimizer, cycle, heldout = tiny_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trials, reason = verify_rates(model, optimizer, nn.CrossEntropyLoss(), cycle, heldout, 0.1, 3, CPU)
    assert reason == "completed"
    assert 5 <= len(trials) <= 7 and [t.lr for t in trials] == sorted(t.lr for t in trials)
    assert all(b.lr / a.lr == pytest.approx(2.0) for a, b in zip(trials, trials[1:]))
    assert all(t.steps == 3 and 0 <= t.top1 <= 100 for t in trials)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {} and optimizer.param_groups[0]["lr"] == 0.1


def test_same_batches_give_the_same_trial_results():
    def run():
        model, optimizer, cycle, heldout = tiny_setup()
        return verify_rates(model, optimizer, nn.CrossEntropyLoss(), cycle, heldout, 0.1, 3, CPU)[0]

    assert [t.loss for t in run()] == pytest.approx([t.loss for t in run()])


def test_a_stop_request_keeps_only_the_finished_trials():
    model, optimizer, cycle, heldout = tiny_setup()
    calls = iter(range(100))
    trials, reason = verify_rates(model, optimizer, nn.CrossEntropyLoss(), cycle, heldout, 0.1, 3, CPU,
                                  stop_requested=lambda: next(calls) >= 7)  # asked once per step
    assert reason == "interrupted" and [t.lr for t in trials] == pytest.approx([0.025, 0.05])


def test_a_diverging_rate_is_recorded_as_such():
    model, optimizer, cycle, heldout = tiny_setup()
    trials, _ = verify_rates(model, optimizer, nn.CrossEntropyLoss(), cycle, heldout, 1e12, 3, CPU)
    assert any(not math.isfinite(t.loss) and t.top1 == 0.0 for t in trials)


def test_cli_verification_without_val_holds_out_part_of_train(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=12)
    for folder in (data / "val").iterdir():  # no val/: the trials must be scored on held-out train images
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    (data / "val").rmdir()
    proc = run_cli("main.py", "--find_lr", "--data_dir", data, *FAST, "--lr_iter", "12", "--lr_start", "1e-3",
                   "--lr_verify", "2", "--lr_plot", tmp_path / "out" / "p.png")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "suggested_lr.json").read_text())
    trials = result["verification"]
    assert len(trials) >= 5 and all(set(t) == {"lr", "loss", "top1", "steps"} for t in trials)
    assert result["verify_heldout"] == {"source": "train (held out)", "images": 7}  # 36 // 5
    assert result["verify_steps"] == 2 and result["verify_total_steps"] == sum(t["steps"] for t in trials)
    curve_method = auto_method(result["optimizer"])  # the default: the trials are centred on its rate
    curve_lr = result["suggestions"][curve_method]
    chosen, outcome = judge([Trial(t["lr"], math.inf if t["loss"] is None else t["loss"], t["top1"], t["steps"])
                             for t in trials], curve_lr, 7)
    assert result["verify_outcome"] == outcome
    rates = sorted(t["lr"] for t in trials)
    readings = trusted_readings(result["suggestions"], result["optimizer"])
    if chosen is None:  # the curve's rate stays, and the analysis says why
        assert result["suggestion_method"] == curve_method and result["suggested_lr"] == curve_lr
        assert "verified" not in result["suggestions"]
        verified = "inconclusive"
        assert any("did not beat the curve's rate" in w for w in result["analysis"]["warnings"])
    else:
        assert result["suggestion_method"] == "verified" and result["suggested_lr"] == chosen.lr
        assert result["suggestions"]["verified"] == chosen.lr
        verified = rates[0] < chosen.lr < rates[-1]
    evidence = Evidence(result["loss_drop"], spread_decades(readings), result["edge_lr"] is not None, verified)
    assert result["confidence"] == confidence(evidence)
    log = (tmp_path / "out" / "lr_finder_log.txt").read_text()
    assert "Verification       : 2 steps per trial, scored on 7 held-out images from train (held out)" in log
    assert f"from train (held out) (completed; {outcome})" in log
    best = best_trial([Trial(t["lr"], t["loss"], t["top1"], t["steps"]) for t in trials if t["loss"] is not None])
    assert f"  lr {best.lr:.2e}: held-out loss {best.loss:.4f}" in log
    import cv2

    assert cv2.imread(str(tmp_path / "out" / "p.png")).shape[1] == 1800  # the second panel widens the plot
