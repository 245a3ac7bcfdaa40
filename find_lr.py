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
from functools import partial
from pathlib import Path

from atomic_io import atomic_write_json, atomic_write_text
from errors import UserInputError
from finder_result import Answer, FinderResult, SweepFacts, Trial, Verification, answer_warnings
from images import to_model_input
from lr_finder import RangeTest, amp_options
from lr_plot import plot_sweep
from lr_verify import (
    candidate_rates,
    first_round_for_budget,
    halving_rounds,
    most_candidates,
    outcome,
    steps_per_first_round_step,
    verify_rates,
)
from model_resnet50 import create_model
from preprocess import MAX_BAD_FRACTION, EpochSampler, balanced_subset, build_datasets, build_loader, hold_out, subset
from recipes import recipe_lr
from report import console_lines, history_csv, optimizer_name, render_log, share_of_training
from runtime import AMP_DTYPES, Distributed, seed_everything, select_precision, wrap_model
from settings import rate_settings
from suggest import SuggestionError, read_curve, smooth, suggest_all
from train_setup import loss_from_args, optimizer_from_args

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
VERIFY_HELDOUT_BATCHES = 8  # held-out images for --lr_verify: this many batches (global)
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

    # val/ is read only when used: advanced mode, and --lr_verify when there is one (else it holds
    # out part of train/).
    verifying = args.lr_verify > 0 or args.lr_verify_share > 0
    verify_on_val = verifying and (args.dataset == "cifar100" or Path(args.data_dir, "val").is_dir())
    train_ds, val_ds = build_datasets(args.dataset, args.data_dir, args.input_size, args.max_samples,
                                      args.seed, need_val=args.lr_advanced or verify_on_val,
                                      val_labels=args.val_labels, rescan=args.rescan)
    if verifying and train_ds.layout["data_layout"] == "wds_shards":
        raise UserInputError("--lr_verify picks held-out images by index, which shards do not offer; run it on a "
                             "class-folder tree (prepare_imagenet.py without --format wds) or drop --lr_verify")
    sampler = EpochSampler(len(train_ds), args.seed, True, dist.rank, dist.world_size, advance_each_pass=True)
    train_loader = build_loader(train_ds, args.batch_size, True, args.num_workers, device, args.seed, sampler)
    val_loader = None
    if args.lr_advanced:
        val_sampler = EpochSampler(len(val_ds), args.seed, False, dist.rank, dist.world_size)
        val_loader = build_loader(val_ds, args.batch_size, False, 0, device, args.seed, val_sampler)
    num_iter = len(train_loader) * args.epochs if args.lr_iter == "epoch" else args.lr_iter
    planned_steps = len(train_loader) * args.epochs  # the training --epochs plans, in optimizer steps
    verify_budget = planned_steps * args.lr_verify_share / 100  # steps --lr_verify_share buys (0: off)
    if args.lr_verify_share:
        check_verify_share(args, most_candidates(args.optimizer), len(train_loader), verify_budget)
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
    verification = None
    with StopOnSignal(abort_on_second=not dist.enabled) as stop:
        finder = RangeTest(model, optimizer, criterion, device,
                           **amp_options(device, AMP_DTYPES[precision]),
                           input_transform=partial(to_model_input, device=device, channels_last=channels_last),
                           batch_transform=criterion.mix, stop_requested=stop, dist=dist,
                           max_bad_fraction=MAX_BAD_FRACTION)
        sweep = finder.sweep(train_loader, args.lr_start, args.lr_end, num_iter, args.lr_step_mode,
                             args.lr_smooth_f, args.lr_diverge_th, val_loader, args.lr_val_batches)
        facts = sweep_facts(args, dist, sweep, num_iter, time.perf_counter() - started)
        # Advanced mode reads the validation loss measured after every step.
        curve, error = read_sweep(sweep.val_losses if args.lr_advanced else sweep.raw_losses, sweep.lrs, args)
        if verifying and curve is not None and sweep.stop_reason != "interrupted":
            speed = facts.steps_run / facts.elapsed_s if facts.elapsed_s else None
            verification = verify_suggestion(args, dist, curve, model, optimizer, criterion, train_ds, val_ds,
                                             precision, channels_last, stop, planned_steps, verify_budget, speed)
    if dist.is_main:
        result = build_result(args, dist, paths, train_ds, len(train_loader), sweep, facts, curve, error,
                              verification, precision)
        write_results(args, paths, sweep, result)
        for line in console_lines(result, os.path.dirname(paths["json_file"]) or "."):
            print(line, file=sys.stdout if result.success else sys.stderr)
        sys.stdout.flush()
    suggested = dist.broadcast(result.suggested_lr if dist.is_main else None)
    if "interrupted" in (sweep.stop_reason, verification.stop_reason if verification else None):
        return SIGNAL_EXIT_CODES.get(stop.signum, 130), None
    return (0, suggested) if suggested is not None else (2, None)


def read_sweep(losses, lrs, args):
    """(the curve's reading, None), or (None, why there is none)."""
    try:
        return read_curve(lrs, losses, args.optimizer, args.lr_suggest), None
    except SuggestionError as exc:
        return None, f"no suggestion: {exc}"


def check_verify_share(args, candidates: int, steps_per_epoch: int, budget: float) -> None:
    """Before the sweep: --lr_verify_share's ``budget`` must buy at least 2 steps a trial for the most
    rates the range can hold (a one-line error otherwise, with what to change)."""
    planned = steps_per_epoch * args.epochs
    if not first_round_for_budget(candidates, budget):
        need = 2 * steps_per_first_round_step(candidates)
        raise UserInputError(
            f"--lr_verify_share {args.lr_verify_share:g}: {args.lr_verify_share:g} % of the training --epochs plans "
            f"({args.epochs} epochs x {steps_per_epoch} steps = {planned} steps) is {budget:.0f} steps, fewer than "
            f"the {need} that {candidates} rates need; give a larger share, the --epochs you will train, or --lr_verify N")


