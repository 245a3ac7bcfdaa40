"""The range-test workflow: data, model and optimizer from the flags, the sweep, and the
plot, history CSV, JSON and log next to ``--lr_plot``.

    uv run python main.py --find_lr --lr_plot ./outputs/lr_finder_imagenet1k.png --data_dir ./data
"""

import json
import os
import shlex
import signal
import sys
import tempfile
import time
from datetime import datetime
from functools import partial
from pathlib import Path

from atomic_io import atomic_write_json, atomic_write_text
from errors import UserInputError
from images import to_model_input
from lr_finder import RangeTest, amp_options
from lr_plot import plot_sweep
from lr_verify import candidate_rates, halving_rounds, outcome, verify_rates
from model_resnet50 import create_model
from preprocess import MAX_BAD_FRACTION, EpochSampler, balanced_subset, build_datasets, build_loader, hold_out, subset
from recipes import recipe_lr
from report import analyse, history_csv, json_safe, render_log, study_line
from runtime import AMP_DTYPES, Distributed, seed_everything, select_precision, wrap_model
from settings import rate_settings
from suggest import (
    AUTO,
    Evidence,
    SuggestionError,
    auto_method,
    confidence,
    find_landmarks,
    smooth,
    spread_decades,
    suggest_all,
    suggested_range,
    trusted_readings,
)
from train_setup import loss_from_args, optimizer_from_args

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
VERIFY_HELDOUT_BATCHES = 8  # held-out images for --lr_verify: this many batches (global)
# the suggestion study's test cases, reported beside each default answer
# (written by benchmarks/suggestion_study.py --study_record)
STUDY_RECORD_FILE = Path(__file__).with_name("suggestion_study_record.json")


def load_study_record(path: Path = STUDY_RECORD_FILE) -> dict:
    """The committed study record; a missing or damaged one stops the run before the sweep, not after."""
    try:
        record = json.loads(path.read_text())
        study_figures(record, "medium", "sgd")  # every field the report reads is there
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"{path}: the suggestion study's record is missing or damaged ({exc!r}); "
                             f"restore it with: git checkout -- {path.name}") from None
    return record


def study_figures(record: dict, level: str, optimizer: str) -> dict:
    """The record's counts for a default answer whose curve read ``level`` with ``optimizer``: the
    test cases with both, with the level alone and with the optimizer alone (how many, how many
    landed in the plateau, how many lost no more top-1 than the noise); the range's coverage; how
    often each verification landed."""
    cases = record["cases"]

    def count(rows: list[dict]) -> dict:
        return {"cases": len(rows), "in_plateau": sum(bool(r["in_plateau"]) for r in rows),
                "within_noise": sum(bool(r["within_noise"]) for r in rows)}

    sizes = [int(r["input_size"]) for r in cases]
    return {"study": record["study"], "written": record["written"], "test_cases": len(cases),
            "input_sizes": [min(sizes), max(sizes)], "curve_confidence": level, "optimizer": optimizer,
            "same_confidence_and_optimizer": count([r for r in cases
                                                    if r["confidence"] == level and r["optimizer"] == optimizer]),
            "same_confidence": count([r for r in cases if r["confidence"] == level]),
            "same_optimizer": count([r for r in cases if r["optimizer"] == optimizer]),
            "range_covers_best": sum(bool(r["range_covers_best"]) for r in cases),
            "verify_10_in_plateau": sum(bool(r["verify_10_in_plateau"]) for r in cases),
            "verify_2_5_sweeps_in_plateau": sum(bool(r["verify_2_5_sweeps_in_plateau"]) for r in cases)}


def output_paths(lr_plot: str) -> dict[str, str]:
    folder = os.path.dirname(lr_plot) or "."
    return {
        "plot_file": lr_plot,
        "log_file": os.path.join(folder, "lr_finder_log.txt"),
        "json_file": os.path.join(folder, "suggested_lr.json"),
        "history_file": os.path.join(folder, "lr_finder_history.csv"),
    }


