"""main.py for a torchrun test: every rank also writes the sweep it recorded to
$RANK_SWEEPS_DIR/rank<N>.json, so the test can check that all ranks saw one curve."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lr_finder  # noqa: E402
import main  # noqa: E402

recorded_sweep = lr_finder.RangeTest.sweep


def sweep_and_record(self, *args, **kwargs):
    sweep = recorded_sweep(self, *args, **kwargs)
    folder = Path(os.environ["RANK_SWEEPS_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(
        {"lrs": sweep.lrs, "losses": sweep.losses, "raw_losses": sweep.raw_losses, "stop_reason": sweep.stop_reason}))
    return sweep


lr_finder.RangeTest.sweep = sweep_and_record

if __name__ == "__main__":
    sys.exit(main.main())
