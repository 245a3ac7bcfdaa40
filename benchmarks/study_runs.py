"""Running main.py for the suggestion study, one small JSON record per finished run.

A record holds the command line (with the data folders written as ``<data:NAME>``, so it is the
same on every machine), the exit code, the seconds, the precision main.py chose (``--precision
auto``: bf16 on a CPU that has it natively, else fp32, so it follows the machine), and what the
study reads: the best val top-1 and its curve per epoch for a training, the loss history and the
JSON for a range test. Records live in the repository: on a fresh machine the study reruns only
what has no record. A training stopped part-way continues from its last checkpoint (``--resume
auto``) when the study runs again on the same machine; one main.py refuses (made with other
settings, such as another precision) trains afresh, with a line that says so.
"""

import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def data_dir(kind: str) -> str:
    if kind == "digits":
        from demo_data import ensure_digits_imagefolder

        return str(ensure_digits_imagefolder())
    from photo_patches import PATCH_SETS, ensure_patches

    return str(ensure_patches(PATCH_SETS[kind]))


def epoch_top1(folder: Path) -> list[float]:
    try:
        with open(folder / "metrics.csv") as f:
            return [float(r["val_top1"]) for r in csv.DictReader(f)]
    except FileNotFoundError:
        return []


def history(folder: Path) -> dict:
    with open(folder / "lr_finder_history.csv") as f:
        rows = list(csv.DictReader(f))
    return {"lr": [float(r["lr"]) for r in rows], "loss": [float(r["loss"]) for r in rows]}


def training_precision(folder: Path) -> str | None:
    """The precision main.py resolved for a training (its config.json); None for a range test."""
    try:
        return json.loads((folder / "config.json").read_text()).get("precision")
    except FileNotFoundError:
        return None


def record_precision(record: dict) -> str | None:
    """A record's precision: its own field, else (a range test recorded before the field) its JSON's."""
    return record.get("precision") or ((record.get("answer") or {}).get("machine") or {}).get("precision")


# A training's output flags (not part of its record): an interrupted one continues from its last
# epoch's checkpoint in the work folder when the study runs again on the same machine.
RESUMABLE = ["--output_dir", "<run>", "--resume", "auto"]
PRODIGY = "<prodigy>"  # marks a run whose optimizer is Prodigy (a study-only baseline, not a main.py choice)


@contextlib.contextmanager
def prodigy_optimizer():
    """Training builds Prodigy (prodigyopt, its defaults) wherever it would build its optimizer."""
    from prodigyopt import Prodigy

    import train_setup

    def build(model, *args, **kwargs):
        print("Optimizer: Prodigy at its defaults (lr 1), replacing the command line's", flush=True)
        return Prodigy([p for p in model.parameters() if p.requires_grad], lr=1.0)

    original = train_setup.build_optimizer
    train_setup.build_optimizer = build
    try:
        yield
    finally:
        train_setup.build_optimizer = original