def data_name(dataset: str, data_dir: str) -> str:
    """What the plot calls the data: the folder's name for an image-folder tree (ImageNet or the
    user's own), the data set's name otherwise (cifar100; digits, the demo's)."""
    if dataset != "imagenet1k":
        return dataset
    return Path(data_dir).resolve().name or dataset


def ensure_writable(folder: str) -> None:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserInputError(f"{folder}: cannot write results there ({exc.strerror}); choose another --lr_plot folder") from None


class StopOnSignal:
    """SIGINT/SIGTERM ask the sweep to stop after the current step. Alone, a second signal
    aborts; under torchrun it is ignored, because torchrun answers a Ctrl-C by sending its
    workers SIGTERM, and they must still finish the step and write their results."""

    def __init__(self, abort_on_second: bool = True):
        self.signum = None
        self.abort_on_second = abort_on_second

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            if self.abort_on_second:
                raise KeyboardInterrupt
            return
        self.signum = signum
        again = "send it again to abort" if self.abort_on_second else "the job ends when results are written"
        print(f"\n{signal.Signals(signum).name} received: stopping after this step and saving results "
              f"({again})", file=sys.stderr, flush=True)

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def summarise(lrs, raw_losses, method: str, smooth_f: float, optimizer: str = "sgd") -> dict:
    """Every method's rate, the landmarks and the assessment, or the reason there are none
    (``method`` ``auto`` picks the reading by ``optimizer``)."""
    try:
        suggestions = suggest_all(lrs, raw_losses, smooth_f)
        marks = find_landmarks(lrs, raw_losses)
    except SuggestionError as exc:
        return {"success": False, "error": f"no suggestion: {exc}", "suggested_lr": None}
    if method == AUTO:
        method = auto_method(optimizer)
    result = {
        "success": True,
        "optimizer": optimizer,
        "suggested_lr": suggestions[method],
        "suggestion_method": method,
        "suggestions": suggestions,
        "loss_drop": round(marks.loss_drop, 4),
        "edge_lr": marks.edge_lr,
        "min_loss_lr": marks.min_lr,
        "onecycle_max_lr": marks.onecycle_lr,
        "blow_lr": marks.blow_lr,
        "suggested_range": list(suggested_range(suggestions[method], optimizer, marks.blow_lr)),
    }
    result.update(assessment(result))
    return result


def assessment(result: dict) -> dict:
    """Spread, confidence and analysis of a record's suggestions (again after --lr_verify)."""
    verification = result.get("verification")
    verified = None
    if result.get("suggestion_method") == "verified":
        rates = sorted(t["lr"] for t in verification)
        verified = rates[0] < result["suggested_lr"] < rates[-1]
    elif verification is not None:
        verified = "inconclusive"
    readings = trusted_readings(result["suggestions"], result.get("optimizer", "sgd"))
    evidence = Evidence(result["loss_drop"], spread_decades(readings), result["edge_lr"] is not None, verified)
    level = confidence(evidence)
    verdict, warnings = analyse(result["suggested_lr"], level, evidence)
    return {"spread_decades": round(evidence.spread, 3), "confidence": level,
            "analysis": {"verdict": verdict, "warnings": warnings}}


