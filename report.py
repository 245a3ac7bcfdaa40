"""The finder's result as text: the history CSV, the advice on an answer (``analyse``) and
``lr_finder_log.txt``.

No torch here, so ``run_lr_finder.py`` can use it without importing the model stack.
"""

import csv
import io

from suggest import LOW_DROP, VERY_HIGH_LR, VERY_LOW_LR, Evidence

RULE = "=" * 80


def history_csv(lrs, raw_losses, smoothed, val_losses=None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["step", "lr", "loss", "smoothed_loss"] + (["val_loss"] if val_losses else [])
    writer.writerow(header)
    for i, (lr, raw, sm) in enumerate(zip(lrs, raw_losses, smoothed)):
        row = [i, repr(lr), repr(raw), repr(sm)] + ([repr(val_losses[i])] if val_losses else [])
        writer.writerow(row)
    return buf.getvalue()


def json_safe(value):
    """NaN/inf become None so the JSON stays strict."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _section(title: str, body: str) -> str:
    return f"{RULE}\n{title}\n{RULE}\n{body.rstrip()}\n"


def render_log(config: dict, command: str, output: str, result: dict) -> str:
    """The full log: configuration, command, captured output, results, analysis, next steps."""
    width = max((len(k) for k in config), default=0)
    parts = [
        _section("LR FINDER LOG", f"Written: {result.get('timestamp', '')}"),
        _section("CONFIGURATION", "\n".join(f"{k:<{width}} : {v}" for k, v in config.items())),
        _section("COMMAND", command),
        _section("OUTPUT (stdout and stderr)", output or "(no output captured)"),
        _section("RESULTS", _results_text(result)),
        _section("ANALYSIS", _analysis_text(result)),
    ]
    return "\n".join(parts)


def _fmt(value) -> str:
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def _results_text(result: dict) -> str:
    lines = [f"Success            : {result.get('success')}"]
    if result.get("error"):
        lines.append(f"Error              : {result['error']}")
    if result.get("suggested_lr") is not None:
        lines.append(f"Suggested LR       : {result['suggested_lr']:.2e} ({result.get('suggestion_method')})")
    if result.get("suggested_range"):
        low, high = result["suggested_range"]
        lines.append(f"Suggested range    : {low:.2e} to {high:.2e} (where the best rate is expected to lie)")
    for name, lr in (result.get("suggestions") or {}).items():
        lines.append(f"  {name:<17}: {_fmt(lr)}")
    if result.get("verification"):
        held = result.get("verify_heldout") or {}
        lines.append(f"Verification       : {result.get('verify_steps')} steps per trial in the first round, doubled "
                     f"each round for the better half, scored on {held.get('images')} held-out images from "
                     f"{held.get('source')} ({result.get('verify_stop_reason')}; {result.get('verify_outcome')})")
        for trial in result["verification"]:
            loss = trial["loss"]
            shown = f"{loss:.4f}" if isinstance(loss, float) else "diverged"
            lines.append(f"  round {trial.get('round', 1)}, lr {trial['lr']:.2e}, {trial['steps']} steps: "
                         f"held-out loss {shown}, top-1 {trial['top1']:.1f} %")
    keys = ["confidence", "loss_drop", "edge_lr", "min_loss_lr", "spread_decades", "onecycle_max_lr", "stop_reason", "stop_step", "stop_lr", "steps_run",
            "lr_iter", "lr_finder_epochs", "bad_images", "skipped_steps", "device", "precision",
            "global_batch_size", "recipe", "recipe_lr", "elapsed_s", "images_per_second", "plot_file", "history_file",
            "log_file"]
    lines += [f"{k:<19}: {_fmt(result[k])}" for k in keys if result.get(k) is not None]
    return "\n".join(lines)


def _analysis_text(result: dict) -> str:
    analysis = result.get("analysis") or {}
    if not result.get("success") or result.get("suggested_lr") is None:
        return ("❌ No learning rate could be suggested.\n\n"
                "Recommended next steps:\n1. Read the error above and the output section\n"
                "2. Fix the input and run the finder again")
    lr = result["suggested_lr"]
    lines = [("✅ " if not analysis.get("warnings") else "⚠️ ") + analysis.get("verdict", "")]
    lines += [f"⚠️  {w}" for w in analysis.get("warnings", [])]
    if result.get("suggested_range"):
        low, high = result["suggested_range"]
        lines += ["", f"The suggested range, {low:.2e} to {high:.2e}, is where the best rate of a full training "
                      "is expected to lie around this answer: how far the best rate lay from the answer on the "
                      "cases the rule was fitted to. --lr_verify N tries the rates across it with short trainings."]
    if result.get("study_record"):
        lines += ["", study_text(result["study_record"], verified=result.get("verification") is not None)]
    lines += ["", "Recommended next steps:"]
    lines += [f"{i}. {step}" for i, step in enumerate(next_steps(result, lr), 1)]
    return "\n".join(lines)


def study_line(fig: dict) -> str:
    """One line: how often the default landed on the study's held-out cases with this optimizer and
    the curve's confidence level (``study_record`` in the JSON)."""
    same, level, optimizer = fig["same_confidence_and_optimizer"], fig["curve_confidence"], fig["optimizer"]
    if not same["cases"]:
        return f"study: no held-out case had {optimizer} at curve confidence {level}, so it is not measured"
    few = " (too few to tell)" if same["cases"] < 3 else ""
    return (f"study: with {optimizer} at curve confidence {level}, the default landed among the best rates "
            f"on {same['in_plateau']} of {same['cases']} held-out cases{few}")


def study_text(fig: dict, verified: bool) -> str:
    """The study's record behind a default answer, in words, with its numbers."""
    def landed(c: dict) -> str:
        return f"{c['in_plateau']} of {c['cases']}" if c["cases"] else "no case"

    n, (low, high) = fig["test_cases"], fig["input_sizes"]
    level, optimizer, same = fig["curve_confidence"], fig["optimizer"], fig["same_confidence_and_optimizer"]
    text = (f"Suggestion study ({fig['study']}, record of {fig['written']}): on {n} small test cases the rule "
            f"was not fitted to ({low} to {high} px images, trained on a CPU; not ImageNet), the default answer "
            "from the curve alone was compared with trainings at a grid of rates. It landed when it fell in the "
            "plateau of best rates (top-1 within the seed noise of the best, widened half-way to the next grid "
            f"rate). With {optimizer} at confidence {level}: landed on {landed(same)}"
            + (f", lost no more top-1 than the noise on {same['within_noise']} of {same['cases']}" if same["cases"] else "")
            + f". At confidence {level}, any optimizer: {landed(fig['same_confidence'])}. With {optimizer}, any "
            f"confidence: {landed(fig['same_optimizer'])}. The suggested range covered the best rate on "
            f"{fig['range_covers_best']} of {n}. --lr_verify landed on {fig['verify_10_in_plateau']} of {n} with "
            f"10-step first rounds and on {fig['verify_2_5_sweeps_in_plateau']} of {n} at about 2.5 sweeps of "
            "extra cost.")
    if verified:
        text += f" This answer went through --lr_verify: the counts are for the curve's own confidence ({level})."
    return text


def next_steps(result: dict, lr: float) -> list[str]:
    data = result.get("data_dir", "./data")
    # the rate belongs to the optimizer that was swept: name it unless it is the default
    optimizer = f" --optimizer {result['optimizer']}" if result.get("optimizer", "sgd") != "sgd" else ""
    # a recipe brings its own schedule and length; one-cycle has its own warm-up
    schedule, onecycle = " --scheduler cosine --epochs 50", " --scheduler onecycle"
    if result.get("recipe"):
        optimizer += f" --recipe {result['recipe']}"
        schedule, onecycle = "", " --scheduler onecycle --warmup_epochs 0"
    steps = [
        f"Use learning rate: {lr:.2e}",
        f"Train: uv run python main.py --lr {lr:.3g}{optimizer}{schedule} "
        f"--batch_size {result.get('batch_size')} --data_dir {data}",
    ]
    if result.get("onecycle_max_lr"):
        steps.append(f"Or one-cycle: uv run python main.py --lr {result['onecycle_max_lr']:.3g}{optimizer}{onecycle} "
                     f"--batch_size {result.get('batch_size')} --data_dir {data}")
    if result.get("rate_settings"):
        steps.append("Train with the loss and optimizer flags of the sweep (its JSON's rate_settings): "
                     "--lr_from with its JSON warns about each one that differs")
    gb = result.get("global_batch_size") or result.get("batch_size")
    steps += [
        f"This LR is for a global batch of {gb}; --lr_from scales it to the batch you train with "
        f"(linearly for SGD: lr * B / {gb}; by the square root for AdamW)",
        "Monitor training loss and accuracy; lower the LR if the loss spikes early",
        "Use learning rate scheduling (cosine or one-cycle)",
    ]
    return steps


def analyse(lr: float, level: str, e: Evidence) -> tuple[str, list[str]]:
    """A verdict line and warnings for a suggested learning rate."""
    warnings = []
    if lr < VERY_LOW_LR:
        warnings.append(
            f"Suggested LR {lr:.2e} is very low (< {VERY_LOW_LR:g}): the loss may not have started "
            "falling before the sweep ended; check the plot, try a lower --lr_start or more steps")
    if lr > VERY_HIGH_LR:
        warnings.append(
            f"Suggested LR {lr:.2e} is very high (> {VERY_HIGH_LR:g}): training may diverge; "
            "start lower (e.g. a tenth of it) and watch the first epoch")
    if not e.edge_found:
        warnings.append(
            "The loss never started to rise: the sweep ended before the rates where training becomes "
            "unstable, so the suggestion is only a tenth of the lowest point's rate; raise --lr_end")
    if e.loss_drop < LOW_DROP:
        warnings.append(
            f"The loss fell only {e.loss_drop:.0%} before rising: the sweep barely learned, so the curve "
            "shows little more than where training becomes unstable. For a firmer answer: more steps "
            "(--lr_iter), a larger batch, a lower --lr_start, or --lr_verify N to check the candidates "
            "with short trainings")
    if not e.spread <= 1.0:
        warnings.append(
            f"The suggestion methods disagree by {e.spread:.1f} decades: the curve has no single clear "
            "reading (noisy loss or too few steps)")
    if e.verified is False:
        warnings.append(
            "--lr_verify's best rate was at the edge of the rates it tried: the best may lie beyond; "
            "check the verification panel of the plot")
    if e.verified == "inconclusive":
        warnings.append(
            "--lr_verify's trials did not beat the curve's rate by more than the held-out noise, so the "
            "suggestion stays the curve's: longer trials (a larger N) or more held-out images would tell")
    if level == "low" and not warnings:
        warnings.append("Confidence is low; check the plot")
    verdict = ("Learning rate appears to be in a reasonable range" if not warnings
               else f"Confidence {level}: check the warnings below")
    return verdict, warnings
