"""Training with the found learning rate: one step, one epoch, evaluation, and the fit loop with
resumable checkpoints. What a step is made of (optimizer, loss, mixing, EMA, schedules) is in
``train_setup.py``, ``--lr_from`` in ``lr_source.py``, the CSV and plot in ``train_outputs.py``.

    uv run python main.py --lr 0.1 --epochs 90 --scheduler cosine --data_dir ./data
    uv run python main.py --lr_from ./outputs/suggested_lr.json --epochs 5 --resume auto
"""

import time
from pathlib import Path

import torch
from tqdm import tqdm

from atomic_io import atomic_write_json, atomic_write_text
from checkpoint import config_differences, load_checkpoint, restore_rng_state, resume_path, rng_state, save_checkpoint
from errors import UserInputError
from images import to_model_input
from lr_source import describe_lr_source, lr_from_json
from model_resnet50 import create_model
from preprocess import EpochSampler, build_datasets, build_loader
from runtime import AMP_DTYPES, Distributed, seed_everything, select_precision, unwrap, wrap_model
from settings import rate_settings
from train_outputs import EMA_FIELDS, metrics_csv, plot_training
from train_setup import build_ema, build_scheduler, loss_from_args, mix_batch, optimizer_from_args

# ------------------------------------------------------------------- loss


# ------------------------------------------------------------------- weight average


# ------------------------------------------------------------------- schedules


# ------------------------------------------------------------------- one epoch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many rows have the target among their k highest logits, for each k."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == target.unsqueeze(1)
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


def new_epoch_totals() -> dict:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "elapsed": 0.0}


def train_step(model, images, labels, criterion, optimizer, scaler, device, amp_dtype, channels_last):
    """One optimizer step on a uint8 batch (autocast, GradScaler, MixUp/CutMix when the criterion
    mixes); returns (loss, logits, labels), the labels unmixed."""
    x, y = to_model_input(images, device, channels_last), labels.to(device, non_blocking=True)
    x, target = mix_batch(criterion, x, y)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(x)
        loss = criterion(logits, target)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits, y


def train_one_epoch(model, loader, criterion, optimizer, scheduler, scaler, device, amp_dtype, channels_last,
                    totals: dict, dist: Distributed, on_step=None, desc="train") -> dict:
    """One pass (or the rest of one, continuing ``totals``); ``on_step(i)`` runs after each
    optimizer step, when ``totals`` is up to date (that is where checkpoints are taken).
    The returned metrics are over all ranks."""
    model.train()
    started, elapsed_before = time.perf_counter(), totals["elapsed"]
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    for i, (images, labels, _) in enumerate(bar):
        loss, logits, y = train_step(model, images, labels, criterion, optimizer, scaler, device, amp_dtype,
                                     channels_last)
        scheduler.step()
        totals["loss_sum"] += loss.item() * len(y)
        totals["correct"] += topk_correct(logits.detach(), y, (1,))[0]
        totals["seen"] += len(y)
        totals["elapsed"] = elapsed_before + time.perf_counter() - started
        bar.set_postfix(loss=f"{totals['loss_sum'] / totals['seen']:.3f}",
                        img_s=f"{totals['seen'] / totals['elapsed']:.1f}")
        if on_step is not None:
            on_step(i)
    loss_sum, correct, seen = dist.all_reduce_sum([totals["loss_sum"], totals["correct"], totals["seen"]])
    elapsed, seen = dist.all_reduce_max(totals["elapsed"]), max(seen, 1)
    return {"train_loss": loss_sum / seen, "train_top1": 100.0 * correct / seen,
            "epoch_time_s": round(elapsed, 2), "images_per_second": round(seen / elapsed, 1) if elapsed else 0.0}


@torch.no_grad()
def evaluate(model, loader, criterion, device, amp_dtype, channels_last, dist: Distributed,
             progress: bool = True) -> dict:
    """Loss, top-1 and top-5 over the whole validation set (each rank evaluates its shard);
    ``loader`` may also be a list of (images, labels, skipped) batches."""
    model = unwrap(model)  # no DDP collectives: shards may differ in size by one image
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    for images, labels, _ in tqdm(loader, desc="val", unit="batch", leave=False, dynamic_ncols=True,
                                  disable=not progress):
        x, y = to_model_input(images, device, channels_last), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss_sum += criterion(logits.float(), y).item() * len(y)
        c1, c5 = topk_correct(logits, y)
        top1, top5, seen = top1 + c1, top5 + c5, seen + len(y)
    model.train(was_training)
    loss_sum, top1, top5, seen = dist.all_reduce_sum([loss_sum, top1, top5, seen])
    return {"val_loss": loss_sum / max(seen, 1), "val_top1": 100.0 * top1 / max(seen, 1),
            "val_top5": 100.0 * top5 / max(seen, 1), "val_images": int(seen)}


