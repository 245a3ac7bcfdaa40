"""The range-test workflow: data, model and optimizer from the flags, the sweep, and the
plot, history CSV, JSON and log next to ``--lr_plot``.

    uv run python main.py --find_lr --lr_plot ./outputs/lr_finder_imagenet1k.png --data_dir ./data
"""

import os
import shlex
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from torch import nn

from errors import UserInputError
from lr_finder import RangeTest, SuggestionError, analyse, confidence, onecycle_max_lr, plot_sweep, smooth, \
    spread_decades, suggest_all
from model_resnet50 import create_model
from preprocess import EpochSampler, build_datasets, build_loader
from report import atomic_write_json, atomic_write_text, history_csv, json_safe, render_log
from runtime import AMP_DTYPES, Distributed, seed_everything, select_precision, wrap_model
from train import build_optimizer

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def output_paths(lr_plot: str) -> dict[str, str]:
    folder = os.path.dirname(lr_plot) or "."
    return {
        "plot_file": lr_plot,
        "log_file": os.path.join(folder, "lr_finder_log.txt"),
        "json_file": os.path.join(folder, "suggested_lr.json"),
        "history_file": os.path.join(folder, "lr_finder_history.csv"),
    }


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


def summarise(sweep, method: str) -> dict:
    """Suggestions, their agreement and the analysis, or the reason there are none."""
    curve = sweep.losses
    try:
        suggestions = suggest_all(sweep.lrs, curve)
    except SuggestionError as exc:
        return {"success": False, "error": f"no suggestion: {exc}", "suggested_lr": None}
    spread = spread_decades(suggestions.values())
    level = confidence(spread)
    chosen = suggestions[method]
    verdict, warnings = analyse(chosen, level, spread)
    return {
        "success": True,
        "suggested_lr": chosen,
        "suggestion_method": method,
        "suggestions": suggestions,
        "spread_decades": round(spread, 3),
        "confidence": level,
        "onecycle_max_lr": onecycle_max_lr(sweep.lrs, curve),
        "analysis": {"verdict": verdict, "warnings": warnings},
    }


def run_find_lr(args, dist: Distributed) -> tuple[int, float | None]:
    """Run the sweep and write its results (rank 0); returns (exit code, suggested learning rate)."""
    paths = output_paths(args.lr_plot)
    if dist.is_main:
        ensure_writable(os.path.dirname(args.lr_plot) or ".")
    device = dist.device
    say = print if dist.is_main else (lambda *a, **k: None)
    precision, why = select_precision(args.precision, device)
    channels_last = not args.no_channels_last
    seed_everything(args.seed)

    train_ds, val_ds = build_datasets(args.dataset, args.data_dir, args.input_size, args.max_samples,
                                      args.seed, need_val=args.lr_advanced, val_labels=args.val_labels,
                                      rescan=args.rescan)
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
                                    class_names=train_ds.classes),
                       dist, args.sync_bn, args.compile)
    optimizer = build_optimizer(model, args.optimizer, args.lr_start, args.momentum, args.weight_decay)
    say(f"Range test: {args.dataset}, {len(train_ds)} training images in {num_classes} classes, "
        f"batch {args.batch_size} x {dist.world_size} process(es) = {global_batch}, {num_iter} steps "
        f"from {args.lr_start:g} to {args.lr_end:g} ({args.lr_step_mode})")
    say(f"Device: {device}, precision {precision} ({why}), channels_last={channels_last}", flush=True)

    started = time.perf_counter()
    with StopOnSignal(abort_on_second=not dist.enabled) as stop:
        finder = RangeTest(model, optimizer, nn.CrossEntropyLoss(), device, amp_dtype=AMP_DTYPES[precision],
                           channels_last=channels_last, stop_requested=stop, dist=dist)
        sweep = finder.sweep(train_loader, args.lr_start, args.lr_end, num_iter, args.lr_step_mode,
                             args.lr_smooth_f, args.lr_diverge_th, val_loader, args.lr_val_batches)
    elapsed = time.perf_counter() - started

    result = sweep_record(args, dist, sweep, paths, num_iter, len(train_loader), elapsed, precision)
    result.update(train_ds.layout)
    write_rank_history(sweep, dist)
    if dist.is_main:
        write_results(args, paths, sweep, result)
        report_to_user(result, paths)
    suggested = dist.broadcast(result["suggested_lr"])
    if sweep.stop_reason == "interrupted":
        return SIGNAL_EXIT_CODES.get(stop.signum, 130), None
    return (0, suggested) if result["success"] else (2, None)


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
    result.update(summarise(sweep, args.lr_suggest))
    if args.lr_advanced:
        try:
            result["suggestions_training_curve"] = suggest_all(sweep.lrs, smooth(sweep.raw_losses, args.lr_smooth_f))
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
    title = (f"LR range test: {args.dataset}, batch {result['global_batch_size']}, "
             f"{sweep.steps_run}/{result['lr_iter']} steps ({sweep.stop_reason})")
    if sweep.steps_run:
        plot_sweep(paths["plot_file"], sweep, result.get("suggestions") or {}, args.lr_suggest, title,
                   args.lr_smooth_f)
    atomic_write_json(paths["json_file"], json_safe(result))
    config = {k: v for k, v in sorted(vars(args).items())}
    note = ("(not captured when main.py is run directly; run_lr_finder.py records the full output here)")
    atomic_write_text(paths["log_file"], render_log(config, shlex.join([sys.executable] + sys.argv), note, result))


def report_to_user(result: dict, paths: dict) -> None:
    if result["success"]:
        print(f"Suggested learning rate: {result['suggested_lr']:.2e} ({result['suggestion_method']}, "
              f"confidence {result['confidence']}); stop reason: {result['stop_reason']}")
    else:
        print(f"error: {result['error']}", file=sys.stderr)
    for key in ("plot_file", "log_file", "history_file"):
        print(f"  {key:<13} {paths[key]}")
    print(f"  {'json_file':<13} {paths['json_file']}", flush=True)
