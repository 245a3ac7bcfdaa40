"""The input-size rule the model and the data pipeline share.

At or below ``SMALL_INPUT_MAX`` pixels the 7x7/2 stem and the max-pool would shrink the
image to nothing useful: the model uses a CIFAR-style 3x3/1 stem and the augmentations
are CIFAR-style (pad and crop) instead of ImageNet's resize-crop-jitter.
"""

SMALL_INPUT_MAX = 64


def is_small_input(input_size: int) -> bool:
    return input_size <= SMALL_INPUT_MAX
