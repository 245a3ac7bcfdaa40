"""What a training leaves besides checkpoints: ``metrics.csv`` (one row per epoch) and the plot of
its curves.

    atomic_write_text(out / "metrics.csv", metrics_csv(history))
    plot_training(out / "training_curves.png", history, lr_trace)
"""

import csv
import io
from pathlib import Path

from atomic_io import atomic_savefig

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "val_images",
                 "epoch_time_s", "images_per_second"]


EMA_FIELDS = ["ema_val_loss", "ema_val_top1", "ema_val_top5"]  # with --model_ema


def metrics_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    fields = METRIC_FIELDS + [f for f in EMA_FIELDS if history and f in history[0]]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def plot_training(path: Path, history: list[dict], lr_trace: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    for key, label in (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5"),
                       ("ema_val_top1", "EMA val top-1")):
        if key in history[0]:
            ax_acc.plot(epochs, [h[key] for h in history], "o-", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_lr.plot(range(len(lr_trace)), lr_trace)
    ax_lr.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    for ax in (ax_loss, ax_acc):
        ax.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
