"""The finder's result as text, read from its ``FinderResult``: the console lines, ``lr_finder_log.txt``
and the history CSV. Numbers as a person reads them: rates in scientific notation, fractions in
percent, times in seconds.

No torch here, so ``run_lr_finder.py`` can use it without importing the model stack.
"""

import csv
import io
import os

from finder_result import FinderResult

RULE = "=" * 80
OPTIMIZER_NAMES = {"sgd": "SGD", "adamw": "AdamW"}
READING_MEANS = {
    "bottom": "the rate at the loss's lowest point, before it turns up",
    "bottom/3": "a third of the rate at the loss's lowest point, before it turns up",
    "rise": "half the rate at which the loss turns up",
    "minimum": "a tenth of the rate at the loss's lowest point",
    "steepest": "where the loss fell fastest",
    "valley": "fastai's valley: two thirds down the longest fall",
    "verified": "the best of --lr_verify's short trainings",
}


def history_csv(lrs, raw_losses, smoothed, val_losses=None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["step", "lr", "loss", "smoothed_loss"] + (["val_loss"] if val_losses else [])
    writer.writerow(header)
    for i, (lr, raw, sm) in enumerate(zip(lrs, raw_losses, smoothed)):
        row = [i, repr(lr), repr(raw), repr(sm)] + ([repr(val_losses[i])] if val_losses else [])
        writer.writerow(row)
    return buf.getvalue()


def optimizer_name(optimizer: str) -> str:
    return OPTIMIZER_NAMES.get(optimizer, optimizer)


def seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.0f} min"


# ------------------------------------------------------------------------ console


def answer_line(result: FinderResult) -> str:
    """The rate, what it is for, and where the best rate of a full training is expected."""
    a = result.answer
    checked = f"; checked by --lr_verify ({result.verification.outcome})" if result.verification else ""
    return (f"Learning rate: {a.lr:.2e} ({optimizer_name(a.optimizer)}, global batch {a.global_batch_size}{checked}); "
            f"best expected between {a.low:.2e} and {a.high:.2e}")


def evidence_line(result: FinderResult) -> str:
    """How far the loss fell, where it turned up, and how the sweep ended, in plain numbers."""
    c = result.curve
    text = (f"Evidence: the loss fell {c.loss_drop:.0%} (from {c.start_loss:.3g} to {c.min_loss:.3g} at "
            f"{c.min_loss_lr:.2e})")
    text += f" and turns up from {c.edge_lr:.2e}" if c.edge_lr is not None else " and never turned up"
    return f"{text}; {sweep_end(result)}"


def sweep_end(result: FinderResult) -> str:
    s = result.sweep
    if s.stop_reason == "interrupted":
        return f"the sweep was interrupted after {s.steps_run} of {s.lr_iter} steps: the answer reads that part"
    if s.stopped_by_the_loss:
        what = "blew up" if s.stop_reason == "diverged" else "stopped being a number"
        return (f"the sweep ended where the loss {what}, at {s.stop_lr:.2e} after {s.steps_run} of {s.lr_iter} "
                "steps, as a range test does")
    return f"the sweep ran all {s.steps_run} steps up to {s.lr_end:.2e}"


def outputs_line(result: FinderResult, folder: str) -> str:
    names = [os.path.basename(p) for p in (result.plot_file, result.log_file) if p]
    names += ["suggested_lr.json"] + ([os.path.basename(result.history_file)] if result.history_file else [])
    return f"Outputs in {folder}: {', '.join(names)}"


def console_lines(result: FinderResult, folder: str) -> list[str]:
    """What the run prints at its end: the answer, its evidence, any warning, where the files are."""
    if not result.success:
        return [f"error: {result.error}", outputs_line(result, folder)]
    lines = [answer_line(result), evidence_line(result)]
    lines += [f"Warning: {w}" for w in result.answer.warnings]
    return lines + [outputs_line(result, folder)]


# ------------------------------------------------------------------------ the log


def _section(title: str, body: str) -> str:
    return f"{RULE}\n{title}\n{RULE}\n{body.rstrip()}\n"


def render_log(result: FinderResult, command: str, output: str) -> str:
    """The log: the answer first, then the results, the analysis with next steps, the
    configuration, the command and the captured output."""
    config = result.configuration
    width = max((len(k) for k in config), default=0)
    summary = console_lines(result, os.path.dirname(result.log_file) or ".")[:-1]
    parts = [
        _section("LR FINDER LOG", "\n".join([f"Written: {result.timestamp}", "", *summary])),
        _section("RESULTS", results_text(result)),
        _section("ANALYSIS", analysis_text(result)),
        _section("CONFIGURATION", "\n".join(f"{k:<{width}} : {v}" for k, v in config.items())
                 or "(not recorded)"),
        _section("COMMAND", command),
        _section("OUTPUT (stdout and stderr)", output or "(no output captured)"),
    ]
    return "\n".join(parts)


def _rows(pairs) -> list[str]:
    return [f"{name:<19}: {value}" for name, value in pairs if value is not None]