def run_find_lr(args, dist: Distributed) -> tuple[int, float | None]:
    """Run the sweep and write its results (rank 0); returns (exit code, suggested learning rate)."""
    paths = output_paths(args.lr_plot)
    # the study measured the default reading of the training curve, nothing else
    record = None
    if dist.is_main:
        ensure_writable(os.path.dirname(args.lr_plot) or ".")
        if args.lr_suggest == AUTO and not args.lr_advanced:
            record = load_study_record()
    device = dist.device
    say = print if dist.is_main else (lambda *a, **k: None)
    precision, why = select_precision(args.precision, device)
    channels_last = not args.no_channels_last
    seed_everything(args.seed)

    # val/ is read only when used: advanced mode, and --lr_verify when there is one (else it holds
    # out part of train/).
    verify_on_val = args.lr_verify > 0 and (args.dataset == "cifar100" or Path(args.data_dir, "val").is_dir())
    train_ds, val_ds = build_datasets(args.dataset, args.data_dir, args.input_size, args.max_samples,
                                      args.seed, need_val=args.lr_advanced or verify_on_val,
                                      val_labels=args.val_labels, rescan=args.rescan)
    if args.lr_verify and train_ds.layout["data_layout"] == "wds_shards":
        raise UserInputError("--lr_verify picks held-out images by index, which shards do not offer; run it on a "
                             "class-folder tree (prepare_imagenet.py without --format wds) or drop --lr_verify")
    sampler = EpochSampler(len(train_ds), args.seed, True, dist.rank, dist.world_size, advance_each_pass=True)
    train_loader = build_loader(train_ds, args.batch_size, True, args.num_workers, device, args.seed, sampler)
    val_loader = None
    if args.lr_advanced:
        val_sampler = EpochSampler(len(val_ds), args.seed, False, dist.rank, dist.world_size)
        val_loader = build_loader(val_ds, args.batch_size, False, 0, device, args.seed, val_sampler)
    num_iter = len(train_loader) * args.epochs if args.lr_iter == "epoch" else args.lr_iter
    num_classes = len(train_ds.classes)
    global_batch = args.batch_size * dist.world_size

    model = wrap_model(create_model(num_classes, args.input_size, device, channels_last,
                                    pretrained=args.use_pretrained, weights_path=args.pretrained_path,
                                    class_names=train_ds.classes, arch=args.arch),
                       dist, args.sync_bn, args.compile)
    # The loss and optimizer training will use (label smoothing, MixUp/CutMix, decay split, clipping).
    criterion = loss_from_args(args, num_classes)
    optimizer = optimizer_from_args(model, args, args.lr_start)
    say(f"Range test: {args.dataset}, {args.arch}, {len(train_ds)} training images in {num_classes} classes, "
        f"batch {args.batch_size} x {dist.world_size} process(es) = {global_batch}, {num_iter} steps "
        f"from {args.lr_start:g} to {args.lr_end:g} ({args.lr_step_mode})")
    say(f"Device: {device}, precision {precision} ({why}), channels_last={channels_last}", flush=True)

    started = time.perf_counter()
    with StopOnSignal(abort_on_second=not dist.enabled) as stop:
        finder = RangeTest(model, optimizer, criterion, device,
                           **amp_options(device, AMP_DTYPES[precision]),
                           input_transform=partial(to_model_input, device=device, channels_last=channels_last),
                           batch_transform=criterion.mix, stop_requested=stop, dist=dist,
                           max_bad_fraction=MAX_BAD_FRACTION)
        sweep = finder.sweep(train_loader, args.lr_start, args.lr_end, num_iter, args.lr_step_mode,
                             args.lr_smooth_f, args.lr_diverge_th, val_loader, args.lr_val_batches)
        elapsed = time.perf_counter() - started
        result = sweep_record(args, dist, sweep, paths, num_iter, len(train_loader), elapsed, precision)
        result.update(train_ds.layout)
        curve_level = result.get("confidence")  # before --lr_verify re-assesses it
        if args.lr_verify and result["success"] and sweep.stop_reason != "interrupted":
            verify_suggestion(args, dist, result, model, optimizer, criterion, train_ds, val_ds, precision,
                              channels_last, stop)
    write_rank_history(sweep, dist)
    if dist.is_main:
        if record is not None and curve_level and sweep.stop_reason != "interrupted":
            result["study_record"] = study_figures(record, curve_level, result.get("optimizer", "sgd"))
        write_results(args, paths, sweep, result)
        report_to_user(result, paths)
    suggested = dist.broadcast(result["suggested_lr"])
    if "interrupted" in (sweep.stop_reason, result.get("verify_stop_reason")):
        return SIGNAL_EXIT_CODES.get(stop.signum, 130), None
    return (0, suggested) if result["success"] else (2, None)


