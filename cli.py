"""The one command-line definition of the suite: every flag of ``main.py`` (grouped as --help shows
them), their value checks, and the layers under the command line. ``run_lr_finder.py`` and
``prepare_imagenet.py`` build on it; nothing here builds a model, a loader or a plot.

Settings layer themselves: ``--demo``'s CPU-sized values, then a ``--recipe``'s, become the parser's
defaults and the command line is parsed again, so a flag typed by the user always wins.

    args = parse_args(["--find_lr", "--recipe", "nvidia", "--data_dir", "./data"])
    parser = argparse.ArgumentParser(parents=[get_args_parser(add_help=False)])
"""

import argparse
import math
import os

from errors import EXIT_USAGE
from recipes import RECIPES, describe_recipes

DATASETS = ("imagenet1k", "cifar100", "digits")
DEFAULT_INPUT_SIZE = {"imagenet1k": 224, "cifar100": 32, "digits": 32}
STANDARD_CLASSES = {"imagenet1k": 1000, "cifar100": 100, "digits": 10}
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 1024
MAX_SEED = 2**32 - 1  # numpy's seed range
# What --demo changes, unless the flag was given explicitly: small enough for a 2-core CPU.
# AdamW: in the two minutes a CPU gives the demo, SGD barely moves a from-scratch ResNet-50
# (the loss falls about 6 %), AdamW gives the fall and the rise of a textbook range test.
DEMO_SETTINGS = {"dataset": "digits", "input_size": 16, "batch_size": 32, "lr_iter": 150,
                 "lr_start": 1e-5, "lr_end": 1.0, "num_workers": 2, "optimizer": "adamw"}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) with exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help text does not already say the default, and says
    it as the user gets it: "off" for a switch, nothing for a value that is simply absent (None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return super()._get_help_string(action)


def finite_float(text: str) -> float:
    """A float flag's value: a real number (nan and inf are refused, 1e400 is inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def lr_iter_value(text: str):
    if text == "epoch":
        return "epoch"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor 'epoch'") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} steps: the range test needs at least 2")
    return value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        description="Learning-rate range test and training for ResNet-50 v1.5 on ImageNet-1K.",
        add_help=add_help, allow_abbrev=False,
        formatter_class=DefaultsOnceFormatter)

    data = parser.add_argument_group("Data")
    data.add_argument("--data_dir", default="./data",
                      help="folder holding train/ (one sub-folder per class) and val/ (class folders, or flat "
                           "ILSVRC2012_val_*.JPEG labelled as --val_labels says); the range test reads only train/")
    data.add_argument("--dataset", default="imagenet1k", choices=DATASETS,
                      help="imagenet1k: ImageFolder tree; cifar100: cifar-100-python/ inside --data_dir; "
                           "digits: the built-in demo data")
    data.add_argument("--input_size", type=int, default=None,
                      help=f"image side in pixels, {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} "
                           "(default: 224 for imagenet1k, 32 for cifar100/digits)")
    data.add_argument("--max_samples", type=int, default=None,
                      help="use at most this many images (class-balanced, seeded), for quick tests (default: all)")
    data.add_argument("--val_labels", default=None, metavar="PATH",
                      help="labels of a flat val/: ILSVRC2012_devkit_t12.tar.gz, its unpacked folder, or Kaggle's "
                           "LOC_val_solution.csv (default: searched in --data_dir and up to 3 folders above, "
                           "else wnids in the file names)")
    data.add_argument("--rescan", action="store_true",
                      help="scan the image folders again instead of reusing the cached file index "
                           "(kept while the class folders' names and modification times are unchanged)")
    data.add_argument("--num_workers", type=int, default=None,
                      help="data loading processes, capped at the CPUs available (default: on CUDA every CPU but "
                           "one, shared among one machine's processes under torchrun; on the CPU 4)")
    data.add_argument("--seed", type=int, default=0,
                      help=f"seed for the subset, initial weights and data order (0 to {MAX_SEED})")
    data.add_argument("--demo", action="store_true",
                      help="use the built-in handwritten-digits data with CPU-sized settings "
                           "(explicit flags still win)")

    model = parser.add_argument_group("Model")
    model.add_argument("--arch", default="resnet50",
                       help="any torchvision classification model by name (torchvision.models.get_model), e.g. "
                            "resnet18 or mobilenet_v3_small; resnet50 is ResNet-50 v1.5")
    model.add_argument("--use_pretrained", action="store_true", help="start from Microsoft's ResNet-50 weights")
    model.add_argument("--pretrained_path", default=None,
                       help="folder or file with those weights (default: looked up in the Hugging Face and "
                            "torch hub caches)")
    model.add_argument("--summary", action="store_true", help="print the torchsummary table of the model and exit")

    finder = parser.add_argument_group("LR finder")
    finder.add_argument("--find_lr", action="store_true", help="run the learning-rate range test")
    finder.add_argument("--lr_advanced", action="store_true",
                        help="also measure the loss on --lr_val_batches fixed val/ batches after every step "
                             "and suggest from that curve (Leslie Smith's method)")
    finder.add_argument("--lr_start", type=finite_float, default=1e-7, help="first learning rate of the sweep")
    finder.add_argument("--lr_end", type=finite_float, default=10.0, help="last learning rate of the sweep")
    finder.add_argument("--lr_iter", type=lr_iter_value, default=1000,
                        help="sweep steps, or 'epoch' for one pass over the training data times --epochs")
    finder.add_argument("--lr_plot", default="./lr_finder_plot.png",
                        help="plot path; the log, JSON and history CSV go in the same folder")
    finder.add_argument("--lr_step_mode", default="exp", choices=("exp", "linear"), help="how the rate grows per step")
    finder.add_argument("--lr_smooth_f", type=finite_float, default=0.05,
                        help="smoothing factor in [0, 1) of the plotted loss and the divergence stop "
                             "(the readings use a running median)")
    finder.add_argument("--lr_diverge_th", type=finite_float, default=5.0,
                        help="stop when the smoothed loss exceeds this times the best loss")
    finder.add_argument("--lr_suggest", default="auto",
                        choices=("auto", "bottom", "rise", "steepest", "valley", "minimum"),
                        help="which reading of the curve becomes suggested_lr: auto (default) = bottom with SGD, "
                             "a third of it with AdamW (as benchmarks/suggestion_study.py measured); bottom = the "
                             "rate at the loss's lowest point before it turns up; rise = half the rate at which it "
                             "turns up; steepest, valley (fastai) and minimum (a tenth of the lowest point)")
    finder.add_argument("--lr_verify", type=int, default=0, metavar="N",
                        help="after the sweep, train N steps (warm-up + cosine to 0) from the same initial weights "
                             "at up to 5 rates x2 apart across the suggested range (3 with AdamW), score each on "
                             "held-out images (val/ if present, else a held-out slice of train/); the best (lowest "
                             "loss) replaces the suggestion only when its top-1 beats the suggestion's by more "
                             "than 2 standard errors (0: off)")
    finder.add_argument("--lr_verify_share", type=finite_float, default=0.0, metavar="PCT",
                        help="verify as --lr_verify does, with N chosen so that all the trials together cost at most "
                             "PCT %% of the steps of the training --epochs plans (ImageNet, 90 epochs at batch 256: "
                             "1 is about 4,500 steps); 0: off")
    finder.add_argument("--lr_val_batches", type=int, default=2, help="validation batches per step in --lr_advanced")

    optim = parser.add_argument_group("Optimizer (shared by the finder and training)")
    optim.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                       help="SGD with --momentum, or AdamW")
    optim.add_argument("--momentum", type=finite_float, default=0.9, help="SGD momentum, in [0, 1)")
    optim.add_argument("--weight_decay", type=finite_float, default=1e-4,
                       help="weight decay (decoupled with AdamW), 0 or more")

    recipe = parser.add_argument_group("Recipe: loss, decay split, averaging (shared by the finder and training)")
    recipe.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                        help="preset flag values, applied under the command line (a flag given explicitly wins); "
                             f"sources in docs/recipes.md. {describe_recipes()}")
    recipe.add_argument("--label_smoothing", type=finite_float, default=0.0, help="label smoothing of the loss, in [0, 1)")
    recipe.add_argument("--norm_weight_decay", type=finite_float, default=None,
                        help="weight decay of normalisation layers' weights and biases (None: --weight_decay)")
    recipe.add_argument("--bias_weight_decay", type=finite_float, default=None,
                        help="weight decay of the other layers' biases (None: --weight_decay)")
    recipe.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    recipe.add_argument("--clip_grad_norm", type=finite_float, default=None, metavar="NORM",
                        help="clip the global gradient norm to this before every step (None: no clipping)")
    recipe.add_argument("--mixup_alpha", type=finite_float, default=0.0,
                        help="MixUp on each training batch with Beta(alpha, alpha) mixing (0: off)")
    recipe.add_argument("--cutmix_alpha", type=finite_float, default=0.0,
                        help="CutMix on each training batch (0: off); with --mixup_alpha, one of the two per batch")
    recipe.add_argument("--model_ema", action="store_true",
                        help="training: keep an exponential moving average of the weights, evaluated and "
                             "checkpointed beside the model")
    recipe.add_argument("--model_ema_decay", type=finite_float, default=0.9999,
                        help="decay of the average per optimizer step, in (0, 1)")

    train = parser.add_argument_group("Training")
    train.add_argument("--batch_size", type=int, default=256, help="images per step (per process under torchrun)")
    train.add_argument("--epochs", type=int, default=1,
                       help="training epochs; with --lr_iter epoch, the finder's passes over the data")
    train.add_argument("--lr", type=finite_float, default=None,
                       help="training learning rate (peak for onecycle); training needs it or --lr_from")
    train.add_argument("--lr_from", default=None, metavar="JSON",
                       help="take the learning rate from a suggested_lr.json written by the finder")
    train.add_argument("--no_lr_scaling", action="store_true",
                       help="with --lr_from: use the found rate as it is, even when the global batch differs from "
                            "the sweep's (by default it is scaled: linearly for SGD, by the square root for AdamW)")
    train.add_argument("--train", action="store_true",
                       help="with --find_lr: train with the suggested rate right after the sweep")
    train.add_argument("--scheduler", default="cosine", choices=("cosine", "step", "onecycle", "none"),
                       help="all step once per iteration: cosine decays smoothly to 0, step multiplies by "
                            "--gamma every --step_size epochs (at epoch boundaries), onecycle warms up to --lr "
                            "and anneals")
    train.add_argument("--warmup_epochs", type=int, default=0,
                       help="linear warm-up per iteration over this many epochs (cosine/step/none)")
    train.add_argument("--step_size", type=int, default=30, help="epochs between decays for --scheduler step")
    train.add_argument("--gamma", type=finite_float, default=0.1, help="decay factor for --scheduler step, in (0, 1]")
    train.add_argument("--output_dir", default="./outputs/train", help="training metrics, plots and checkpoints")
    train.add_argument("--resume", default=None, metavar="auto|PATH",
                       help="continue from a checkpoint: auto = OUTPUT_DIR/last.pt if present (default: start fresh)")
    train.add_argument("--checkpoint_every", type=int, default=0, metavar="STEPS",
                       help="also checkpoint every this many steps within an epoch (0: at epoch ends only)")

    runtime = parser.add_argument_group("Runtime")
    runtime.add_argument("--no_cuda", action="store_true", help="run on the CPU even if CUDA is available")
    runtime.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                         help="auto: bf16 where the GPU/CPU has it natively, fp16 on older GPUs, else fp32")
    runtime.add_argument("--no_channels_last", action="store_true", help="keep NCHW memory format")
    runtime.add_argument("--compile", action="store_true",
                         help="wrap the model in torch.compile (slow first steps, faster after)")
    runtime.add_argument("--sync_bn", action="store_true",
                         help="under torchrun: batch-norm statistics over the global batch (SyncBatchNorm)")

    output = parser.add_argument_group("Output")
    output.add_argument("--no_plots", action="store_true",
                        help="skip plots other than the LR-finder plot (e.g. training curves)")
    return parser


def layer_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Put ``--demo``'s values, then the ``--recipe``'s over them, under the command line as the
    parser's defaults; returns the recipe's values."""
    recipe = dict(RECIPES[args.recipe]["flags"]) if args.recipe else {}
    layered = {**(DEMO_SETTINGS if args.demo else {}), **recipe}
    if layered:
        parser.set_defaults(**layered)
    return recipe


def parse_layered(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv`` over the layered defaults; ``args.recipe_settings`` holds the recipe's values
    that the run keeps (those the command line did not change)."""
    recipe = layer_defaults(parser, parser.parse_args(argv))
    args = parser.parse_args(argv)
    args.recipe_settings = {name: value for name, value in recipe.items() if getattr(args, name) == value}
    return args


def check_values(args) -> None:
    """The loss, decay and averaging flags' ranges; ValueError with a one-line message naming the flag."""
    if not 0 <= args.label_smoothing < 1:
        raise ValueError(f"--label_smoothing {args.label_smoothing:g} must be in [0, 1)")
    for name in ("mixup_alpha", "cutmix_alpha", "weight_decay", "norm_weight_decay", "bias_weight_decay"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ValueError(f"--{name} {value:g} must be 0 or more")
    if not 0 < args.model_ema_decay < 1:
        raise ValueError(f"--model_ema_decay {args.model_ema_decay:g} must be in (0, 1), e.g. 0.9999")
    if args.clip_grad_norm is not None and not args.clip_grad_norm > 0:
        raise ValueError(f"--clip_grad_norm {args.clip_grad_norm:g} must be positive")
    if args.nesterov and args.optimizer != "sgd":
        raise ValueError(f"--nesterov applies to SGD, not --optimizer {args.optimizer}")
    if args.nesterov and not args.momentum > 0:
        raise ValueError(f"--nesterov needs a positive --momentum, not {args.momentum:g}")


def validate_args(args, parser) -> None:
    """Values and combinations argparse cannot check by itself (``args`` as ``parse_layered`` gives
    them); one line and exit 2 if wrong."""
    try:
        check_values(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.model_ema_decay != parser.get_default("model_ema_decay") and not args.model_ema:
        parser.error("--model_ema_decay goes with --model_ema")
    warmup = args.recipe_settings.get("warmup_epochs")
    if warmup and (args.scheduler == "onecycle" or warmup >= args.epochs):
        why = "--scheduler onecycle" if args.scheduler == "onecycle" else f"--epochs {args.epochs}"
        parser.error(f"--recipe {args.recipe} sets --warmup_epochs {warmup}, which does not fit {why}: "
                     "pass --warmup_epochs 0 (or a shorter warm-up)")
    if args.lr_start <= 0 or args.lr_end <= 0:
        parser.error(f"--lr_start {args.lr_start:g} / --lr_end {args.lr_end:g}: learning rates must be positive")
    if args.lr_start >= args.lr_end:
        parser.error(f"--lr_start {args.lr_start:g} must be smaller than --lr_end {args.lr_end:g}")
    if not 0 <= args.lr_smooth_f < 1:
        parser.error(f"--lr_smooth_f {args.lr_smooth_f:g} must be in [0, 1)")
    if args.lr_diverge_th <= 1:
        parser.error(f"--lr_diverge_th {args.lr_diverge_th:g} must be greater than 1")
    for name in ("batch_size", "epochs", "lr_val_batches", "step_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be at least 1")
    if args.lr_verify < 0 or args.lr_verify == 1:
        parser.error(f"--lr_verify {args.lr_verify}: give 0 (off) or at least 2 steps per trial")
    if args.lr_verify and not args.find_lr:
        parser.error("--lr_verify goes with --find_lr")
    if not 0 <= args.lr_verify_share <= 100:
        parser.error(f"--lr_verify_share {args.lr_verify_share:g} must be a percentage in [0, 100] (0: off)")
    if args.lr_verify_share and (args.lr_verify or not args.find_lr):
        parser.error("--lr_verify_share goes with --find_lr and instead of --lr_verify N (it chooses N)")
    if args.no_lr_scaling and not args.lr_from:
        parser.error("--no_lr_scaling goes with --lr_from")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f"--max_samples {args.max_samples} must be at least 1")
    if args.val_labels and not os.path.exists(args.val_labels):
        parser.error(f"--val_labels {args.val_labels}: not found")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error(f"--num_workers {args.num_workers} must be 0 or more")
    if args.input_size is not None and not MIN_INPUT_SIZE <= args.input_size <= MAX_INPUT_SIZE:
        parser.error(f"--input_size {args.input_size}: use {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels")
    if args.lr is not None and args.lr <= 0:
        parser.error(f"--lr {args.lr:g} must be positive")
    if not 0 <= args.momentum < 1:
        parser.error(f"--momentum {args.momentum:g} must be in [0, 1)")
    if args.weight_decay < 0:
        parser.error(f"--weight_decay {args.weight_decay:g} must be 0 or more")
    if not 0 < args.gamma <= 1:
        parser.error(f"--gamma {args.gamma:g} must be in (0, 1]")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed {args.seed}: use 0 to {MAX_SEED}")
    if args.arch != "resnet50":
        import torchvision.models

        if args.arch not in torchvision.models.list_models(module=torchvision.models):
            parser.error(f"--arch {args.arch}: not a torchvision classification model (e.g. resnet50, resnet18, "
                         "mobilenet_v3_small)")
        if args.use_pretrained:
            parser.error(f"--use_pretrained loads ResNet-50 weights: drop it or use --arch resnet50, not {args.arch}")
    if args.pretrained_path and not args.use_pretrained:
        parser.error("--pretrained_path is only used with --use_pretrained")
    if args.train and not args.find_lr:
        parser.error("--train goes with --find_lr (train right after the sweep); to train alone pass --lr or --lr_from")
    if args.lr_from and (args.lr is not None or args.find_lr):
        parser.error("--lr_from gives the learning rate: drop --lr / --find_lr")
    if args.warmup_epochs < 0 or args.checkpoint_every < 0:
        parser.error("--warmup_epochs and --checkpoint_every must be 0 or more")
    if args.warmup_epochs and args.scheduler == "onecycle":
        parser.error("--warmup_epochs does not apply to --scheduler onecycle, which has its own warm-up")
    if args.warmup_epochs >= args.epochs and args.warmup_epochs:
        parser.error(f"--warmup_epochs {args.warmup_epochs} must be fewer than --epochs {args.epochs}")
    if not (args.find_lr or args.summary) and args.lr is None and not args.lr_from:
        parser.error("nothing to do: pass --find_lr to run the range test, or --lr X / --lr_from JSON to train")


def parse_args(argv=None, parser=None) -> argparse.Namespace:
    """``main.py``'s settings: layered, checked (one line and exit 2 if wrong), with the values that
    follow from others filled in."""
    parser = parser or get_args_parser()
    args = parse_layered(parser, argv)
    validate_args(args, parser)
    for name in ("norm_weight_decay", "bias_weight_decay"):  # None: the same as --weight_decay
        if getattr(args, name) is None:
            setattr(args, name, args.weight_decay)
    if args.demo:
        from demo_data import ensure_digits_imagefolder

        args.data_dir = str(ensure_digits_imagefolder())
    if args.input_size is None:
        args.input_size = DEFAULT_INPUT_SIZE[args.dataset]
    return args
