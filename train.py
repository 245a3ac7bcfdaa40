"""Training with the found learning rate: the optimizer (parameter groups, Nesterov, gradient
clipping), the loss (label smoothing, MixUp/CutMix) and schedulers, all shared with the range
test; one epoch, evaluation, the weight average (EMA), the fit loop with resumable checkpoints.

    uv run python main.py --lr 0.1 --epochs 90 --scheduler cosine --data_dir ./data
    uv run python main.py --lr_from ./outputs/suggested_lr.json --epochs 5 --resume auto
"""

import csv
import io
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2
from tqdm import tqdm

from atomic_io import atomic_savefig, atomic_write_json, atomic_write_text
from checkpoint import config_differences, load_checkpoint, restore_rng_state, resume_path, rng_state, save_checkpoint
from errors import UserInputError
from images import to_model_input
from model_resnet50 import create_model
from preprocess import EpochSampler, build_datasets, build_loader
from recipes import setting_differences
from runtime import AMP_DTYPES, Distributed, seed_everything, select_precision, unwrap, wrap_model
from settings import rate_settings

METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "val_images",
                 "epoch_time_s", "images_per_second"]
EMA_FIELDS = ["ema_val_loss", "ema_val_top1", "ema_val_top5"]  # with --model_ema


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
               nn.LocalResponseNorm)
PARAMETER_KINDS = ("weight", "norm", "bias")


def split_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters by kind, with their names: ``norm`` every parameter of a normalisation
    layer (batch-norm gamma and beta), ``bias`` the other layers' biases, ``weight`` the rest."""
    kinds = {kind: [] for kind in PARAMETER_KINDS}
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            kind = "norm" if isinstance(module, NORM_LAYERS) else "bias" if name == "bias" else "weight"
            kinds[kind].append((f"{module_name}.{name}" if module_name else name, param))
    return kinds


def parameter_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None = None,
                     bias_weight_decay: float | None = None) -> list[dict]:
    """Optimizer parameter groups, one per distinct decay (a single group when all three are equal);
    each lists the ``kinds`` it holds. The ``weight`` kind's group comes first."""
    decays = {"weight": weight_decay,
              "norm": weight_decay if norm_weight_decay is None else norm_weight_decay,
              "bias": weight_decay if bias_weight_decay is None else bias_weight_decay}
    groups: dict[float, dict] = {}
    for kind, named in split_parameters(model).items():
        if named:
            group = groups.setdefault(decays[kind], {"params": [], "weight_decay": decays[kind], "kinds": []})
            group["params"] += [param for _, param in named]
            group["kinds"].append(kind)
    return list(groups.values())


def clip_before_step(max_norm: float):
    """An optimizer step pre-hook clipping the global gradient norm. As a hook it also clips the
    steps torch-lr-finder and the --lr_verify trials take. GradScaler unscales the gradients before
    it calls a (non-fused) optimizer's step, so the hook sees them unscaled."""
    def hook(optimizer, args, kwargs):
        grads = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        nn.utils.clip_grad_norm_(grads, max_norm)
    return hook


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4, *,
                    nesterov: bool = False, norm_weight_decay: float | None = None,
                    bias_weight_decay: float | None = None, clip_grad_norm: float | None = None
                    ) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over ``parameter_groups``; the finder and training share it so the
    suggested rate transfers."""
    groups = parameter_groups(model, weight_decay, norm_weight_decay, bias_weight_decay)
    # One fused kernel over all parameters instead of a loop of small ops per tensor; not with
    # clipping: a fused step unscales fp16 gradients itself, after the clipping hook has run.
    fused = clip_grad_norm is None and all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                    fused=fused)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if clip_grad_norm is not None:
        optimizer.register_step_pre_hook(clip_before_step(clip_grad_norm))
    return optimizer


def optimizer_from_args(model: nn.Module, args, lr: float) -> torch.optim.Optimizer:
    return build_optimizer(model, args.optimizer, lr, args.momentum, args.weight_decay, nesterov=args.nesterov,
                           norm_weight_decay=args.norm_weight_decay, bias_weight_decay=args.bias_weight_decay,
                           clip_grad_norm=args.clip_grad_norm)


# ------------------------------------------------------------------- loss


class TrainingLoss(nn.CrossEntropyLoss):
    """Cross-entropy with label smoothing, on class indices or on soft targets. ``mix`` (None when
    both alphas are 0) turns a training batch into mixed images and soft targets: torchvision's
    MixUp or CutMix, one of the two picked per batch when both are set. Evaluation calls the loss
    on unmixed batches."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0):
        super().__init__(label_smoothing=label_smoothing)
        mixes = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) + \
                ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])
        self.mix = v2.RandomChoice(mixes) if len(mixes) > 1 else mixes[0] if mixes else None


def loss_from_args(args, num_classes: int) -> TrainingLoss:
    return TrainingLoss(num_classes, args.label_smoothing, args.mixup_alpha, args.cutmix_alpha)


