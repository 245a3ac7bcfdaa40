"""--lr_verify: candidate rates, the trial schedule, the trials themselves on a tiny model, and
the CLI's record of them."""

import json
import math

import pytest
import torch
from torch import nn

from lr_verify import (
    Trial,
    best_trial,
    better_half,
    candidate_rates,
    clearly_better,
    first_round_for_budget,
    halving_rounds,
    judge,
    most_candidates,
    outcome,
    steps_per_first_round_step,
    trial_schedule,
    verify_rates,
)

from conftest import FAST, make_image_folder, run_main

CPU = torch.device("cpu")


def test_candidates_are_x2_apart_across_the_range_with_the_suggestion_among_them():
    assert candidate_rates(0.1, 0.025, 0.8) == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4, 0.8])
    assert candidate_rates(0.1, 0.03, 0.3) == pytest.approx([0.05, 0.1, 0.2])  # only rates inside
    assert candidate_rates(0.1, 0.2, 0.8) == pytest.approx([0.1, 0.2, 0.4, 0.8])  # the answer always


def test_successive_halving_doubles_the_steps_for_the_better_half_until_two_remain():
    assert halving_rounds(6, 10) == [(6, 10), (3, 20), (2, 40)]  # 200 steps in all
    assert halving_rounds(4, 10) == [(4, 10), (2, 20)]
    assert halving_rounds(5, 8) == [(5, 8), (3, 16), (2, 32)]
    assert halving_rounds(1, 10) == [(1, 10)]
    trials = [Trial(0.01, 0.9, 50.0, 5), Trial(0.02, 0.7, 55.0, 5), Trial(0.04, math.inf, 0.0, 2),
              Trial(0.08, 0.8, 52.0, 5)]
    assert better_half(trials, 2) == [0.02, 0.08]
    assert better_half(trials, 4)[-1] == 0.08 and better_half(trials, 3) == [0.01, 0.02, 0.08]


def test_the_last_round_decides_and_an_answer_knocked_out_early_is_replaced():
    first = [Trial(0.01, 0.9, 30.0, 5), Trial(0.02, 0.8, 31.0, 5), Trial(0.04, 0.7, 33.0, 5), Trial(0.08, 0.75, 32.0, 5)]
    last = [Trial(0.04, 0.5, 60.0, 10), Trial(0.08, 0.55, 58.0, 10)]
    assert outcome([first, last], 0.01, 256) == (last[0], "replaced")  # the answer lost in round 1
    assert outcome([first, last], 0.08, 256) == (None, "inconclusive")  # a finalist within the noise stays
    assert outcome([first, last], 0.04, 256) == (last[0], "confirmed")
    assert outcome([], 0.04, 256) == (None, "inconclusive")


def test_each_trial_warms_up_then_decays_to_zero():
    factors = [trial_schedule(step, 20) for step in range(20)]
    assert factors[:2] == pytest.approx([0.5, 1.0])  # a tenth of 20 steps of warm-up
    assert factors[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 18)) for k in range(18)])
    assert factors[-1] < 0.01


def test_the_best_trial_is_the_lowest_finite_held_out_loss():
    trials = [Trial(0.01, 0.9, 50.0, 5), Trial(0.02, 0.8, 55.0, 5), Trial(0.04, math.inf, 0.0, 2)]
    assert best_trial(trials).lr == 0.02
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


def test_trials_restore_the_model_and_optimizer_and_report_each_round():
    model, optimizer, cycle, heldout = tiny_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rounds, reason = verify_rates(model, optimizer, nn.CrossEntropyLoss(), cycle, heldout, 0.1, 3, CPU, 0.025, 0.8)
    assert reason == "completed"
    assert [[t.steps for t in r] for r in rounds] == [[3] * 6, [6] * 3, [12] * 2]
    assert [t.lr for t in rounds[0]] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4, 0.8])
    assert [t.lr for t in rounds[1]] == pytest.approx(better_half(rounds[0], 3))
    assert [t.lr for t in rounds[2]] == pytest.approx(better_half(rounds[1], 2))
    assert all(0 <= t.top1 <= 100 for r in rounds for t in r)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {} and optimizer.param_groups[0]["lr"] == 0.1


def test_same_batches_give_the_same_trial_results():
    def run():
        model, optimizer, cycle, heldout = tiny_setup()
        rounds = verify_rates(model, optimizer, nn.CrossEntropyLoss(), cycle, heldout, 0.1, 3, CPU)[0]
        return [t.loss for r in rounds for t in r]

    assert run() == pytest.approx(run())


def test_a_stop_request_keeps_only_the_finished_trials():
    model, optimizer, cycle, heldout = tiny_setup()
    calls = iter(range(100))
    rounds, reason = verify_rates(model, optimizer, nn.CrossEntropyLoss(), cycle, heldout, 0.1, 3, CPU,
                                  stop_requested=lambda: next(calls) >= 7)  # asked once per step
    assert reason == "interrupted" and [t.lr for t in rounds[0]] == pytest.approx([0.025, 0.05])


def test_a_diverging_rate_is_recorded_as_such():
    model, optimizer, cycle, heldout = tiny_setup()
    rounds, _ = verify_rates(model, optimizer, nn.CrossEntropyLoss(), cycle, heldout, 1e12, 3, CPU)
    assert any(not math.isfinite(t.loss) and t.top1 == 0.0 for t in rounds[0])