# ------------------------------------------------------------------- the fit loop


def describe_recipe_settings(args) -> str:
    """One line: the loss, decay split and averaging the run uses."""
    recipe = f"recipe {args.recipe}: " if args.recipe else ""
    mixing = ", ".join(f"{name} alpha {alpha:g}" for name, alpha in (("MixUp", args.mixup_alpha),
                                                                       ("CutMix", args.cutmix_alpha)) if alpha)
    return (f"{recipe}label smoothing {args.label_smoothing:g}, weight decay {args.weight_decay:g} "
            f"(norm layers {args.norm_weight_decay:g}, biases {args.bias_weight_decay:g})"
            + (", Nesterov" if args.nesterov and args.optimizer == "sgd" else "")
            + (f", gradient norm clipped at {args.clip_grad_norm:g}" if args.clip_grad_norm else "")
            + (f", {mixing}" if mixing else "")
            + (f", weight EMA decay {args.model_ema_decay:g}" if args.model_ema else ""))


def resolved_config(args, num_classes: int, precision: str, world_size: int, lr_source: dict | None = None) -> dict:
    config = {k: v for k, v in sorted(vars(args).items())}
    if lr_source:
        config["lr_from_record"] = lr_source
    config.update(num_classes=num_classes, precision=precision, channels_last=not args.no_channels_last,
                  world_size=world_size, global_batch_size=args.batch_size * world_size)
    return config