def mix_batch(criterion, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as the loss trains on it: mixed, with soft targets, when ``criterion`` mixes."""
    mix = getattr(criterion, "mix", None)
    return mix(x, y) if mix is not None else (x, y)


# ------------------------------------------------------------------- weight average


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """torch.optim.swa_utils' exponential moving average of the weights and buffers (batch-norm
    statistics too), starting from the model's current weights: after k updates it holds
    decay^k * w_0 + (1 - decay) * sum_i decay^(k-i) * w_i."""
    plain = unwrap(model)
    ema = AveragedModel(plain, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(plain)  # the first update copies: w_0
    return ema


# ------------------------------------------------------------------- schedules


def lr_multiplier(step: int, scheduler: str, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0,
                  step_size: int = 30, gamma: float = 0.1) -> float:
    """Factor on the base rate for iteration ``step`` (0-based) of cosine/step/none with
    optional linear warm-up. Step decay happens at epoch boundaries: every ``step_size`` epochs."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if scheduler == "step":
        return gamma ** ((step // steps_per_epoch) // step_size)
    return 1.0


def build_scheduler(optimizer, scheduler: str, lr: float, epochs: int, steps_per_epoch: int,
                    warmup_epochs: int = 0, step_size: int = 30, gamma: float = 0.1):
    """A scheduler stepped once per iteration: torch's OneCycleLR (``lr`` is its peak) or a
    LambdaLR over ``lr_multiplier``."""
    total = epochs * steps_per_epoch
    if scheduler == "onecycle":
        return OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    warmup = warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        return lr_multiplier(step, scheduler, total, steps_per_epoch, warmup, step_size, gamma)

    return LambdaLR(optimizer, factor)


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


def read_lr_from(path: str) -> dict:
    """A finder JSON with a usable ``suggested_lr``, refusing failed or incomplete sweeps."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserInputError(f"--lr_from {path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise UserInputError(f"--lr_from {path}: not valid JSON; point it at a suggested_lr.json") from None
    if not isinstance(record, dict) or record.get("success") is not True:
        error = record.get("error", "no error recorded") if isinstance(record, dict) else "not an object"
        raise UserInputError(f"--lr_from {path}: that sweep did not succeed ({error}); rerun the finder or pass --lr")
    lr = record.get("suggested_lr")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise UserInputError(f"--lr_from {path}: has no positive suggested_lr; rerun the finder or pass --lr")
    return record


def scale_lr(lr: float, from_batch: int, to_batch: int, optimizer: str) -> tuple[float, str]:
    """Carry a rate found at one global batch to another (Goyal et al. 2017): linear for SGD,
    square root for AdamW. Returns (rate, rule)."""
    if from_batch == to_batch:
        return lr, "none"
    if optimizer == "adamw":
        return lr * math.sqrt(to_batch / from_batch), "sqrt"
    return lr * to_batch / from_batch, "linear"


def lr_from_json(path: str, global_batch: int, optimizer: str, no_scaling: bool,
                 settings: dict | None = None) -> tuple[float, dict]:
    """The training rate taken from a finder JSON, scaled to this run's global batch unless
    ``no_scaling``; also what was done, for config.json, with a warning per rate-moving setting in
    which the sweep differs from the training's ``settings`` (settings.RATE_SETTINGS)."""
    record = read_lr_from(path)
    found, from_batch = float(record["suggested_lr"]), record.get("global_batch_size") or record.get("batch_size")
    if not isinstance(from_batch, int) or from_batch < 1 or no_scaling:
        lr, rule = found, "none"
    else:
        lr, rule = scale_lr(found, from_batch, global_batch, optimizer)
    swept_with = record.get("optimizer")
    # A sweep recorded before the other settings were: only its optimizer can be compared.
    swept = record.get("rate_settings") or ({"optimizer": swept_with} if swept_with else {})
    warnings = setting_differences(swept, {**(settings or {}), "optimizer": optimizer})
    return lr, {"file": path, "suggested_lr": found, "suggestion_method": record.get("suggestion_method"),
                "sweep_global_batch": from_batch, "sweep_optimizer": swept_with, "train_optimizer": optimizer,
                "train_global_batch": global_batch, "scaling": rule, "lr": lr, "sweep_recipe": record.get("recipe"),
                "setting_warnings": warnings}


def describe_lr_source(source: dict) -> str:
    found, lr = source["suggested_lr"], source["lr"]
    text = f"--lr_from {source['file']}: suggested {found:.3g} at global batch {source['sweep_global_batch']}"
    if source["scaling"] == "none":
        same = source["sweep_global_batch"] == source["train_global_batch"]
        text += "; training with it as it is" + ("" if same else " (--no_lr_scaling)")
    else:
        rule = "linear (SGD)" if source["scaling"] == "linear" else "square root (AdamW)"
        text += (f"; scaled to global batch {source['train_global_batch']} by the {rule} rule: {lr:.3g} "
                 "(--no_lr_scaling keeps the found rate)")
    return "\n".join([text, *source.get("setting_warnings", [])])


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
