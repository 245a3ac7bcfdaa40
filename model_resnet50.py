"""ResNet-50 v1.5: torchvision's ``resnet50`` (stride 2 in the bottleneck's 3x3 conv).

    model = build_resnet50(num_classes=1000, input_size=224)   # 25,557,032 parameters
    model = build_resnet50(num_classes=100, input_size=32)     # CIFAR stem
"""

import torch
from torch import nn
from torchvision.models import resnet50

from errors import UserInputError

# At or below this size the 7x7/2 stem and the max-pool would shrink the image to
# nothing useful, so the CIFAR-style 3x3/1 stem is used instead.
SMALL_INPUT_MAX = 64


def uses_small_stem(input_size: int) -> bool:
    return input_size <= SMALL_INPUT_MAX


def build_resnet50(num_classes: int = 1000, input_size: int = 224, zero_init_residual: bool = True) -> nn.Module:
    """A freshly initialised ResNet-50 v1.5 for ``num_classes`` at ``input_size`` px.

    ``zero_init_residual`` starts each bottleneck's last BN at zero, so every residual block
    begins as the identity (Goyal et al. 2017; NVIDIA's v1.5 recipe): without it a network
    trained from scratch blows up at rates it would otherwise learn at."""
    model = resnet50(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
    if uses_small_stem(input_size):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model


def create_model(num_classes: int, input_size: int, device: torch.device, channels_last: bool = True,
                 pretrained: bool = False, weights_path=None) -> nn.Module:
    """The model on ``device`` in the memory format the input pipeline delivers."""
    if pretrained:
        model = load_pretrained_resnet50(torch.device("cpu"), num_classes, input_size, weights_path)
    else:
        model = build_resnet50(num_classes, input_size)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def print_summary(model: nn.Module, input_size: int, device: torch.device) -> None:
    """torchsummary's layer table for one 3 x input_size x input_size image."""
    from torchsummary import summary

    was_training = model.training
    summary(model, (3, input_size, input_size), device=device.type)
    model.train(was_training)


def load_pretrained_resnet50(device, num_classes: int = 1000, input_size: int = 224, weights_path=None):
    """Microsoft's ResNet-50 weights, loaded offline. Not built yet: fails clearly."""
    raise UserInputError(
        "--use_pretrained: loading Microsoft's ResNet-50 weights is not implemented yet; "
        "run without --use_pretrained to start from random initialisation"
    )