def run_training(args, dist: Distributed) -> int:
    """Train and evaluate every epoch; rank 0 alone prints and writes files."""
    lr_source = None
    if args.lr_from:
        args.lr, lr_source = lr_from_json(args.lr_from, args.batch_size * dist.world_size, args.optimizer,
                                          args.no_lr_scaling, rate_settings(args))
        if dist.is_main:
            print(describe_lr_source(lr_source), flush=True)
    out = Path(args.output_dir)
    device = dist.device
    say = print if dist.is_main else (lambda *a, **k: None)
    precision, why = select_precision(args.precision, device)
    amp_dtype, channels_last = AMP_DTYPES[precision], not args.no_channels_last
    seed_everything(args.seed)

    train_ds, val_ds = build_datasets(args.dataset, args.data_dir, args.input_size, args.max_samples, args.seed,
                                      val_labels=args.val_labels, rescan=args.rescan)
    sampler = EpochSampler(len(train_ds), args.seed, True, dist.rank, dist.world_size)
    val_sampler = EpochSampler(len(val_ds), args.seed, False, dist.rank, dist.world_size)
    train_loader = build_loader(train_ds, args.batch_size, True, args.num_workers, device, args.seed, sampler)
    val_loader = build_loader(val_ds, args.batch_size, False, args.num_workers, device, args.seed, val_sampler)
    steps_per_epoch = len(train_loader)
    num_classes = len(train_ds.classes)
    config = resolved_config(args, num_classes, precision, dist.world_size, lr_source)
    config.update(train_ds.layout)

    model = wrap_model(create_model(num_classes, args.input_size, device, channels_last,
                                    pretrained=args.use_pretrained, weights_path=args.pretrained_path,
                                    class_names=train_ds.classes, arch=args.arch),
                       dist, args.sync_bn, args.compile)
    criterion = loss_from_args(args, num_classes)
    optimizer = optimizer_from_args(model, args, args.lr)
    ema = build_ema(model, args.model_ema_decay) if args.model_ema else None
    scheduler = build_scheduler(optimizer, args.scheduler, args.lr, args.epochs, steps_per_epoch,
                                args.warmup_epochs, args.step_size, args.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = {"epoch": 0, "step_in_epoch": 0, "best_top1": -1.0, "history": [], "lr_trace": [],
             "epoch_totals": new_epoch_totals()}

    source = resume_path(args.resume, args.output_dir)
    if source is not None:
        saved = load_checkpoint(source)
        differences = config_differences(saved["config"], config)
        if differences:
            raise UserInputError(f"{source}: was made with other settings ({'; '.join(differences)}); "
                                 "resume with the same flags or use another --output_dir")
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        restore_rng_state(saved["rng"])
        state = {k: saved[k] for k in state}
        if not dist.is_main:  # the checkpoint's partial-epoch sums are global: rank 0 carries them
            state["epoch_totals"] = new_epoch_totals()
        say(f"Resuming from {source}: epoch {state['epoch'] + 1}, step {state['step_in_epoch']} of {steps_per_epoch}")
    elif args.resume == "auto":
        say(f"No checkpoint in {out}: starting a fresh run")

    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", config)
    say(f"Training: {args.dataset}, {len(train_ds)} images in {num_classes} classes, {args.epochs} epochs x "
        f"{steps_per_epoch} steps, batch {args.batch_size} x {dist.world_size} process(es), "
        f"{args.optimizer} lr {args.lr:g}, {args.scheduler} schedule")
    say(describe_recipe_settings(args))
    say(f"Device: {device}, precision {precision} ({why}), channels_last={channels_last}", flush=True)

    def checkpoint(names: list[str], epoch: int, step_in_epoch: int) -> None:
        """Every rank joins the reduction of the partial-epoch sums; rank 0 writes."""
        state.update(epoch=epoch, step_in_epoch=step_in_epoch)
        totals = state["epoch_totals"]
        global_totals = dict(zip(totals, dist.all_reduce_sum(list(totals.values()))))
        global_totals["elapsed"] = totals["elapsed"]
        if dist.is_main:
            for name in names:
                save_checkpoint(out / name, {
                    "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                    "config": config, **state, "epoch_totals": global_totals,
                    **({"ema": ema.state_dict()} if ema is not None else {})})

    for epoch in range(state["epoch"], args.epochs):
        start = state["step_in_epoch"]
        if start == 0:
            state["epoch_totals"] = new_epoch_totals()
        sampler.set_epoch(epoch, start * args.batch_size)

        def on_step(i: int, epoch=epoch, start=start) -> None:
            if ema is not None:
                ema.update_parameters(unwrap(model))
            state["lr_trace"].append(optimizer.param_groups[0]["lr"])
            done = start + i + 1
            if args.checkpoint_every and done % args.checkpoint_every == 0 and done < steps_per_epoch:
                checkpoint(["last.pt"], epoch, done)

        train_metrics = train_one_epoch(model, train_loader, criterion, optimizer, scheduler, scaler, device,
                                        amp_dtype, channels_last, state["epoch_totals"], dist, on_step,
                                        desc=f"epoch {epoch + 1}/{args.epochs}")
        val_metrics = evaluate(model, val_loader, criterion, device, amp_dtype, channels_last, dist)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train_metrics, **val_metrics}
        if ema is not None:
            ema_metrics = evaluate(ema.module, val_loader, criterion, device, amp_dtype, channels_last, dist)
            row.update({f"ema_{k}": v for k, v in ema_metrics.items() if f"ema_{k}" in EMA_FIELDS})
        state["history"].append(row)
        say(f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.2f}% | "
            f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}% "
            f"({row['val_images']} images) | {row['images_per_second']} img/s"
            + (f" | EMA val loss {row['ema_val_loss']:.4f} top-1 {row['ema_val_top1']:.2f}%" if ema else ""),
            flush=True)
        is_best = row["val_top1"] > state["best_top1"]
        if is_best:
            state["best_top1"] = row["val_top1"]
        state["epoch_totals"] = new_epoch_totals()
        checkpoint(["last.pt", "best.pt"] if is_best else ["last.pt"], epoch + 1, 0)
        if dist.is_main:
            atomic_write_text(out / "metrics.csv", metrics_csv(state["history"]))
            if not args.no_plots:
                plot_training(out / "training_curves.png", state["history"], state["lr_trace"])

    if state["history"]:
        say(f"Best val top-1 {state['best_top1']:.2f}%. Outputs in {out}: metrics.csv, "
            f"{'' if args.no_plots else 'training_curves.png, '}config.json, last.pt, best.pt")
    return 0
