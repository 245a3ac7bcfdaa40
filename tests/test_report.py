"""The log's recommended next steps and the held-out record behind an answer."""

from lr_finder import held_out_figures
from report import held_out_line, held_out_text, next_steps

RECORD = {"date": "2026-11-30", "study": "docs/suggestion_study.md", "test_cases": 7,
          "default_by_confidence": {"high": {"cases": 3, "in_plateau": 3}, "medium": {"cases": 3, "in_plateau": 2},
                                    "low": {"cases": 0, "in_plateau": 0}},
          "default_by_optimizer": {"adamw": {"cases": 3, "in_plateau": 3}, "sgd": {"cases": 4, "in_plateau": 3}},
          "range_covers_best": 6, "verified_at_2_5_sweeps": {"cases": 7, "in_plateau": 6}}

RESULT = {"data_dir": "/data", "batch_size": 64, "global_batch_size": 64, "onecycle_max_lr": 0.02}


def test_next_steps_train_with_the_optimizer_that_was_swept():
    sgd = next_steps({**RESULT, "optimizer": "sgd"}, 0.01)
    assert sgd[1] == "Train: uv run python main.py --lr 0.01 --scheduler cosine --epochs 50 --batch_size 64 --data_dir /data"
    adamw = next_steps({**RESULT, "optimizer": "adamw"}, 1e-3)
    assert adamw[1].startswith("Train: uv run python main.py --lr 0.001 --optimizer adamw --scheduler cosine")
    assert adamw[2].startswith("Or one-cycle: uv run python main.py --lr 0.02 --optimizer adamw --scheduler onecycle")


def test_held_out_figures_pick_the_answers_level_and_optimizer():
    held = held_out_figures(RECORD, "medium", "sgd")
    assert held["at_this_confidence"] == {"cases": 3, "in_plateau": 2}
    assert held["with_this_optimizer"] == {"cases": 4, "in_plateau": 3} and held["test_cases"] == 7
    assert held_out_figures(RECORD, "high", "lamb")["with_this_optimizer"] == {"cases": 0, "in_plateau": 0}


def test_held_out_record_is_told_with_its_numbers():
    text = held_out_text(held_out_figures(RECORD, "medium", "sgd"))
    assert "Confidence medium: near the best rate on 2 of 3 held-out test cases at this level;" in text
    assert "over all levels, 3 of 4 with sgd" in text and "covered the best rate on 6 of 7" in text
    assert "2.5 sweeps of extra cost was near it on 6 of 7" in text and "(docs/suggestion_study.md, 2026-11-30)" in text
    assert held_out_line(held_out_figures(RECORD, "low", "sgd")) == (
        "confidence low: no held-out test case had it, so it is not yet measured")
    assert "none of them used lamb" in held_out_text(held_out_figures(RECORD, "high", "lamb"))
