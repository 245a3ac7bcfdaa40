"""Command line of the suite: the learning-rate range test and training with its result.

    uv run python main.py --find_lr --batch_size 256 --lr_iter 1000 \
        --lr_plot ./outputs/lr_finder_imagenet1k.png --data_dir ./data
    uv run python main.py --lr 0.1 --epochs 50 --scheduler cosine --data_dir ./data
    uv run python main.py --find_lr --demo            # built-in handwritten digits, CPU-sized
"""

import sys

from cli import STANDARD_CLASSES, parse_args
from errors import EXIT_USAGE, UserInputError


def run(args) -> int:
    if args.summary:
        import model_resnet50
        from runtime import select_device

        device = select_device(args.no_cuda)
        model = model_resnet50.build_model(args.arch, STANDARD_CLASSES[args.dataset], args.input_size)
        model_resnet50.print_summary(model.to(device), args.input_size, device)
        return 0
    import torch

    from runtime import init_distributed, shutdown_distributed

    dist = init_distributed(args.no_cuda)
    try:
        return find_lr_and_or_train(args, dist)
    except torch.OutOfMemoryError:
        raise UserInputError(f"out of memory on {dist.device} at --batch_size {args.batch_size}; "
                             f"try --batch_size {max(1, args.batch_size // 2)}") from None
    finally:
        shutdown_distributed()


def find_lr_and_or_train(args, dist) -> int:
    from train import run_training

    if args.find_lr:
        from find_lr import run_find_lr

        code, suggested = run_find_lr(args, dist)
        if code != 0 or not args.train:
            return code
        if dist.is_main:
            print(f"Training with the suggested learning rate {suggested:.3g}", flush=True)
        args.lr = suggested
    return run_training(args, dist)


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
