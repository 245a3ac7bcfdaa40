"""The range test's plot: loss against learning rate, the answer and its range, and the
``--lr_verify`` trials beside it. Matplotlib (Agg) is imported only when a plot is drawn.

    plot_sweep("lr_finder.png", sweep, suggestions, chosen="rise", title="...", smooth_f=0.05)
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


def plot_sweep(path: str, sweep, suggestions: dict[str, float], chosen: str | None, title: str,
               smooth_f: float, verification: list[dict] | None = None, shade: tuple | None = None) -> None:
    """Loss against learning rate (log x), the chosen suggestion as a red dashed line, the
    suggested range (``shade``) shaded; with ``verification`` (``--lr_verify``), a second panel with
    the trials' held-out loss and top-1, one line per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomic_io import atomic_savefig

    if verification:
        fig, (ax, ax_verify) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(9, 5.5))
    validation = bool(sweep.val_losses)
    ax.plot(sweep.lrs, sweep.raw_losses, color="0.8", lw=0.7, label="training loss (raw)")
    train_smooth = smooth(sweep.raw_losses, smooth_f)
    ax.plot(sweep.lrs, train_smooth, color="tab:blue", lw=1.8, label="training loss (smoothed)")
    if validation:
        ax.plot(sweep.lrs, sweep.losses, color="tab:green", lw=1.8, label="validation loss (smoothed)")
    ax.set_ylim(*loss_ylim(train_smooth + (sweep.losses if validation else []), sweep.raw_losses))
    markers = {"valley": ("tab:orange", ":"), "minimum": ("tab:purple", "-."), "steepest": ("tab:brown", ":")}
    for name, lr in suggestions.items():
        if name == chosen:
            ax.axvline(lr, color="red", ls="--", lw=1.6, label=f"suggested ({name}): {lr:.2e}")
        else:
            color, style = markers.get(name, ("0.4", ":"))
            ax.axvline(lr, color=color, ls=style, lw=1.0, label=f"{name}: {lr:.2e}")
    if shade:
        ax.axvspan(*shade, color="tab:green", alpha=0.1, label=f"suggested range: {shade[0]:.2e} to {shade[1]:.2e}")
    if sweep.stop_reason in ("diverged", "non_finite_loss") and sweep.stop_lr:
        ax.axvspan(sweep.stop_lr, max(sweep.lrs[-1], sweep.stop_lr) * 1.5, color="red", alpha=0.08,
                   label=f"{sweep.stop_reason.replace('_', ' ')} from {sweep.stop_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", fontsize=8)
    if verification:
        plot_verification(ax_verify, verification, suggestions.get("verified"))
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_verification(ax, verification: list[dict], best: float | None) -> None:
    """Held-out loss (left axis) and top-1 (right axis) of each ``--lr_verify`` trial."""
    import matplotlib.ticker
    top1 = ax.twinx()
    rounds = sorted({t.get("round", 1) for t in verification})
    for number in rounds:
        trials = [t for t in verification if t.get("round", 1) == number]
        lrs = [t["lr"] for t in trials]
        losses = [t["loss"] if t["loss"] is not None and math.isfinite(t["loss"]) else float("nan") for t in trials]
        shade = 0.35 + 0.65 * number / len(rounds)  # later rounds (longer trials) darker
        ax.plot(lrs, losses, "o-", color="tab:blue", alpha=shade,
                label=f"held-out loss, round {number} ({trials[0]['steps']} steps)")
        top1.plot(lrs, [t["top1"] for t in trials], "s--", color="tab:green", alpha=shade,
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