class Runner:
    class Missing(Exception):
        pass

    def __init__(self, records: Path, work: Path, dry: bool = False, quiet: bool = True, quick: bool = False):
        self.records, self.work, self.dry, self.quiet, self.quick = records, work, dry, quiet, quick
        self.precisions: dict[str, set[str]] = {}  # case -> the precisions its runs trained in

    # -- command lines

    def common(self, case, data: str | None = None, input_size: int | None = None, batch: int | None = None,
               optimizer: str | None = None) -> list[str]:
        data = data or case.data
        optimizer = optimizer or case.optimizer
        flags = ["--data_dir", f"<data:{data}>", "--dataset", "digits" if data == "digits" else "imagenet1k",
                 "--input_size", str(input_size or case.input_size), "--batch_size", str(batch or case.batch_size),
                 "--num_workers", "2", "--optimizer", optimizer]
        if getattr(case, "arch", "resnet50") != "resnet50":
            flags += ["--arch", case.arch]
        if getattr(case, "max_samples", None):
            flags += ["--max_samples", str(case.max_samples)]
        if getattr(case, "pretrain", None):
            flags += ["--use_pretrained", "--pretrained_path", f"<weights:{case.pretrain.name}>"]
        return flags

    def resolve(self, argv: list[str]) -> list[str]:
        out = []
        for arg in argv:
            if arg.startswith("<data:"):
                arg = data_dir(arg[6:-1])
            elif arg.startswith("<weights:"):
                arg = str(self.pretrained_weights(arg[9:-1]))
            out.append(arg)
        return out

    # -- running, cached by record

    def run(self, name: str, argv: list[str], outputs: list[str]) -> dict:
        """``main.py argv`` in this process, unless ``records/name.json`` holds the same command."""
        record_path = self.records / f"{name}.json"
        if record_path.exists():
            record = json.loads(record_path.read_text())
            if record["argv"] == argv:
                return self.seen(name, record)
        if self.dry:
            raise Runner.Missing(name)
        import main

        prodigy = argv[0] == PRODIGY
        if prodigy:
            argv = argv[1:]
        run_dir = self.work / name
        run_dir.mkdir(parents=True, exist_ok=True)
        real = self.resolve(argv) + [flag.replace("<run>", str(run_dir)) for flag in outputs]
        resumed = "--resume" in outputs and (run_dir / "last.pt").exists()
        started = time.perf_counter()

        def run_main() -> int:
            with open(run_dir / "output.txt", "w") as log, contextlib.ExitStack() as stack:
                if self.quiet:
                    stack.enter_context(contextlib.redirect_stdout(log))
                    stack.enter_context(contextlib.redirect_stderr(log))
                with prodigy_optimizer() if prodigy else contextlib.nullcontext():
                    return main.main(real)

        code = run_main()
        if resumed and code == 2:  # main.py refused the checkpoint (made with other settings, e.g. precision)
            said = (run_dir / "output.txt").read_text().strip().splitlines() if self.quiet else []
            print(f"[{name}] {said[-1] if said else 'main.py refused its last.pt'}: training afresh", flush=True)
            for checkpoint in run_dir.glob("*.pt"):
                checkpoint.unlink()
            resumed, started = False, time.perf_counter()
            code = run_main()
        if prodigy:
            argv = [PRODIGY, *argv]
        record = {"argv": argv, "exit_code": code, "seconds": round(time.perf_counter() - started, 1)}
        if resumed:
            record["resumed"] = True  # the seconds are this process's share only
        if (run_dir / "metrics.csv").exists():
            curve = epoch_top1(run_dir)
            record.update(top1_per_epoch=curve, best_top1=max(curve, default=0.0))
        if (run_dir / "lr_finder_history.csv").exists():
            record.update(history=history(run_dir), answer=json.loads((run_dir / "suggested_lr.json").read_text()))
        if precision := training_precision(run_dir) or record_precision(record):
            record["precision"] = precision
        record_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=0))
        os.replace(tmp, record_path)
        for checkpoint in run_dir.glob("*.pt"):
            if checkpoint.name != "best.pt" or not name.startswith("pretrain-"):
                checkpoint.unlink()  # 100 MB each, not needed by the study
        print(f"[{name}] {record.get('best_top1', '')} ({record['seconds']} s)", flush=True)
        return self.seen(name, record)

    def seen(self, name: str, record: dict) -> dict:
        """Note the precision of a case's run; records made before it was recorded say "unrecorded"."""
        self.precisions.setdefault(name.split("/")[0], set()).add(record_precision(record) or "unrecorded")
        return record

    def sweep(self, case) -> tuple[list[float], list[float], dict]:
        argv = ["--find_lr", *self.common(case), "--lr_start", repr(case.lr_start), "--lr_end", repr(case.lr_end),
                "--lr_iter", str(case.lr_iter), "--seed", "0"]
        record = self.run(f"{case.name}/sweep", argv, ["--lr_plot", "<run>/range_test.png"])
        return record["history"]["lr"], record["history"]["loss"], record

    @staticmethod
    def verify_name(case, steps: int | None = None, share: float | None = None) -> str:
        """The record's name (under --records, without .json) of a verification run."""
        return f"{case.name}/verify-{steps}" if share is None else f"{case.name}/verify-share{share:g}"

    def verify(self, case, steps: int | None = None, share: float | None = None) -> tuple[dict, dict]:
        """The range test with ``--lr_verify steps``, or with ``--lr_verify_share share`` against the
        case's own training (``--epochs``); (its JSON, its record). A run main.py refused (too small a
        share) answers with its exit code as the error."""
        verify = ["--lr_verify", str(steps)] if share is None else \
            ["--lr_verify_share", f"{share:g}", "--epochs", str(case.epochs)]
        argv = ["--find_lr", *self.common(case), "--lr_start", repr(case.lr_start), "--lr_end", repr(case.lr_end),
                "--lr_iter", str(case.lr_iter), "--seed", "0", *verify]
        record = self.run(self.verify_name(case, steps, share), argv, ["--lr_plot", "<run>/range_test.png"])
        return record.get("answer") or {"error": f"main.py exited with {record['exit_code']}"}, record

    def train(self, case, lr: float, seed: int, epochs: int | None = None) -> float:
        epochs = epochs or case.epochs
        argv = ["--lr", f"{lr:.6g}", *self.common(case), "--epochs", str(epochs), "--scheduler", "cosine",
                "--no_plots", "--seed", str(seed)]
        tag = "" if epochs == case.epochs else f"-epochs{epochs}"
        record = self.run(f"{case.name}/train-lr{lr:.4g}-seed{seed}{tag}", argv, RESUMABLE)
        return record.get("best_top1", 0.0)

    def train_prodigy(self, case, seed: int = 0) -> float:
        """The baseline that needs no rate: Prodigy at its defaults (lr 1), the same cosine training."""
        argv = [PRODIGY, "--lr", "1", *self.common(case, optimizer="adamw"), "--epochs", str(case.epochs),
                "--scheduler", "cosine", "--no_plots", "--seed", str(seed)]
        record = self.run(f"{case.name}/prodigy-seed{seed}", argv, RESUMABLE)
        return record.get("best_top1", 0.0)

    # -- fine-tuning: the model trained first on other data

    def pretrained_weights(self, name: str) -> Path:
        from study_cases import ALL_CASES

        spec = next(c.pretrain for c in ALL_CASES if c.pretrain and c.pretrain.name == name)
        weights = self.work / f"pretrain-{name}" / "weights.pt"
        if weights.exists():
            return weights
        argv = ["--lr", f"{spec.lr:g}", *self.common(spec, spec.data, spec.input_size, spec.batch_size,
                                                     spec.optimizer),
                "--epochs", str(spec.epochs), "--scheduler", "cosine", "--no_plots", "--seed", "0"]
        record_path = self.records / f"pretrain-{name}.json"
        if record_path.exists():  # the weights are not kept in the repository: train them again
            record_path.rename(record_path.with_suffix(".previous.json"))
        self.run(f"pretrain-{name}", argv, ["--output_dir", "<run>"])
        import torch

        state = torch.load(self.work / f"pretrain-{name}" / "best.pt", map_location="cpu", weights_only=True)
        torch.save(state["model"], weights)
        return weights
