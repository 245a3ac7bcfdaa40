"""The log's recommended next steps and the study record behind an answer."""

import json

import pytest

from errors import UserInputError
from find_lr import load_study_record, study_figures
from report import next_steps, study_line, study_text

RESULT = {"data_dir": "/data", "batch_size": 64, "global_batch_size": 64, "onecycle_max_lr": 0.02}


def case(optimizer, level, landed, within, size=16, covers=True, v10=True, v25=True):
    return {"name": "c", "optimizer": optimizer, "input_size": size, "confidence": level, "in_plateau": landed,
            "within_noise": within, "range_covers_best": covers, "verify_10_in_plateau": v10,
            "verify_2_5_sweeps_in_plateau": v25}


RECORD = {"written": "2026-11-30", "study": "docs/suggestion_study.md", "cases": [
    case("sgd", "medium", False, False, v10=False, v25=False), case("sgd", "medium", True, False, covers=False),
    case("sgd", "medium", True, True, 96, v10=False), case("sgd", "low", True, True, 72),
    case("adamw", "high", True, True), case("adamw", "high", True, True, 72), case("adamw", "high", True, True, 32)]}


def test_next_steps_train_with_the_optimizer_that_was_swept():
    sgd = next_steps({**RESULT, "optimizer": "sgd"}, 0.01)
    assert sgd[1] == "Train: uv run python main.py --lr 0.01 --scheduler cosine --epochs 50 --batch_size 64 --data_dir /data"
    adamw = next_steps({**RESULT, "optimizer": "adamw"}, 1e-3)
    assert adamw[1].startswith("Train: uv run python main.py --lr 0.001 --optimizer adamw --scheduler cosine")
    assert adamw[2].startswith("Or one-cycle: uv run python main.py --lr 0.02 --optimizer adamw --scheduler onecycle")


def test_study_figures_count_by_level_and_optimizer_together_and_apart():
    fig = study_figures(RECORD, "medium", "sgd")
    assert fig["same_confidence_and_optimizer"] == {"cases": 3, "in_plateau": 2, "within_noise": 1}
    assert fig["same_optimizer"] == {"cases": 4, "in_plateau": 3, "within_noise": 2}
    assert fig["input_sizes"] == [16, 96] and fig["test_cases"] == 7 and fig["range_covers_best"] == 6
    assert fig["verify_10_in_plateau"] == 5 and fig["verify_2_5_sweeps_in_plateau"] == 6
    high_sgd = study_figures(RECORD, "high", "sgd")  # every high case was AdamW: SGD at high is unmeasured
    assert high_sgd["same_confidence_and_optimizer"]["cases"] == 0 and high_sgd["same_confidence"]["cases"] == 3


def test_the_study_record_is_told_with_its_numbers():
    fig = study_figures(RECORD, "medium", "sgd")
    assert study_line(fig) == ("study: with sgd at curve confidence medium, the default landed among the best "
                               "rates on 2 of 3 held-out cases")
    text = study_text(fig, verified=False)
    assert "on 7 small test cases the rule was not fitted to (16 to 96 px images" in text
    assert "With sgd at confidence medium: landed on 2 of 3, lost no more top-1 than the noise on 1 of 3." in text
    assert "any optimizer: 2 of 3. With sgd, any confidence: 3 of 4." in text
    assert "covered the best rate on 6 of 7" in text and "5 of 7 with 10-step first rounds and on 6 of 7" in text
    assert "went through --lr_verify" not in text
    assert "the counts are for the curve's own confidence (medium)" in study_text(fig, verified=True)
    assert study_line(study_figures(RECORD, "low", "sgd")).endswith("on 1 of 1 held-out cases (too few to tell)")
    unmeasured = study_figures(RECORD, "high", "sgd")
    assert study_line(unmeasured) == "study: no held-out case had sgd at curve confidence high, so it is not measured"
    assert "With sgd at confidence high: landed on no case. At confidence high, any optimizer: 3 of 3." in (
        study_text(unmeasured, verified=False))


def test_a_missing_or_damaged_study_record_stops_with_one_line(tmp_path):
    with pytest.raises(UserInputError, match=r"missing\.json: the suggestion study's record is missing or damaged"):
        load_study_record(tmp_path / "missing.json")
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps({"written": "2026-11-30", "study": "s", "cases": [{"optimizer": "sgd"}]}))
    with pytest.raises(UserInputError, match="restore it with: git checkout -- damaged.json"):
        load_study_record(damaged)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(RECORD))
    assert load_study_record(good) == RECORD
