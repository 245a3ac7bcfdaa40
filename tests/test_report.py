"""The log's recommended next steps."""

from report import next_steps

RESULT = {"data_dir": "/data", "batch_size": 64, "global_batch_size": 64, "onecycle_max_lr": 0.02}


def test_next_steps_train_with_the_optimizer_that_was_swept():
    sgd = next_steps({**RESULT, "optimizer": "sgd"}, 0.01)
    assert sgd[1] == "Train: uv run python main.py --lr 0.01 --scheduler cosine --epochs 50 --batch_size 64 --data_dir /data"
    adamw = next_steps({**RESULT, "optimizer": "adamw"}, 1e-3)
    assert adamw[1].startswith("Train: uv run python main.py --lr 0.001 --optimizer adamw --scheduler cosine")
    assert adamw[2].startswith("Or one-cycle: uv run python main.py --lr 0.02 --optimizer adamw --scheduler onecycle")