def verify_suggestion(args, dist: Distributed, result: dict, model, optimizer, criterion, train_ds, val_ds,
                      precision: str, channels_last: bool, stop) -> None:
    """``--lr_verify``: short complete trainings around the suggestion; their best becomes it when
    the trials confirm it or clearly beat it (``lr_verify.judge``)."""
    device = dist.device
    wanted = VERIFY_HELDOUT_BATCHES * args.batch_size * dist.world_size
    if val_ds is not None:
        trial_ds, heldout_ds = train_ds, subset(val_ds, balanced_subset(val_ds.subset_targets, wanted, args.seed))
        source = "val"
    else:  # never scored on images the trials train on
        trial_ds, heldout_ds = hold_out(train_ds, min(wanted, len(train_ds) // 5), args.seed, args.input_size)
        source = "train (held out)"
    heldout_sampler = EpochSampler(len(heldout_ds), args.seed, False, dist.rank, dist.world_size)
    heldout = list(build_loader(heldout_ds, args.batch_size, False, 0, device, args.seed, heldout_sampler))
    sampler = EpochSampler(len(trial_ds), args.seed, True, dist.rank, dist.world_size, advance_each_pass=True)
    loader = build_loader(trial_ds, args.batch_size, True, args.num_workers, device, args.seed, sampler)

    def batches():  # the same sequence of batches for every trial
        sampler.set_epoch(0)
        while True:
            yield from loader

    center, (low, high) = result["suggested_lr"], result["suggested_range"]
    if dist.is_main:
        plan = halving_rounds(len(candidate_rates(center, low, high)), args.lr_verify)
        print(f"Verifying: {' then '.join(f'{n} rates x {k} steps' for n, k in plan)} across {low:.2e} to "
              f"{high:.2e}, scored on {len(heldout_ds)} held-out images from {source}", flush=True)
    started = time.perf_counter()
    rounds, reason = verify_rates(model, optimizer, criterion, batches, heldout, center, args.lr_verify,
                                  device, low, high, AMP_DTYPES[precision], channels_last, dist, stop)
    result.update(verification_record(rounds, reason, args.lr_verify, source, len(heldout_ds),
                                      time.perf_counter() - started))
    chosen, result["verify_outcome"] = outcome(rounds, center, len(heldout_ds))
    if chosen is not None:
        result["suggestions"]["verified"] = chosen.lr
        result["suggested_lr"], result["suggestion_method"] = chosen.lr, "verified"
    result.update(assessment(result))


def verification_record(rounds, reason: str, steps: int, source: str, images: int, elapsed: float) -> dict:
    trials = [(number, t) for number, trials in enumerate(rounds, 1) for t in trials]
    return {
        "verification": [{"round": number, "lr": t.lr, "loss": t.loss, "top1": round(t.top1, 2), "steps": t.steps}
                         for number, t in trials],
        "verify_steps": steps,
        "verify_total_steps": sum(t.steps for _, t in trials),
        "verify_heldout": {"source": source, "images": images},
        "verify_stop_reason": reason,
        "verify_elapsed_s": round(elapsed, 2),
    }


def sweep_record(args, dist: Distributed, sweep, paths: dict, num_iter: int, batches_per_epoch: int,
                 elapsed: float, precision: str) -> dict:
    """Everything suggested_lr.json says about a sweep: settings, how it ended, suggestions."""
    global_batch = args.batch_size * dist.world_size
    result = {
        "timestamp": datetime.now().isoformat(timespec="seconds"),
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "batch_size": args.batch_size,
        "world_size": dist.world_size,
        "global_batch_size": global_batch,
        "lr_finder_epochs": round(sweep.steps_run / batches_per_epoch, 4),
        "lr_start": args.lr_start,
        "lr_end": args.lr_end,
        "lr_iter": num_iter,
        "lr_step_mode": args.lr_step_mode,
        "optimizer": args.optimizer,
        "recipe": args.recipe,
        "rate_settings": rate_settings(args),
        "recipe_lr": recipe_lr(args.recipe, global_batch),
        "steps_run": sweep.steps_run,
        "stop_reason": sweep.stop_reason,
        "stop_step": sweep.stop_step,
        "stop_lr": sweep.stop_lr,
        "diverged": sweep.stop_reason in ("diverged", "non_finite_loss"),
        "curve": "validation" if args.lr_advanced else "training",
        "bad_images": sweep.bad_images,
        "skipped_steps": sweep.skipped_steps,
        "device": str(dist.device),
        "precision": precision,
        "channels_last": not args.no_channels_last,
        "seed": args.seed,
        "elapsed_s": round(elapsed, 2),
        "images_per_second": round(sweep.steps_run * global_batch / elapsed, 1) if elapsed > 0 else None,
        **{k: v for k, v in paths.items() if k != "json_file"},
    }
    # Advanced mode reads the validation loss measured after every step.
    curve = sweep.val_losses if args.lr_advanced else sweep.raw_losses
    result.update(summarise(sweep.lrs, curve, args.lr_suggest, args.lr_smooth_f, args.optimizer))
    if args.lr_advanced:
        try:
            result["suggestions_training_curve"] = suggest_all(sweep.lrs, sweep.raw_losses, args.lr_smooth_f)
        except SuggestionError:
            result["suggestions_training_curve"] = None
    return result


def write_rank_history(sweep, dist: Distributed) -> None:
    """Test-only: with LR_FINDER_DEBUG_RANK_HISTORY=DIR each rank writes the curve it saw, so a
    test can check that all ranks recorded the same one."""
    folder = os.environ.get("LR_FINDER_DEBUG_RANK_HISTORY")
    if folder:
        atomic_write_json(Path(folder) / f"rank{dist.rank}.json", json_safe(
            {"lrs": sweep.lrs, "losses": sweep.losses, "raw_losses": sweep.raw_losses,
             "stop_reason": sweep.stop_reason, "world_size": dist.world_size}))


def write_results(args, paths: dict, sweep, result: dict) -> None:
    """History, plot, JSON and log; each written atomically."""
    atomic_write_text(paths["history_file"], history_csv(
        sweep.lrs, sweep.raw_losses, smooth(sweep.raw_losses, args.lr_smooth_f), sweep.val_losses))
    title = (f"LR range test: {data_name(args.dataset, args.data_dir)}, {args.arch}, batch {result['global_batch_size']}, "
             f"{sweep.steps_run}/{result['lr_iter']} steps ({sweep.stop_reason})")
    if result.get("study_record"):
        title += f"\n{study_line(result['study_record'])}"
    if sweep.steps_run:
        plot_sweep(paths["plot_file"], sweep, result.get("suggestions") or {}, result.get("suggestion_method"), title,
                   args.lr_smooth_f, result.get("verification"), result.get("suggested_range"))
    config = dict(sorted(vars(args).items()))  # effective: after --demo and the derived defaults
    atomic_write_json(paths["json_file"], json_safe({**result, "config": config}))
    note = ("(not captured when main.py is run directly; run_lr_finder.py records the full output here)")
    atomic_write_text(paths["log_file"], render_log(config, shlex.join([sys.executable] + sys.argv), note, result))


def report_to_user(result: dict, paths: dict) -> None:
    if result["success"]:
        print(f"Suggested learning rate: {result['suggested_lr']:.2e} ({result['suggestion_method']}, "
              f"confidence {result['confidence']}); stop reason: {result['stop_reason']}")
        if result.get("study_record"):
            print(f"  {study_line(result['study_record'])}")
    else:
        print(f"error: {result['error']}", file=sys.stderr)
    for key in ("plot_file", "log_file", "history_file"):
        print(f"  {key:<13} {paths[key]}")
    print(f"  {'json_file':<13} {paths['json_file']}", flush=True)
