"""The range test's plot, drawn from its ``FinderResult`` and the sweep's curve: loss against
learning rate, the answer and its range, where the loss turns up, and the ``--lr_verify`` trials
beside it. Matplotlib (Agg) is imported only when a plot is drawn.

    plot_sweep("lr_finder.png", result, sweep, smooth_f=0.05, title="LR range test: ...")
"""

import math

from suggest import smooth


def loss_ylim(curve, also_visible=()) -> tuple[float, float]:
    """Y-limits that keep the informative part: a diverging tail is cut at 1.5 times the
    initial loss (or further when the fall is deep), so it cannot flatten the rest. The
    lowest point of ``curve`` and of ``also_visible`` (the raw loss beside its smoothed curve)
    stays in view."""
    finite = [x for x in curve if math.isfinite(x)]
    if not finite:
        return 0.0, 1.0
    low, high, first = min(finite), max(finite), finite[0]
    top = min(high, max(first + 3 * (first - low), 1.5 * first)) if first > low else high
    low = min([low] + [x for x in also_visible if math.isfinite(x)])
    margin = 0.05 * (top - low) or 0.05
    return low - margin, top + margin


def plot_sweep(path: str, result, sweep, smooth_f: float, title: str, advanced: bool = False) -> None:
    """Loss against learning rate (log x): the raw and smoothed loss, the answer as a red dashed
    line, its range shaded, and where the loss turns up. ``advanced`` (``--lr_advanced``) adds the
    other readings. With ``--lr_verify``, a second panel shows the trials' held-out loss and top-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomic_io import atomic_savefig

    verification = result.verification
    if verification and verification.trials:
        fig, (ax, ax_verify) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax, ax_verify = *plt.subplots(figsize=(9, 5.5)), None
    validation = bool(sweep.val_losses)
    ax.plot(sweep.lrs, sweep.raw_losses, color="0.8", lw=0.7, label="training loss")
    train_smooth = smooth(sweep.raw_losses, smooth_f)
    ax.plot(sweep.lrs, train_smooth, color="tab:blue", lw=1.8, label="training loss, smoothed")
    if validation:
        ax.plot(sweep.lrs, sweep.losses, color="tab:green", lw=1.8, label="validation loss, smoothed")
    ax.set_ylim(*loss_ylim(train_smooth + (sweep.losses if validation else []), sweep.raw_losses))
    curve, answer = result.curve, result.answer
    if answer is not None:
        ax.axvspan(answer.low, answer.high, color="tab:green", alpha=0.1,
                   label=f"expected best: {answer.low:.2e} to {answer.high:.2e}")
        ax.axvline(answer.lr, color="red", ls="--", lw=1.6, label=f"learning rate: {answer.lr:.2e}")
    if curve is not None and curve.edge_lr is not None:
        ax.axvline(curve.edge_lr, color="0.25", ls=":", lw=1.2, label=f"loss turns up: {curve.edge_lr:.2e}")
    if advanced and curve is not None:
        markers = {"bottom": ("tab:cyan", ":"), "rise": ("tab:orange", ":"), "valley": ("tab:olive", ":"), "minimum": ("tab:purple", "-."),
                   "steepest": ("tab:brown", ":")}
        for name, lr in curve.readings.items():
            if answer is None or not math.isclose(lr, answer.lr):
                color, style = markers.get(name, ("0.4", ":"))
                ax.axvline(lr, color=color, ls=style, lw=1.0, label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", fontsize=8)
    if ax_verify is not None:
        plot_verification(ax_verify, verification.trials, verification.chosen_lr)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_verification(ax, verification, best: float | None) -> None:
    """Held-out loss (left axis) and top-1 (right axis) of each ``--lr_verify`` trial."""
    import matplotlib.ticker
    top1 = ax.twinx()
    rounds = sorted({t.round for t in verification})
    for number in rounds:
        trials = [t for t in verification if t.round == number]
        lrs = [t.lr for t in trials]
        losses = [t.loss if t.loss is not None and math.isfinite(t.loss) else float("nan") for t in trials]
        shade = 0.35 + 0.65 * number / len(rounds)  # later rounds (longer trials) darker
        ax.plot(lrs, losses, "o-", color="tab:blue", alpha=shade,
                label=f"held-out loss, round {number} ({trials[0].steps} steps)")
        top1.plot(lrs, [t.top1 for t in trials], "s--", color="tab:green", alpha=shade,
                  label=f"held-out top-1 (%), round {number}")
    ax.set_xscale("log")
    ax.set_yscale("log")  # a diverged trial's loss would flatten the others
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("learning rate of the trial (log scale)")
    ax.set_ylabel("held-out loss after the trial")
    top1.set_ylabel("held-out top-1 (%)")
    if best is not None:
        ax.axvline(best, color="red", ls="--", lw=1.6, label=f"verified: {best:.2e}")
    ax.set_title(f"--lr_verify: {len(verification)} trials in {len(rounds)} round(s)")
    ax.grid(True, which="both", alpha=0.25)
    lines = ax.get_legend_handles_labels()
    extra = top1.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper left", fontsize=8)