def test_cli_verification_without_val_holds_out_part_of_train(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=12)
    for folder in (data / "val").iterdir():  # no val/: the trials must be scored on held-out train images
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    (data / "val").rmdir()
    code, _, err = run_main("--find_lr", "--data_dir", data, *FAST, "--lr_iter", "12", "--lr_start", "1e-3",
                            "--lr_verify", "2", "--lr_plot", tmp_path / "out" / "p.png")
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "suggested_lr.json").read_text())
    answer, curve, verification = result["answer"], result["curve"], result["verification"]
    trials = verification["trials"]
    assert all(set(t) == {"round", "lr", "loss", "top1", "steps"} for t in trials)
    first = sorted(t["lr"] for t in trials if t["round"] == 1)
    assert len(first) >= 3 and {t["steps"] for t in trials if t["round"] == 1} == {2}
    assert all(b / a == pytest.approx(2.0) for a, b in zip(first, first[1:]))  # x2 apart
    assert any(lr == pytest.approx(curve["lr"]) for lr in first)  # centred on the curve's answer
    assert answer["low"] <= first[0] and first[-1] <= answer["high"]
    assert (verification["heldout_source"], verification["heldout_images"]) == ("train (held out)", 7)  # 36 // 5
    assert verification["first_round_steps"] == 2
    assert verification["total_steps"] == sum(t["steps"] for t in trials) and verification["stop_reason"] == "completed"
    if verification["outcome"] == "inconclusive":  # the curve's rate stays, and a warning says why
        assert answer["method"] == curve["method"] == "bottom" and result["suggested_lr"] == curve["lr"]
        assert verification["chosen_lr"] is None
        assert any("did not beat the curve's rate" in w for w in answer["warnings"])
    else:
        assert verification["outcome"] in ("confirmed", "replaced") and answer["method"] == "verified"
        assert result["suggested_lr"] == verification["chosen_lr"] and verification["chosen_lr"] in first + [
            t["lr"] for t in trials]
    log = (tmp_path / "out" / "lr_finder_log.txt").read_text()
    assert (f"--lr_verify: {len(trials)} short trainings, {verification['total_steps']} steps in all") in log
    assert ("the first round 2 steps each, doubled each round for the better half; scored on 7 held-out images "
            f"from train (held out); {verification['outcome']}") in log
    last = trials[-1]
    shown = f"{last['loss']:.4f}" if last["loss"] is not None else "diverged"
    assert f"  round {last['round']}, lr {last['lr']:.2e}, {last['steps']} steps: held-out loss {shown}" in log
    assert f"Expected best      : {answer['low']:.2e} to {answer['high']:.2e}" in log
    import cv2

    assert cv2.imread(str(tmp_path / "out" / "p.png")).shape[1] == 1800  # the second panel widens the plot


def test_a_budget_buys_the_largest_first_round_that_fits():
    assert steps_per_first_round_step(5) == 19  # 5 x 1 + 3 x 2 + 2 x 4
    assert steps_per_first_round_step(3) == 7  # 3 x 1 + 2 x 2
    assert first_round_for_budget(5, 760) == 40 and first_round_for_budget(5, 759) == 39
    assert first_round_for_budget(5, 38) == 2 and first_round_for_budget(5, 37) == 0  # under 2 steps: none
    assert first_round_for_budget(3, 100) == 14
    assert (most_candidates("sgd"), most_candidates("adamw")) == (5, 3)  # x1/2 to x8, x1/3 to x2


def test_a_share_too_small_for_two_steps_a_trial_is_refused_before_the_sweep(tmp_path):
    data = make_image_folder(tmp_path / "data")  # 24 training images: 6 steps an epoch at batch 4
    code, out, err = run_main("--find_lr", "--data_dir", data, *FAST, "--lr_iter", "12", "--epochs", "10",
                              "--lr_verify_share", "50", "--lr_plot", tmp_path / "out" / "p.png")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ("--lr_verify_share 50: 50 % of the training --epochs plans (10 epochs x 6 steps = 60 steps) is 30 "
            "steps, fewer than the 38 that 5 rates need") in err
    assert "Range test:" not in out and not (tmp_path / "out" / "suggested_lr.json").exists()


def test_a_share_of_the_planned_training_chooses_n_and_the_log_states_the_cost(tmp_path):
    data = make_image_folder(tmp_path / "data")
    code, out, err = run_main("--find_lr", "--data_dir", data, *FAST, "--lr_iter", "12", "--lr_start", "1e-3",
                              "--epochs", "100", "--lr_verify_share", "10", "--lr_plot", tmp_path / "out" / "p.png")
    assert code == 0, err
    verification = json.loads((tmp_path / "out" / "suggested_lr.json").read_text())["verification"]
    assert (verification["planned_steps"], verification["budget_share"]) == (600, 10.0)  # 100 epochs x 6 steps
    rates = len([t for t in verification["trials"] if t["round"] == 1])
    # 10 % of 600 is 60 steps: the largest N with N x (steps of all rounds per first-round step) <= 60
    assert verification["first_round_steps"] == {5: 3, 4: 7, 3: 8, 2: 30}[rates]
    assert verification["total_steps"] <= 60
    share = f"{verification['total_steps'] / 600:.2%} of the 600 steps --epochs plans"
    assert share in out and share in (tmp_path / "out" / "lr_finder_log.txt").read_text()
    assert "--lr_verify (--lr_verify_share 10):" in (tmp_path / "out" / "lr_finder_log.txt").read_text()