def results_text(result: FinderResult) -> str:
    pairs = [("Success", "yes" if result.success else "no"), ("Error", result.error)]
    a, c, s = result.answer, result.curve, result.sweep
    if a is not None:
        pairs += [
            ("Learning rate", f"{a.lr:.2e} ({a.method}: {READING_MEANS.get(a.method, a.method)})"),
            ("For", f"{optimizer_name(a.optimizer)} at global batch {a.global_batch_size} "
                    f"({result.batch_size} per process x {s.world_size})"),
            ("Expected best", f"{a.low:.2e} to {a.high:.2e} (how far the best rate lay from the answer on the "
                              "study's fit cases)"),
            ("Rule", f"{a.rule} (how it fared against trainings at a grid of rates: {a.rule_doc})"),
            ("Recipe's own rate", f"{a.recipe_lr:.2e} ({a.recipe}, at this global batch)" if a.recipe_lr else None),
        ]
    if c is not None:
        pairs += [
            ("Loss fell", f"{c.loss_drop:.0%}, from {c.start_loss:.4g} to {c.min_loss:.4g}"),
            ("Lowest loss at", f"{c.min_loss_lr:.2e}"),
            ("Loss turns up at", f"{c.edge_lr:.2e}" if c.edge_lr is not None else "never, in this sweep"),
            ("Loss blows up at", f"{c.blow_lr:.2e} (half as high again as at the start)" if c.blow_lr else None),
            ("One-cycle peak", f"{c.onecycle_max_lr:.2e} (for --scheduler onecycle only: the peak, not the rate)"),
            ("Readings", ", ".join(f"{k} {v:.2e}" for k, v in c.readings.items())),
        ]
    if s is not None:
        pairs += [
            ("Sweep", f"{s.steps_run} of {s.lr_iter} steps, {s.lr_start:.2e} to {s.lr_end:.2e} ({s.lr_step_mode}), "
                      f"{result.lr_finder_epochs:.3g} epochs of the data"),
            ("How it ended", sweep_end(result)),
            ("Curve read", f"{s.curve} loss"),
            ("Unreadable images", f"{s.bad_images} skipped" if s.bad_images else None),
            ("Skipped steps", ", ".join(map(str, s.skipped_steps)) if s.skipped_steps else None),
            ("Time", f"{seconds(s.elapsed_s)}" + (f", {s.images_per_second:g} images/s" if s.images_per_second
                                                  else "")),
        ]
    m, d = result.machine, result.data
    if m:
        pairs.append(("Machine", f"{m.get('device')}, {m.get('precision')}"
                                 + (", channels_last" if m.get("channels_last") else "")))
    if d.get("images"):
        pairs.append(("Data", f"{d.get('data_dir')} ({d.get('data_layout')}): {d['images']} images in "
                              f"{d.get('classes')} classes"))
    lines = _rows(pairs)
    if result.verification:
        lines += ["", *verification_text(result)]
    return "\n".join(lines)


def share_of_training(steps: int, planned_steps: int) -> str:
    """The trials' steps against the training --epochs plans: a percentage, or a multiple once they exceed it."""
    ratio = steps / planned_steps
    amount = f"{ratio:.2%} of" if ratio <= 1 else f"{ratio:.1f}x"
    return f"{amount} the {planned_steps} steps --epochs plans"


def verification_text(result: FinderResult) -> list[str]:
    v = result.verification
    share = f", {share_of_training(v.total_steps, v.planned_steps)}" if v.planned_steps else ""
    asked = f" (--lr_verify_share {v.budget_share:g})" if v.budget_share else ""
    lines = [f"--lr_verify{asked}: {len(v.trials)} short trainings, {v.total_steps} steps in all{share} "
             f"({seconds(v.elapsed_s)}); the first round {v.first_round_steps} steps each, doubled each round for "
             f"the better half; scored on {v.heldout_images} held-out images from {v.heldout_source}; {v.outcome}"]
    for t in v.trials:
        loss = f"{t.loss:.4f}" if t.loss is not None else "diverged"
        lines.append(f"  round {t.round}, lr {t.lr:.2e}, {t.steps} steps: held-out loss {loss}, top-1 {t.top1:.1f}%")
    return lines


def analysis_text(result: FinderResult) -> str:
    if not result.success:
        return ("No learning rate could be suggested: " + (result.error or "see the output below") + "\n\n"
                "Next steps:\n1. Read the error and the output section below\n"
                "2. Fix what it names and run the finder again")
    warnings = result.answer.warnings
    lines = ["Warnings, each with what to do:", *[f"- {w}" for w in warnings]] if warnings else [
        "No warnings: the loss fell, turned up, and the sweep reached the rates where training becomes unstable."]
    lines += ["", "Next steps:", *[f"{i}. {step}" for i, step in enumerate(next_steps(result), 1)]]
    return "\n".join(lines)


def next_steps(result: FinderResult) -> list[str]:
    """At most four, each naming a command."""
    a, c = result.answer, result.curve
    data = result.data.get("data_dir") or "./data"
    flags = f" --optimizer {a.optimizer}" if a.optimizer != "sgd" else ""
    schedule = " --scheduler cosine --epochs 90"
    if a.recipe:  # a recipe brings its own schedule and length
        flags, schedule = flags + f" --recipe {a.recipe}", ""
    batch = f" --batch_size {result.batch_size} --data_dir {data}"
    json_file = os.path.join(os.path.dirname(result.log_file) or ".", "suggested_lr.json")
    steps = [f"Train at this rate: uv run python main.py --lr {a.lr:.3g}{flags}{schedule}{batch}",
             f"At another batch size, take it from the JSON, scaled (linearly for SGD, by the square root for "
             f"AdamW) and checked against the sweep's loss and optimizer flags: uv run python main.py --lr_from "
             f"{json_file}{flags}{schedule} --batch_size B --data_dir {data}"]
    if c is not None and c.onecycle_max_lr:
        steps.append(f"Or a one-cycle schedule, whose peak is a different number (the loss's lowest point): "
                     f"uv run python main.py --lr {c.onecycle_max_lr:.3g}{flags} --scheduler onecycle"
                     f"{' --warmup_epochs 0' if a.recipe else ''}{batch}")
    if a.warnings and result.verification is None:
        steps.append("Firm up the answer with short trainings across the range: run the command above (COMMAND) "
                     "again with --lr_verify 30")
    return steps