def verify_suggestion(args, dist: Distributed, curve, model, optimizer, criterion, train_ds, val_ds,
                      precision: str, channels_last: bool, stop, planned_steps: int, budget: float,
                      steps_per_s: float | None) -> Verification:
    """``--lr_verify``: short complete trainings around the curve's answer; their best becomes the
    answer when the trials confirm it or clearly beat it (``lr_verify.judge``)."""
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

    center, low, high = curve.lr, curve.low, curve.high
    candidates = len(candidate_rates(center, low, high))
    steps = args.lr_verify or first_round_for_budget(candidates, budget)
    if dist.is_main:
        plan = halving_rounds(candidates, steps)
        total = sum(n * k for n, k in plan)
        cost = f"; about {total / steps_per_s / 60:.1f} min at the sweep's speed" if steps_per_s else ""
        print(f"Verifying: {' then '.join(f'{n} rates x {k} steps' for n, k in plan)} across {low:.2e} to "
              f"{high:.2e}, scored on {len(heldout_ds)} held-out images from {source}: {total} steps, "
              f"{share_of_training(total, planned_steps)}{cost}", flush=True)
    started = time.perf_counter()
    rounds, reason = verify_rates(model, optimizer, criterion, batches, heldout, center, steps,
                                  device, low, high, AMP_DTYPES[precision], channels_last, dist, stop)
    chosen, verdict = outcome(rounds, center, len(heldout_ds))
    trials = tuple(Trial(number, t.lr, t.loss, round(t.top1, 2), t.steps)
                   for number, trials in enumerate(rounds, 1) for t in trials)
    return Verification(steps, sum(t.steps for t in trials), source, len(heldout_ds), reason, verdict,
                        round(time.perf_counter() - started, 2), trials, chosen.lr if chosen is not None else None,
                        planned_steps, args.lr_verify_share or None)


def sweep_facts(args, dist: Distributed, sweep, num_iter: int, elapsed: float) -> SweepFacts:
    global_batch = args.batch_size * dist.world_size
    return SweepFacts(
        lr_start=args.lr_start, lr_end=args.lr_end, lr_iter=num_iter, lr_step_mode=args.lr_step_mode,
        steps_run=sweep.steps_run, stop_reason=sweep.stop_reason, stop_step=sweep.stop_step,
        stop_lr=sweep.stop_lr, curve="validation" if args.lr_advanced else "training",
        world_size=dist.world_size, bad_images=sweep.bad_images, skipped_steps=tuple(sweep.skipped_steps),
        elapsed_s=round(elapsed, 2),
        images_per_second=round(sweep.steps_run * global_batch / elapsed, 1) if elapsed > 0 else None)


def build_result(args, dist: Distributed, paths: dict, train_ds, batches_per_epoch: int, sweep, facts: SweepFacts,
                 curve, error: str | None, verification: Verification | None, precision: str) -> FinderResult:
    """The one result of the run, built once from what it measured."""
    answer = None
    if curve is not None:
        chosen = verification.chosen_lr if verification is not None else None
        lr, method = (chosen, "verified") if chosen is not None else (curve.lr, curve.method)
        global_batch = args.batch_size * dist.world_size
        answer = Answer(lr, method, curve.low, curve.high, args.optimizer, global_batch, rate_settings(args),
                        args.recipe, recipe_lr(args.recipe, global_batch),
                        answer_warnings(lr, curve, verification))
    training_readings = None
    if args.lr_advanced and curve is not None:
        try:
            training_readings = suggest_all(sweep.lrs, sweep.raw_losses)
        except SuggestionError:
            pass
    return FinderResult(
        success=answer is not None, dataset=args.dataset, batch_size=args.batch_size,
        timestamp=datetime.now().isoformat(timespec="seconds"),
        plot_file=paths["plot_file"] if sweep.steps_run else None, log_file=paths["log_file"],
        history_file=paths["history_file"], error=error, answer=answer, curve=curve,
        training_curve_readings=training_readings, sweep=facts, verification=verification,
        data={"data_dir": args.data_dir, "images": len(train_ds), "classes": len(train_ds.classes),
              "batches_per_epoch": batches_per_epoch, **train_ds.layout},
        machine={"device": str(dist.device), "precision": precision, "channels_last": not args.no_channels_last},
        configuration=dict(sorted(vars(args).items())))  # effective: after --demo, the recipe and derived values


def write_results(args, paths: dict, sweep, result: FinderResult) -> None:
    """History, plot, JSON and log; each written atomically."""
    atomic_write_text(paths["history_file"], history_csv(
        sweep.lrs, sweep.raw_losses, smooth(sweep.raw_losses, args.lr_smooth_f), sweep.val_losses))
    if sweep.steps_run:
        plot_sweep(paths["plot_file"], result, sweep, args.lr_smooth_f, plot_title(result, args), args.lr_advanced)
    atomic_write_json(paths["json_file"], result.to_json())
    note = "(not captured when main.py is run directly; run_lr_finder.py records the full output here)"
    atomic_write_text(paths["log_file"], render_log(result, shlex.join([sys.executable] + sys.argv), note))


def plot_title(result: FinderResult, args) -> str:
    """One line: data, model, optimizer, global batch and steps."""
    s = result.sweep
    return (f"LR range test: {data_name(args.dataset, args.data_dir)}, {args.arch}, {optimizer_name(args.optimizer)}, "
            f"batch {result.batch_size * s.world_size}, {s.steps_run} of {s.lr_iter} steps")
